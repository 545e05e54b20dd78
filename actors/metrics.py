"""Ray metrics of the pipeline actors (exported by Ray's metrics agent to Prometheus).

The metric objects are created lazily inside the actor that records them (``PipelineMetrics``
is built in the actor's ``__init__``), never at import time and never pickled. Every series is
tagged with ``topic`` and ``partition`` so the dashboards can show a partition's progress.
"""

from __future__ import annotations

from typing import Any, Final

FLUSH_SECONDS_BOUNDARIES: Final = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
_PARTITION_TAGS: Final = ("topic", "partition")


class PipelineMetrics:
    """The counters, histogram and gauge of one partition consumer."""

    def __init__(self, topic: str, partition: int) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self._tags = {"topic": topic, "partition": str(partition)}
        self.consumed: Any = Counter(
            "eventray_events_consumed", "Records read from Kafka.", tag_keys=_PARTITION_TAGS)
        self.validated: Any = Counter(
            "eventray_events_validated", "Events that passed every rule.",
            tag_keys=_PARTITION_TAGS)
        self.rejected: Any = Counter(
            "eventray_events_rejected", "Events sent to the dead-letter topic, by reason code.",
            tag_keys=(*_PARTITION_TAGS, "reason"))
        self.duplicates: Any = Counter(
            "eventray_events_duplicate", "Events dropped as duplicates of written ones.",
            tag_keys=_PARTITION_TAGS)
        self.dedup_early: Any = Counter(
            "eventray_dedup_evicted_early",
            "Keys the dedup window forgot before dedup_window_s ended (dedup_max_keys reached).",
            tag_keys=_PARTITION_TAGS)
        self.sink_rows: Any = Counter(
            "eventray_sink_rows", "Rows written to the warehouse.", tag_keys=_PARTITION_TAGS)
        self.flush_seconds: Any = Histogram(
            "eventray_flush_seconds", "Duration of one warehouse write (batch).",
            boundaries=FLUSH_SECONDS_BOUNDARIES, tag_keys=_PARTITION_TAGS)
        self.lag: Any = Gauge(
            "eventray_partition_lag", "End offset minus the committed offset.",
            tag_keys=_PARTITION_TAGS)

    def count(self, consumed: int, validated: int, duplicates: int,
              rejected_by_reason: dict[str, int]) -> None:
        """Record one batch's decode/validate outcome."""
        if consumed:
            self.consumed.inc(consumed, tags=self._tags)
        if validated:
            self.validated.inc(validated, tags=self._tags)
        if duplicates:
            self.duplicates.inc(duplicates, tags=self._tags)
        for reason, n in rejected_by_reason.items():
            self.rejected.inc(n, tags={**self._tags, "reason": reason})

    def dedup_evicted_early(self, keys: int) -> None:
        self.dedup_early.inc(keys, tags=self._tags)

    def flushed(self, rows: int, seconds: float) -> None:
        """Record one committed warehouse write."""
        if rows:
            self.sink_rows.inc(rows, tags=self._tags)
        self.flush_seconds.observe(seconds, tags=self._tags)

    def set_lag(self, lag: int) -> None:
        self.lag.set(lag, tags=self._tags)
