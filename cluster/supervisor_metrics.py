"""What the supervisor exports: each partition's lag and estimated drain time, the size of the
sink pool, each sink's busy share, and the scaling policy's drain time and last decision (gauges
of the metrics contract, ``actors.metric_contract``).

The supervisor samples every partition's committed offset (the warehouse's, as its consumer
reports it) and Kafka's end offset each ``PipelineConfig.metrics_interval_s``.
``DrainEstimator`` turns the samples into offsets committed per second over a sliding window
and ``lag / rate`` seconds to drain. A consumer that does not answer keeps its last committed
offset: its lag then grows with the topic and its rate falls to 0 (``DRAIN_STALLED``).
``BusyEstimator`` turns each sink's seconds spent writing (``SnowflakeSink.load``) into the share
of the last ``BUSY_WINDOW_S`` it was writing.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

from actors.metric_contract import (
    AUTOSCALE_DECISION,
    AUTOSCALE_DESIRED_SINKS,
    DRAIN_STALLED,
    PARTITION_DRAIN_SECONDS,
    PARTITION_LAG,
    PIPELINE_DRAIN_SECONDS,
    SINK_BUSY_RATIO,
    SINK_POOL_SIZE,
)
from actors.rate_meter import RateMeter

if TYPE_CHECKING:
    from cluster.supervisor import PartitionStatus, SinkStatus

DRAIN_WINDOW_S: Final = 30.0
BUSY_WINDOW_S: Final = 15.0
DECISION_VALUES: Final = {"up": 1.0, "down": -1.0, "hold": 0.0}


class BusyEstimator:
    """Per sink: the share of the last ``window_s`` it spent writing, from samples of its
    cumulative busy seconds (a restarted sink counts from 0 again: a new baseline)."""

    def __init__(self, window_s: float = BUSY_WINDOW_S) -> None:
        self._window_s = window_s
        self._samples: dict[str, collections.deque[tuple[float, float]]] = {}

    def observe(self, sink: str, busy_s: float, now: float) -> None:
        samples = self._samples.setdefault(sink, collections.deque())
        if samples and busy_s < samples[-1][1]:
            samples.clear()
        samples.append((now, busy_s))
        while len(samples) > 2 and samples[1][0] <= now - self._window_s:
            samples.popleft()

    def ratio(self, sink: str) -> float | None:
        """0..1; None before two samples."""
        samples = self._samples.get(sink)
        if not samples or len(samples) < 2:
            return None
        (t0, b0), (t1, b1) = samples[0], samples[-1]
        return min(max((b1 - b0) / (t1 - t0), 0.0), 1.0) if t1 > t0 else None

    def forget_except(self, sinks: Iterable[str]) -> None:
        keep = set(sinks)
        for name in [n for n in self._samples if n not in keep]:
            del self._samples[name]


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
        self._busy: Any = ray_metric(SINK_BUSY_RATIO)
        self._pipeline_drain: Any = ray_metric(PIPELINE_DRAIN_SECONDS)
        self._desired: Any = ray_metric(AUTOSCALE_DESIRED_SINKS)
        self._decision: Any = ray_metric(AUTOSCALE_DECISION)
        self.estimator = DrainEstimator()
        self.busy = BusyEstimator()

    def publish_sinks(self, sinks: Iterable[SinkStatus], now: float) -> dict[str, float]:
        """Sample each sink's busy seconds and set its busy share; the shares known."""
        sinks = list(sinks)
        self.busy.forget_except(s.name for s in sinks)
        shares: dict[str, float] = {}
        for sink in sinks:
            if sink.busy_s is not None:
                self.busy.observe(sink.name, sink.busy_s, now)
            share = self.busy.ratio(sink.name)
            if share is not None:
                shares[sink.name] = share
                self._busy.set(share, tags={"sink": sink.name})
        return shares

    def drain_rate(self, partitions: Iterable[PartitionStatus], now: float) -> float:
        """Offsets committed per second, all partitions (after ``publish`` fed the samples)."""
        return sum(self.estimator.offsets_per_s(p.partition, now) for p in partitions)

    def publish_decision(self, desired: int, action: str, drain_s: float | None) -> None:
        """The policy's decision (the pool size and 0 while autoscaling is off)."""
        self._desired.set(desired)
        self._decision.set(DECISION_VALUES[action])
        self._pipeline_drain.set(DRAIN_STALLED if drain_s is None else drain_s)

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
