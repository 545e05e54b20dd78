"""Configuration the gateway needs; ``cluster.settings`` puts it in the settings tree."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from actors.config import KafkaConnection, TopicsConfig
from actors.secret import Secret

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class ProducerTuning(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """librdkafka producer settings; acks=all and idempotence are not optional."""

    # How long librdkafka waits to fill a batch. Each request waits for its acks, so this adds
    # up to linger_ms to every answer (1-event requests: p50 ~9 ms at 5, ~24 ms at 20). Under
    # load it is what keeps batches whole: with 5 ms, a request's 1000 records took longer
    # than the linger to enqueue on a busy 2-core machine and went out in fragments; the
    # gateway's CPU per event (7.9 vs 17.9 us) and the broker's (5.4 vs 10.8) halved at 20.
    linger_ms: Annotated[int, msgspec.Meta(ge=0)] = 20
    batch_size_bytes: PositiveInt = 1_000_000
    queue_max_messages: PositiveInt = 500_000
    queue_max_kbytes: PositiveInt = 1_048_576
    compression: str = "lz4"
    # A request waits at most this long for Kafka's acknowledgement, then gets 503; also
    # librdkafka's message.timeout.ms, so an unacknowledged record is never reported accepted.
    delivery_timeout_s: PositiveFloat = 10.0
    # Retry-After (seconds) sent with 429 (queue full, or too many body bytes in flight) and
    # 503 (Kafka unavailable).
    retry_after_s: PositiveInt = 1
    # How long /readyz waits for Kafka's metadata answer.
    readiness_timeout_s: PositiveFloat = 2.0
    # How long shutdown waits for the last records to be acknowledged.
    flush_timeout_s: PositiveFloat = 10.0


class ServeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How Ray Serve runs the gateway."""

    app_name: str = "eventray-gateway"
    route_prefix: str = "/"
    num_replicas: PositiveInt = 1
    autoscaling: bool = False
    min_replicas: PositiveInt = 1
    max_replicas: PositiveInt = 4
    target_ongoing_requests: PositiveFloat = 64.0
    max_ongoing_requests: PositiveInt = 1024
    replica_num_cpus: float = 0.5
    # HAProxy ingress and throughput-optimized mode (measured: ~20x the default proxy).
    haproxy: bool = True
    throughput_optimized: bool = True
    # Serve writes one access-log line per request in the replica (measurable at thousands of
    # requests/s); the gateway's own /metrics count requests by status instead.
    access_log: bool = False
    # Ray's per-request HAProxy metrics (serve_num_http_requests & co. in HAProxy mode): HAProxy
    # sends one log datagram per request that the HAProxyManager actor parses in Python, which
    # took 13% of a core at 1.4k requests/s. Off by default; the gateway's /metrics count
    # requests, events and produce latency itself. Like ``haproxy``, read when Ray starts.
    haproxy_request_metrics: bool = False
    # HAProxy's `timeout client` (Ray's default: 3600 s): how long it waits on a silent client,
    # for its headers, its body, or after an early answer for the rest of its body. Keep it
    # above body_timeout_s, so the gateway's JSON 408 comes first (HAProxy's own timeout
    # answers a bare "400 Bad request" page); after a 408 HAProxy drops the client's
    # connection once it has been silent this long. Like ``haproxy``, read when Ray starts.
    haproxy_client_timeout_s: PositiveInt = 15
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"


class GatewayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The HTTP gateway."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    max_events_per_request: PositiveInt = 10_000
    max_body_bytes: PositiveInt = 8 * 1024 * 1024
    # A request's whole body must arrive within this many seconds of its headers, else 408 and
    # the connection is closed: a client that stalls cannot hold a connection and its share of
    # max_inflight_body_bytes for longer. The largest body (max_body_bytes) then needs
    # ~0.8 MB/s; a slower client sends smaller batches.
    body_timeout_s: PositiveFloat = 10.0
    # Bytes of request bodies one replica holds at once (a body counts with its declared
    # Content-Length from the start, a chunked one with what arrived so far): past it, 429.
    max_inflight_body_bytes: PositiveInt = 64 * 1024 * 1024
    # Keys that may write for every account without a rate limit (named settings-<i>); the
    # scoped keys live in api_keys_file. Neither set means no key is required (local mode).
    api_keys: list[Secret] = []
    # The scoped keys (gateway.keys): a JSON file of SHA-256 hashes with each key's name,
    # accounts and rate limit, written by `eventray keys` or mounted from a Kubernetes Secret;
    # re-read every api_keys_reload_s, so a revoked key is refused within that long.
    api_keys_file: str = ""
    api_keys_reload_s: PositiveFloat = 5.0
    kafka: KafkaConnection = KafkaConnection()
    topics: TopicsConfig = TopicsConfig()
    producer: ProducerTuning = ProducerTuning()
    serve: ServeConfig = ServeConfig()

    def __post_init__(self) -> None:
        if self.serve.haproxy and self.serve.haproxy_client_timeout_s <= self.body_timeout_s:
            raise ValueError(
                f"serve.haproxy_client_timeout_s ({self.serve.haproxy_client_timeout_s}) must "
                f"exceed body_timeout_s ({self.body_timeout_s:g}): HAProxy would answer a "
                "stalled body first, with a bare 400 page")
        # A body of the largest allowed size would get 429 forever.
        if self.max_body_bytes > self.max_inflight_body_bytes:
            raise ValueError(
                f"max_body_bytes ({self.max_body_bytes}) exceeds max_inflight_body_bytes "
                f"({self.max_inflight_body_bytes})")
        # A request the producer queue could never hold would get 429 forever.
        if self.max_events_per_request > self.producer.queue_max_messages:
            raise ValueError(
                f"max_events_per_request ({self.max_events_per_request}) exceeds "
                f"producer.queue_max_messages ({self.producer.queue_max_messages})")
