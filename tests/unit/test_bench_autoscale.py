"""eventray bench autoscale's accounting, with plain data: windows' p99, the recovery point,
lost and duplicated events, and the JSON keys the issue asks for."""

from __future__ import annotations

import argparse
import time

import msgspec

from actors.config import PipelineConfig
from cluster.bench.autoscale import Load, Sample, _result, format_table, p99


def test_p99_is_the_value_under_which_99_percent_fall() -> None:
    assert p99([]) is None
    assert p99([float(v) for v in range(1, 101)]) == 99.0
    assert p99([5.0]) == 5.0


def test_a_run_is_accounted_per_window_and_after_the_backlog_drained() -> None:
    args = argparse.Namespace(initial_sinks=1, steady_rate=100, target_drain_s=10.0)
    t0 = time.monotonic() - 100.0  # the run started 100 s ago
    epoch0 = time.time() - 100.0
    load = Load(run_id="r", acked=5, burst_started=t0 + 10.0, burst_ended=t0 + 12.0)
    samples = [Sample(t_s=10.0, lag=50, sinks=1, nodes=1, produced=1, decision="-"),
               Sample(t_s=20.0, lag=9000, sinks=2, nodes=2, produced=3, decision="-"),
               Sample(t_s=30.0, lag=80, sinks=2, nodes=2, produced=5, decision="-")]
    rows = [("r-1", epoch0 + 5.0, epoch0 + 6.0),      # before the burst: 1 s
            ("r-2", epoch0 + 15.0, epoch0 + 25.0),    # in the backlog: 10 s
            ("r-3", epoch0 + 25.0, epoch0 + 26.0),    # window 20-30 s: 1 s
            ("r-4", epoch0 + 31.0, epoch0 + 31.5),    # after the drain (30 s): 0.5 s
            ("r-4", epoch0 + 31.0, epoch0 + 31.5)]    # a duplicate row
    result = _result(PipelineConfig(), args, load, t0=t0, samples=samples, rows=rows)
    windows = [entry["row_p99_ms"] for entry in result.timeline]
    assert [round(w or 0, -2) for w in windows] == [1000.0, 10000.0, 1000.0]
    assert result.drained_at_s == 30.0
    assert result.row_p99_after_burst_ms is not None
    assert round(result.row_p99_after_burst_ms, -2) == 500.0
    assert (result.lost, result.duplicated) == (1, 1)  # 5 acked, 4 distinct rows, 5 rows
    assert (result.max_sinks, result.final_sinks, result.max_nodes, result.max_lag) == (
        2, 2, 2, 9000)
    keys = set(msgspec.to_builtins(result))
    assert keys >= {"initial_sinks", "max_sinks", "final_sinks", "max_nodes", "final_nodes",
                    "max_lag", "row_p99_after_burst_ms", "lost", "duplicated", "timeline"}
    assert set(result.timeline[0]) == {"t_s", "lag", "sinks", "nodes", "row_p99_ms"}
    assert "lost 1, duplicated 1" in format_table(result)
