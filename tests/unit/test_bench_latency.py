"""The pure parts of ``eventray bench latency`` (and bench pipeline's CPU figures): the Poisson
schedule, percentiles, a rate's figures from what the generator saw and the table holds, and
the JSON document's shape."""

from __future__ import annotations

import json
import statistics
from itertools import pairwise

import pytest

from cluster.bench.latency import (
    RATE_KEYS,
    LoadResult,
    event_key,
    parse_overrides,
    percentile,
    poisson_schedule,
    rate_result,
    result_json,
    verdicts,
)
from cluster.bench.pipeline import cpu_us_per_event, owned_cpu_us
from cluster.bench.stack import BenchError


def test_schedule_is_ascending_within_the_duration_and_reproducible() -> None:
    times = poisson_schedule(500.0, 20.0, seed=3)
    assert times == sorted(times)
    assert times[0] > 0
    assert times[-1] < 20.0
    assert times == poisson_schedule(500.0, 20.0, seed=3)
    assert times != poisson_schedule(500.0, 20.0, seed=4)


def test_schedule_has_the_rate_and_exponential_gaps() -> None:
    rate, duration = 1000.0, 60.0
    times = poisson_schedule(rate, duration, seed=11)
    # 60,000 expected; a Poisson count's standard deviation is sqrt(60,000) ~ 245.
    assert abs(len(times) - rate * duration) < 5 * (rate * duration) ** 0.5
    gaps = [b - a for a, b in pairwise(times)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.03)
    # Exponential: the standard deviation equals the mean (a fixed pace would have ~0), and
    # about 1 - 1/e of the gaps are shorter than the mean.
    assert statistics.pstdev(gaps) == pytest.approx(mean, rel=0.05)
    assert sum(g < mean for g in gaps) / len(gaps) == pytest.approx(1 - 1 / 2.718281828, abs=0.02)


def test_schedule_empty_for_no_rate_or_time() -> None:
    assert poisson_schedule(0.0, 10.0, seed=1) == []
    assert poisson_schedule(10.0, 0.0, seed=1) == []


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 1001)]  # 1..1000
    assert percentile(values, 0.5) == 500.0
    assert percentile(values, 0.99) == 990.0
    assert percentile(values, 0.999) == 999.0
    assert percentile(values, 1.0) == 1000.0
    assert percentile(values, 0.0) == 1.0
    assert percentile([7.0], 0.999) == 7.0
    assert percentile([], 0.5) is None


def _load(accepted: list[int], ack_ms: list[float], *, late_p99: float = 0.4) -> LoadResult:
    return LoadResult(t0_epoch=0.0, scheduled=len(accepted) + 1, accepted=accepted,
                      ack_ms=ack_ms, errors={"503": 1}, lateness_p50_ms=0.1,
                      lateness_p99_ms=late_p99, lateness_max_ms=3.0, connections=9,
                      elapsed_s=10.0)


def test_rate_result_counts_lost_duplicated_and_unacknowledged_rows() -> None:
    run_id, size = "latx", 3
    load = _load(accepted=[0, 2], ack_ms=[12.0, 30.0])  # request 1 was refused (the 503)
    acked = [event_key(run_id, n) for n in (0, 1, 2, 6, 7, 8)]
    refused_but_written = event_key(run_id, 4)  # e.g. a request timed out at the client
    rows = [*acked[:-1], acked[0], refused_but_written]  # acked[-1] lost, acked[0] twice
    result = rate_result(load, offered=600.0, max_events_per_s=1200.0, request_events=size,
                         row_latencies_ms=[900.0, 100.0, 500.0], row_keys=rows, run_id=run_id,
                         behind_ms=5.0, cpu_us_per_event={"consumer actors": 9.5})
    assert result.accepted_events == 6
    assert (result.lost, result.duplicated, result.unacknowledged_rows) == (1, 1, 1)
    assert result.share_of_max == 0.5
    assert (result.ack_p50_ms, result.ack_p99_ms) == (12.0, 30.0)
    assert (result.row_p50_ms, result.row_p99_ms) == (500.0, 900.0)
    assert result.refused_requests == {"503": 1}
    assert not result.generator_behind
    assert rate_result(_load([0], [1.0], late_p99=8.0), offered=1.0, max_events_per_s=2.0,
                       request_events=1, row_latencies_ms=[], row_keys=[], run_id=run_id,
                       behind_ms=5.0, cpu_us_per_event={}).generator_behind


def test_json_document_has_the_issue_keys() -> None:
    load = _load(accepted=[0], ack_ms=[5.123456])
    rates = [rate_result(load, offered=250.0, max_events_per_s=1000.0, request_events=1,
                         row_latencies_ms=[700.04], row_keys=[event_key("r", 0)], run_id="r",
                         behind_ms=5.0, cpu_us_per_event={}),
             rate_result(load, offered=8000.0, max_events_per_s=10_000.0, request_events=100,
                         row_latencies_ms=[], row_keys=[], run_id="q", behind_ms=5.0,
                         cpu_us_per_event={})]
    doc = json.loads(json.dumps(result_json({1: 1000.0, 100: 10_000.0}, rates,
                                            {"settings": {"x": 1}})))
    assert isinstance(doc["max_events_per_s"], float)
    assert doc["max_events_per_s"] == 10_000.0
    assert doc["max_events_per_s_by_request_events"] == {"1": 1000.0, "100": 10_000.0}
    assert doc["settings"] == {"x": 1}
    for entry in doc["rates"]:
        assert set(RATE_KEYS) <= set(entry)
        assert list(entry)[: len(RATE_KEYS)] == list(RATE_KEYS)
    first, second = doc["rates"]
    assert (first["offered_events_per_s"], first["share_of_max"], first["request_events"]) == (
        250.0, 0.25, 1)
    assert (first["ack_p50_ms"], first["row_p99_ms"]) == (5.1, 700.0)
    assert (second["share_of_max"], second["lost"], second["row_p50_ms"]) == (0.8, 100, None)


def test_verdicts_name_each_target() -> None:
    load = _load(accepted=[0], ack_ms=[40.0])
    at_half = rate_result(load, offered=500.0, max_events_per_s=1000.0, request_events=1,
                          row_latencies_ms=[1000.0], row_keys=[], run_id="r", behind_ms=5.0,
                          cpu_us_per_event={})
    lines = verdicts([at_half])
    assert any("accept -> row p99 at 50%" in line and line.endswith("OK") for line in lines)
    assert any("gateway ack p99" in line and line.endswith("MISSED") for line in lines)


def test_overrides_parse_json_values_and_refuse_a_missing_equals() -> None:
    assert parse_overrides(["pipeline.consumer.batch_max_wait_s=0.25", "a.b=text"]) == {
        "pipeline.consumer.batch_max_wait_s": 0.25, "a.b": "text"}
    with pytest.raises(BenchError):
        parse_overrides(["no-equals"])


def test_pipeline_cpu_per_event_and_the_owned_share() -> None:
    per_event = cpu_us_per_event({"consumer actors": 1.5, "sink actors": 0.3,
                                  "gateway (uvicorn)": 0.9, "snowflake emulator": 2.0,
                                  "gateway (Serve replica)": 0.01, "haproxy": 0.0}, 100_000)
    assert per_event == {"snowflake emulator": 20.0, "consumer actors": 15.0,
                         "gateway (uvicorn)": 9.0, "sink actors": 3.0,
                         "gateway (Serve replica)": 0.1}
    assert next(iter(per_event)) == "snowflake emulator"
    assert owned_cpu_us(per_event) == 27.0  # the uvicorn gateway, not the idle replica
    assert owned_cpu_us({}) == 0.0
