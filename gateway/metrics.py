"""The gateway's Prometheus metrics, in a registry of its own per app (no global state)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

METRICS_CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                           5.0, 10.0, 30.0)


class GatewayMetrics:
    """Counters of requests and events, and the produce latency histogram."""

    def __init__(self, queue_length: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "eventray_gateway_requests", "HTTP requests by route and status",
            ["route", "status"], registry=self.registry)
        self.events_accepted = Counter(
            "eventray_gateway_events_accepted", "Events acknowledged by Kafka and answered 202",
            registry=self.registry)
        self.events_refused = Counter(
            "eventray_gateway_events_refused",
            "Events not accepted, by reason (the error code of the response)",
            ["reason"], registry=self.registry)
        self.produce_latency = Histogram(
            "eventray_gateway_produce_latency_seconds",
            "From the first produce() of a request to Kafka's last acknowledgement",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        if queue_length is not None:
            gauge = Gauge("eventray_gateway_producer_queue_records",
                          "Records produced and not yet acknowledged", registry=self.registry)
            gauge.set_function(lambda: float(queue_length()))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
