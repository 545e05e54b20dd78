"""Ray metrics of the pipeline actors (exported by each node's metrics agent to Prometheus).

Every metric is built from its spec in ``actors.metric_contract`` (names, labels, buckets and
help text come from there). The metric objects are created inside the actor that records them
(in its ``__init__`` or its loop), never at import time and never pickled. Partition series
carry ``topic`` and ``partition``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from actors.metric_contract import (
    DEDUP_EVICTED_EARLY,
    EVENTS_CONSUMED,
    EVENTS_DUPLICATE,
    EVENTS_REJECTED,
    EVENTS_VALIDATED,
    SINK_ROWS,
    SINK_WRITE_SECONDS,
    MetricSpec,
)


def ray_metric(spec: MetricSpec, module: ModuleType | None = None) -> Any:
    """The Ray metric object for ``spec``, from ``ray.util.metrics`` unless ``module`` is given
    (``ray.serve.metrics`` adds the replica's labels)."""
    if module is None:
        from ray.util import metrics

        module = metrics
    if spec.kind == "counter":
        return module.Counter(spec.name, spec.meaning, tag_keys=spec.labels)
    if spec.kind == "gauge":
        return module.Gauge(spec.name, spec.meaning, tag_keys=spec.labels)
    return module.Histogram(spec.name, spec.meaning, boundaries=list(spec.buckets),
                            tag_keys=spec.labels)


class PipelineMetrics:
    """The counters of one partition consumer."""

    def __init__(self, topic: str, partition: int) -> None:
        self._tags = {"topic": topic, "partition": str(partition)}
        self.consumed: Any = ray_metric(EVENTS_CONSUMED)
        self.validated: Any = ray_metric(EVENTS_VALIDATED)
        self.rejected: Any = ray_metric(EVENTS_REJECTED)
        self.duplicates: Any = ray_metric(EVENTS_DUPLICATE)
        self.dedup_early: Any = ray_metric(DEDUP_EVICTED_EARLY)
        self.sink_rows: Any = ray_metric(SINK_ROWS)

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

    def flushed(self, rows: int) -> None:
        """Record one committed warehouse write."""
        if rows:
            self.sink_rows.inc(rows, tags=self._tags)


class SinkMetrics:
    """The write-latency histogram of one sink actor (``sink`` is its actor name)."""

    def __init__(self, sink: str) -> None:
        self._sink = sink
        self.write_seconds: Any = ray_metric(SINK_WRITE_SECONDS)

    def wrote(self, topic: str, partition: int, seconds: float) -> None:
        self.write_seconds.observe(seconds, tags={"topic": topic, "partition": str(partition),
                                                  "sink": self._sink})
