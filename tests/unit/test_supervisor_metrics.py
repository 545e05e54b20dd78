"""The supervisor's lag and drain-time estimate, from plain status reports."""

from __future__ import annotations

from typing import Any

import pytest

from actors.metric_contract import DRAIN_STALLED
from cluster.supervisor import PartitionStatus
from cluster.supervisor_metrics import DrainEstimator, SupervisorMetrics


def report(partition: int = 0, *, committed: int | None, end: int | None,
           state: str = "running") -> PartitionStatus:
    return PartitionStatus(
        topic="events", partition=partition, owner=f"consumer:events:{partition}", state=state,
        node_id=None, sink=None, committed_offset=committed, end_offset=end, lag=None,
        rows_per_s=0.0, rows_written=0, dead_lettered=0, duplicates=0, last_error=None)


def sampler() -> SupervisorMetrics:
    """The supervisor's metrics without their Ray gauges (only ``sample`` is used)."""
    metrics = SupervisorMetrics.__new__(SupervisorMetrics)
    metrics.estimator = DrainEstimator(window_s=30.0)
    return metrics


def test_drain_time_is_lag_over_the_committed_rate() -> None:
    drain = DrainEstimator(window_s=30.0)
    drain.observe(0, 1_000, now=100.0)
    drain.observe(0, 3_000, now=110.0)  # 200 offsets/s
    assert drain.offsets_per_s(0, now=110.0) == pytest.approx(200.0)
    assert drain.drain_seconds(0, lag=5_000, now=110.0) == pytest.approx(25.0)
    assert drain.drain_seconds(0, lag=0, now=110.0) == 0.0


def test_a_partition_without_progress_is_stalled() -> None:
    drain = DrainEstimator(window_s=30.0)
    assert drain.drain_seconds(0, lag=10, now=0.0) == DRAIN_STALLED  # never seen
    drain.observe(0, 500, now=0.0)
    drain.observe(0, 500, now=5.0)
    assert drain.drain_seconds(0, lag=10, now=5.0) == DRAIN_STALLED
    assert drain.drain_seconds(0, lag=0, now=5.0) == 0.0


def test_the_rate_forgets_what_left_the_window() -> None:
    drain = DrainEstimator(window_s=30.0)
    drain.observe(0, 0, now=0.0)
    drain.observe(0, 6_000, now=10.0)  # a burst
    for t in range(15, 60, 5):
        drain.observe(0, 6_000, now=float(t))  # then nothing
    assert drain.offsets_per_s(0, now=55.0) == 0.0
    assert drain.drain_seconds(0, lag=1, now=55.0) == DRAIN_STALLED


def test_offsets_that_start_over_are_a_new_baseline() -> None:
    drain = DrainEstimator(window_s=30.0)
    drain.observe(0, 9_000, now=0.0)
    drain.observe(0, 100, now=5.0)  # the topic was re-created
    assert drain.offsets_per_s(0, now=5.0) == 0.0
    drain.observe(0, 600, now=10.0)
    assert drain.offsets_per_s(0, now=10.0) == pytest.approx(100.0)


def test_partitions_are_estimated_apart() -> None:
    drain = DrainEstimator(window_s=30.0)
    for partition, step in ((0, 100), (1, 300)):
        drain.observe(partition, 0, now=0.0)
        drain.observe(partition, step * 10, now=10.0)
    assert drain.offsets_per_s(0, now=10.0) == pytest.approx(100.0)
    assert drain.offsets_per_s(1, now=10.0) == pytest.approx(300.0)


def test_lag_of_a_running_consumer_is_end_minus_committed() -> None:
    metrics = sampler()
    assert metrics.sample(report(committed=40, end=100), now=0.0) == 60
    assert metrics.sample(report(committed=100, end=100), now=1.0) == 0
    assert metrics.estimator.last_committed(0) == 100


def test_a_never_written_partition_lags_by_the_whole_topic() -> None:
    metrics = sampler()
    assert metrics.sample(report(committed=None, end=70), now=0.0) == 70
    assert metrics.sample(report(committed=None, end=0), now=0.0) == 0


def test_a_silent_consumer_keeps_its_last_offset_and_stalls() -> None:
    metrics = sampler()
    metrics.sample(report(committed=0, end=0), now=0.0)
    metrics.sample(report(committed=400, end=500), now=10.0)
    silent: dict[str, Any] = {"committed": None, "state": "unreachable"}
    assert metrics.sample(report(end=900, **silent), now=50.0) == 500  # 900 - 400
    assert metrics.estimator.drain_seconds(0, 500, now=50.0) == DRAIN_STALLED


def test_unknown_lag_is_not_reported() -> None:
    metrics = sampler()
    assert metrics.sample(report(committed=5, end=None), now=0.0) is None
    assert metrics.sample(report(committed=None, end=10, state="unreachable"), now=0.0) is None
    assert metrics.sample(report(committed=None, end=10, state="starting"), now=0.0) is None
