"""The gateway's metrics: one recorder interface, two backends (no global state either way).

* ``PrometheusGatewayMetrics`` (plain uvicorn): a registry of its own per app, served as
  Prometheus text at ``GET /metrics``.
* ``RayGatewayMetrics`` (Ray Serve): Ray metrics recorded in the replica and exported by its
  node's metrics agent with the replica's labels (``application``, ``deployment``,
  ``replica``). Behind HAProxy a ``GET /metrics`` reaches any one replica, so there it answers
  with a pointer to Ray's export instead of one replica's numbers.

Names, labels, help and buckets come from ``actors.metric_contract``. The handlers record
once per request, never per event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from actors.metric_contract import (
    GATEWAY_CLIENT_DISCONNECTS,
    GATEWAY_EVENTS_ACCEPTED,
    GATEWAY_EVENTS_REFUSED,
    GATEWAY_KEY_REFUSALS,
    GATEWAY_PRODUCE_LATENCY,
    GATEWAY_QUEUE_RECORDS,
    GATEWAY_REQUESTS,
)

METRICS_CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
QueueLength = Callable[[], int]
RAY_EXPORT_NOTE: Final = (
    b"# Under Ray Serve the gateway's metrics are exported per replica by Ray's metrics agent\n"
    b"# (ray_eventray_gateway_*, labels application/deployment/replica); see docs/metrics.md.\n")


class GatewayMetrics(Protocol):
    """What the request handlers record; ``sample`` runs every ``sample_interval_s`` seconds
    on the event loop when that is not None."""

    sample_interval_s: float | None

    def request(self, route: str, status: int) -> None: ...

    def accepted(self, events: int, produce_seconds: float) -> None: ...

    def refused(self, reason: str, events: int) -> None: ...

    def client_disconnected(self, route: str) -> None: ...

    def key_refused(self, key: str, reason: str) -> None: ...

    def sample(self) -> None: ...

    def render(self) -> bytes: ...


MetricsFactory = Callable[[QueueLength], GatewayMetrics]


class PrometheusGatewayMetrics:
    """prometheus_client metrics in the app's own registry (plain uvicorn)."""

    sample_interval_s: float | None = None  # the queue gauge is read at scrape time

    def __init__(self, queue_length: QueueLength | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            GATEWAY_REQUESTS.name, GATEWAY_REQUESTS.meaning, GATEWAY_REQUESTS.labels,
            registry=self.registry)
        self._accepted = Counter(
            GATEWAY_EVENTS_ACCEPTED.name, GATEWAY_EVENTS_ACCEPTED.meaning,
            registry=self.registry)
        self._refused = Counter(
            GATEWAY_EVENTS_REFUSED.name, GATEWAY_EVENTS_REFUSED.meaning,
            GATEWAY_EVENTS_REFUSED.labels, registry=self.registry)
        self._disconnects = Counter(
            GATEWAY_CLIENT_DISCONNECTS.name, GATEWAY_CLIENT_DISCONNECTS.meaning,
            GATEWAY_CLIENT_DISCONNECTS.labels, registry=self.registry)
        self._key_refusals = Counter(
            GATEWAY_KEY_REFUSALS.name, GATEWAY_KEY_REFUSALS.meaning, GATEWAY_KEY_REFUSALS.labels,
            registry=self.registry)
        self._latency = Histogram(
            GATEWAY_PRODUCE_LATENCY.name, GATEWAY_PRODUCE_LATENCY.meaning,
            buckets=GATEWAY_PRODUCE_LATENCY.buckets, registry=self.registry)
        # (route, status) -> its child counter: labels() takes a lock and builds a key.
        self._request_children: dict[tuple[str, int], Any] = {}
        if queue_length is not None:
            gauge = Gauge(GATEWAY_QUEUE_RECORDS.name, GATEWAY_QUEUE_RECORDS.meaning,
                          registry=self.registry)
            gauge.set_function(lambda: float(queue_length()))

    def request(self, route: str, status: int) -> None:
        child = self._request_children.get((route, status))
        if child is None:
            child = self._request_children[route, status] = self._requests.labels(
                route, str(status))
        child.inc()

    def accepted(self, events: int, produce_seconds: float) -> None:
        self._latency.observe(produce_seconds)
        self._accepted.inc(events)

    def refused(self, reason: str, events: int) -> None:
        self._refused.labels(reason).inc(events)

    def client_disconnected(self, route: str) -> None:
        self._disconnects.labels(route).inc()

    def key_refused(self, key: str, reason: str) -> None:
        self._key_refusals.labels(key, reason).inc()

    def sample(self) -> None:
        """Nothing to do: the queue gauge is read when scraped."""

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class RayGatewayMetrics:
    """Ray metrics of one Serve replica (build it inside the replica).

    A Ray metric call costs a few microseconds (tag merging and checks in Python), so the
    counters add up in plain dicts per request and reach Ray in ``sample``, once a second
    and at shutdown; only the latency histogram is recorded per request."""

    sample_interval_s: float | None = 1.0

    def __init__(self, queue_length: QueueLength) -> None:
        from ray.serve import metrics as serve_metrics

        from actors.metrics import ray_metric

        self._queue_length = queue_length
        self._requests: Any = ray_metric(GATEWAY_REQUESTS, serve_metrics)
        self._accepted: Any = ray_metric(GATEWAY_EVENTS_ACCEPTED, serve_metrics)
        self._refused: Any = ray_metric(GATEWAY_EVENTS_REFUSED, serve_metrics)
        self._disconnects: Any = ray_metric(GATEWAY_CLIENT_DISCONNECTS, serve_metrics)
        self._key_refusals: Any = ray_metric(GATEWAY_KEY_REFUSALS, serve_metrics)
        self._latency: Any = ray_metric(GATEWAY_PRODUCE_LATENCY, serve_metrics)
        self._queue: Any = ray_metric(GATEWAY_QUEUE_RECORDS, serve_metrics)
        self._pending_requests: dict[tuple[str, int], int] = {}
        self._pending_refused: dict[str, int] = {}
        self._pending_disconnects: dict[str, int] = {}
        self._pending_key_refusals: dict[tuple[str, str], int] = {}
        self._pending_accepted = 0

    def request(self, route: str, status: int) -> None:
        key = (route, status)
        self._pending_requests[key] = self._pending_requests.get(key, 0) + 1

    def accepted(self, events: int, produce_seconds: float) -> None:
        self._latency.observe(produce_seconds)
        self._pending_accepted += events

    def refused(self, reason: str, events: int) -> None:
        self._pending_refused[reason] = self._pending_refused.get(reason, 0) + events

    def client_disconnected(self, route: str) -> None:
        self._pending_disconnects[route] = self._pending_disconnects.get(route, 0) + 1

    def key_refused(self, key: str, reason: str) -> None:
        pending = self._pending_key_refusals
        pending[key, reason] = pending.get((key, reason), 0) + 1

    def sample(self) -> None:
        """Hand the counts since the last call to Ray and set the queue gauge (on the event
        loop, like the handlers: no lock needed)."""
        requests, self._pending_requests = self._pending_requests, {}
        refused, self._pending_refused = self._pending_refused, {}
        disconnects, self._pending_disconnects = self._pending_disconnects, {}
        key_refusals, self._pending_key_refusals = self._pending_key_refusals, {}
        accepted, self._pending_accepted = self._pending_accepted, 0
        for (route, status), n in requests.items():
            self._requests.inc(n, tags={"route": route, "status": str(status)})
        for reason, n in refused.items():
            if n > 0:  # Ray refuses to add 0
                self._refused.inc(n, tags={"reason": reason})
        for route, n in disconnects.items():
            self._disconnects.inc(n, tags={"route": route})
        for (key, reason), n in key_refusals.items():
            self._key_refusals.inc(n, tags={"key": key, "reason": reason})
        if accepted > 0:
            self._accepted.inc(accepted)
        self._queue.set(self._queue_length())

    def render(self) -> bytes:
        return RAY_EXPORT_NOTE
