"""What the supervisor exports: each partition's lag and estimated drain time, and the size of
the sink pool (gauges of the metrics contract, ``actors.metric_contract``).

The supervisor samples every partition's committed offset (the warehouse's, as its consumer
reports it) and Kafka's end offset each ``PipelineConfig.metrics_interval_s``.
``DrainEstimator`` turns the samples into offsets committed per second over a sliding window
and ``lag / rate`` seconds to drain. A consumer that does not answer keeps its last committed
offset: its lag then grows with the topic and its rate falls to 0 (``DRAIN_STALLED``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from actors.metric_contract import (
    DRAIN_STALLED,
    PARTITION_DRAIN_SECONDS,
    PARTITION_LAG,
    SINK_POOL_SIZE,
)
from actors.rate_meter import RateMeter

if TYPE_CHECKING:
    from cluster.supervisor import PartitionStatus

DRAIN_WINDOW_S: Final = 30.0


class DrainEstimator:
    """Per partition: the last committed offset seen and the offsets committed per second."""

    def __init__(self, window_s: float = DRAIN_WINDOW_S) -> None:
        self._window_s = window_s
        self._last: dict[int, int] = {}
        self._meters: dict[int, RateMeter] = {}

    def last_committed(self, partition: int) -> int | None:
        return self._last.get(partition)

    def observe(self, partition: int, committed: int, now: float) -> None:
        """One sample of ``partition``'s committed offset at ``now`` (monotonic seconds)."""
        meter = self._meters.get(partition)
        previous = self._last.get(partition)
        if meter is None or previous is None or committed < previous:
            # First sample, or the offsets started over (topic re-created): a new baseline.
            meter = self._meters[partition] = RateMeter(self._window_s)
            meter.add(0, now)
        else:
            meter.add(committed - previous, now)
        self._last[partition] = committed

    def offsets_per_s(self, partition: int, now: float) -> float:
        meter = self._meters.get(partition)
        return meter.rate(now) if meter is not None else 0.0

    def drain_seconds(self, partition: int, lag: int, now: float) -> float:
        """Seconds until ``lag`` is committed at the current rate; 0 when there is no lag,
        ``DRAIN_STALLED`` when nothing was committed within the window."""
        if lag <= 0:
            return 0.0
        rate = self.offsets_per_s(partition, now)
        return lag / rate if rate > 0 else DRAIN_STALLED


class SupervisorMetrics:
    """The supervisor's gauges (create it inside the supervisor actor)."""

    def __init__(self) -> None:
        from actors.metrics import ray_metric

        self._lag: Any = ray_metric(PARTITION_LAG)
        self._drain: Any = ray_metric(PARTITION_DRAIN_SECONDS)
        self._pool_size: Any = ray_metric(SINK_POOL_SIZE)
        self.estimator = DrainEstimator()

    def publish(self, partitions: Iterable[PartitionStatus], pool_size: int,
                now: float) -> None:
        """Set the gauges from one status report (``now``: monotonic seconds)."""
        for status in partitions:
            lag = self.sample(status, now)
            if lag is None:
                continue
            tags = {"topic": status.topic, "partition": str(status.partition)}
            self._lag.set(lag, tags=tags)
            self._drain.set(self.estimator.drain_seconds(status.partition, lag, now),
                            tags=tags)
        self._pool_size.set(pool_size)

    def sample(self, status: PartitionStatus, now: float) -> int | None:
        """Feed one partition's report to the estimator; its lag, None when unknown (no end
        offset, or no committed offset ever seen while the consumer is not running)."""
        if status.end_offset is None:
            return None
        if status.state == "running":
            committed = status.committed_offset
            if committed is None:  # never written: everything in the topic is lag
                return status.end_offset
            self.estimator.observe(status.partition, committed, now)
        else:
            committed = self.estimator.last_committed(status.partition)
            if committed is None:
                return None
            self.estimator.observe(status.partition, committed, now)  # no progress
        return max(status.end_offset - committed, 0)
