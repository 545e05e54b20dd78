"""The metrics contract: every ``eventray_`` metric, its type, labels, meaning and emitter.

One source of truth. The gateway, the consumers, the sinks and the supervisor create their
metrics from these specs (``actors.metrics.ray_metric``, ``gateway.metrics``); the table in
``docs/metrics.md`` is rendered from them (``markdown_table``, checked by a unit test); the
integration test compares Ray's Prometheus export with them, and a unit test checks that the
Grafana dashboard queries only these names. Add a metric here first.

Names are as defined; Ray's export prefixes ``ray_`` and suffixes counters with ``_total``
(``ray_eventray_events_consumed_total``), histograms with ``_bucket``/``_sum``/``_count``.
The labels are ours; Ray adds its own (``WorkerId``, ``NodeAddress``, ...) and Serve adds
``application``/``deployment``/``replica`` to the gateway's (see ``docs/metrics.md``).
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

Kind = Literal["counter", "gauge", "histogram"]
Emitter = Literal["gateway", "consumer", "sink", "supervisor"]

PARTITION_LABELS: Final = ("topic", "partition")
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                          5.0, 10.0, 30.0)
WRITE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# eventray_partition_drain_seconds when a partition has lag but committed nothing within the
# rate window: no estimate (Ray's export drops +Inf and NaN gauge values).
DRAIN_STALLED: Final = -1.0


class MetricSpec(msgspec.Struct, frozen=True):
    name: str
    kind: Kind
    labels: tuple[str, ...]
    meaning: str
    emitted_by: Emitter
    buckets: tuple[float, ...] = ()


# -- gateway (each Serve replica; under plain uvicorn also GET /metrics) --------------------
GATEWAY_REQUESTS: Final = MetricSpec(
    "eventray_gateway_requests", "counter", ("route", "status"),
    "HTTP requests answered, by route (`other` for unknown paths) and status code.", "gateway")
GATEWAY_EVENTS_ACCEPTED: Final = MetricSpec(
    "eventray_gateway_events_accepted", "counter", (),
    "Events acknowledged by Kafka and answered `202`.", "gateway")
GATEWAY_EVENTS_REFUSED: Final = MetricSpec(
    "eventray_gateway_events_refused", "counter", ("reason",),
    "Events not accepted, by reason (the response's error code); a request whose events "
    "could not be counted counts 1.", "gateway")
GATEWAY_PRODUCE_LATENCY: Final = MetricSpec(
    "eventray_gateway_produce_latency_seconds", "histogram", (),
    "One accepted request: from its first `produce()` to Kafka's last acknowledgement.",
    "gateway", LATENCY_BUCKETS)
GATEWAY_QUEUE_RECORDS: Final = MetricSpec(
    "eventray_gateway_producer_queue_records", "gauge", (),
    "Records produced and not yet acknowledged by Kafka.", "gateway")
GATEWAY_KEY_REFUSALS: Final = MetricSpec(
    "eventray_gateway_key_refusals", "counter", ("key", "reason"),
    "Requests refused for their API key, by key name (`-`: none sent, `?`: not a known key) "
    "and reason: `missing_key`, `unknown_key`, `account_not_allowed`, `rate_limited`, "
    "`over_key_burst` (docs/security.md). Only with API keys configured.", "gateway")
GATEWAY_CLIENT_DISCONNECTS: Final = MetricSpec(
    "eventray_gateway_client_disconnects", "counter", ("route",),
    "Requests whose client closed the connection before its body had arrived: nothing of them "
    "was produced, and no answer is counted in `eventray_gateway_requests`.", "gateway")

# -- partition consumers ------------------------------------------------------------------
EVENTS_CONSUMED: Final = MetricSpec(
    "eventray_events_consumed", "counter", PARTITION_LABELS,
    "Records read from the events topic.", "consumer")
EVENTS_VALIDATED: Final = MetricSpec(
    "eventray_events_validated", "counter", PARTITION_LABELS,
    "Events that passed every rule (rows handed to the sink).", "consumer")
EVENTS_REJECTED: Final = MetricSpec(
    "eventray_events_rejected", "counter", (*PARTITION_LABELS, "reason"),
    "Events dead-lettered, by reason code (a business rule, or `contract`).", "consumer")
EVENTS_DUPLICATE: Final = MetricSpec(
    "eventray_events_duplicate", "counter", PARTITION_LABELS,
    "Events dropped as repeats of written or dead-lettered ones (client retries).", "consumer")
DEDUP_EVICTED_EARLY: Final = MetricSpec(
    "eventray_dedup_evicted_early", "counter", PARTITION_LABELS,
    "Keys the retry window forgot before `dedup_window_s` ended (`dedup_max_keys` reached).",
    "consumer")
SINK_ROWS: Final = MetricSpec(
    "eventray_sink_rows", "counter", PARTITION_LABELS,
    "Rows committed to the warehouse.", "consumer")

# -- sinks --------------------------------------------------------------------------------
SINK_WRITE_SECONDS: Final = MetricSpec(
    "eventray_sink_write_seconds", "histogram", (*PARTITION_LABELS, "sink"),
    "One batch's warehouse transaction (rows and offset), retries included.", "sink",
    WRITE_BUCKETS)

# -- supervisor ---------------------------------------------------------------------------
PARTITION_LAG: Final = MetricSpec(
    "eventray_partition_lag", "gauge", PARTITION_LABELS,
    "Kafka's end offset minus the warehouse's committed offset.", "supervisor")
PARTITION_DRAIN_SECONDS: Final = MetricSpec(
    "eventray_partition_drain_seconds", "gauge", PARTITION_LABELS,
    "Lag divided by the offsets committed per second over the last 30 s; 0 when caught up, "
    "-1 when lagging without progress.", "supervisor")
SINK_POOL_SIZE: Final = MetricSpec(
    "eventray_sink_pool_size", "gauge", (),
    "Sink actors the supervisor keeps (not counting retiring ones whose partitions are moving "
    "away).", "supervisor")
SINK_BUSY_RATIO: Final = MetricSpec(
    "eventray_sink_busy_ratio", "gauge", ("sink",),
    "Share of the last 15 s the sink spent writing (its own count of seconds in `write`, "
    "sampled by the supervisor): the scaling policy's busy time.", "supervisor")
PIPELINE_DRAIN_SECONDS: Final = MetricSpec(
    "eventray_pipeline_drain_seconds", "gauge", (),
    "Every partition's lag divided by the offsets committed per second over the last 30 s: "
    "what the scaling policy compares with `target_drain_s`; 0 when caught up, -1 when "
    "lagging without progress.", "supervisor")
AUTOSCALE_DESIRED_SINKS: Final = MetricSpec(
    "eventray_autoscale_desired_sinks", "gauge", (),
    "The sink pool size the scaling policy's last decision asked for (the pool size itself "
    "while autoscaling is off).", "supervisor")
AUTOSCALE_DECISION: Final = MetricSpec(
    "eventray_autoscale_decision", "gauge", (),
    "The scaling policy's last decision: 1 grow, -1 shrink, 0 hold (0 while autoscaling is "
    "off). Each decision is also logged with its inputs.", "supervisor")

CONTRACT: Final[tuple[MetricSpec, ...]] = (
    GATEWAY_REQUESTS, GATEWAY_EVENTS_ACCEPTED, GATEWAY_EVENTS_REFUSED, GATEWAY_PRODUCE_LATENCY,
    GATEWAY_QUEUE_RECORDS, GATEWAY_CLIENT_DISCONNECTS, GATEWAY_KEY_REFUSALS,
    EVENTS_CONSUMED, EVENTS_VALIDATED, EVENTS_REJECTED, EVENTS_DUPLICATE, DEDUP_EVICTED_EARLY,
    SINK_ROWS,
    SINK_WRITE_SECONDS,
    PARTITION_LAG, PARTITION_DRAIN_SECONDS, SINK_POOL_SIZE, SINK_BUSY_RATIO,
    PIPELINE_DRAIN_SECONDS, AUTOSCALE_DESIRED_SINKS, AUTOSCALE_DECISION,
)

EMITTERS: Final[dict[Emitter, str]] = {
    "gateway": "gateway replica",
    "consumer": "consumer `consumer:<topic>:<p>`",
    "sink": "sink `sink:<n>`",
    "supervisor": "`eventray-supervisor`",
}


def by_name() -> dict[str, MetricSpec]:
    return {spec.name: spec for spec in CONTRACT}


def markdown_table() -> str:
    """The contract as the markdown table that ``docs/metrics.md`` carries."""
    lines = ["| name | type | labels | meaning | emitted by |", "|---|---|---|---|---|"]
    for spec in CONTRACT:
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "-"
        kind: str = spec.kind
        if spec.buckets:
            kind += " (buckets " + ", ".join(f"{b:g}" for b in spec.buckets) + ")"
        lines.append(f"| `{spec.name}` | {kind} | {labels} | {spec.meaning} | "
                     f"{EMITTERS[spec.emitted_by]} |")
    return "\n".join(lines) + "\n"
