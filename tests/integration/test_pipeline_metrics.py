"""The pipeline's Ray metrics (``actors.metrics.PipelineMetrics``) reach Ray's Prometheus export.

A small real pipeline (real broker, real Ray, the Snowflake emulator) consumes a known workload:
valid events, events that break a business rule, retried duplicates and records that break the
contract. Once everything is committed, the node's metrics endpoint (served by Ray's metrics
agent on ``_metrics_export_port``) must show exactly those counts, per topic and partition.

Ray adds the ``ray_`` prefix, a ``_total`` suffix to counters and its own labels (``WorkerId``,
``Component``, ...): a consumer actor that restarted has one series per worker, so values are
summed per (topic, partition[, reason]). The expected split over partitions is taken from what
landed (warehouse rows, dead letters) and from Kafka's end offsets; the totals from the workload.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pytest
from pipeline_helpers import (
    Key,
    assert_exactly_once,
    landed,
    pipeline_settings,
    produce_events,
    produce_raw,
    ray_runtime_env,
    wait_until_drained,
    workload,
)
from prometheus_client.parser import text_string_to_metric_families

from actors.batch_plan import CONTRACT_REASON
from actors.config import KafkaConnection, SnowflakeConfig
from actors.kafka_admin import end_offsets
from actors.metrics import FLUSH_SECONDS_BOUNDARIES
from actors.validation import check_event, reason_code
from cluster.local.processes import free_port
from cluster.settings import Settings
from cluster.supervisor import start_pipeline, stop_pipeline

pytestmark = pytest.mark.integration

PARTITIONS = 3
PREFIX = "ray_eventray_"
EXPORT_TIMEOUT_S = 30.0

Series = tuple[str, ...]  # (topic, partition) or (topic, partition, reason)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def metrics_url() -> Iterator[str]:
    """A private Ray instance exporting metrics on a free port, reported every 0.5 s."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False,
             _metrics_export_port=free_port(),
             _system_config={"metrics_report_interval_ms": 500},
             namespace="eventray-metrics-tests", runtime_env=ray_runtime_env(),
             log_to_driver=False)
    try:
        node = next(n for n in ray.nodes() if n["Alive"])
        yield f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def settings(metrics_url: str, kafka_connection: KafkaConnection,
             snowflake_config: SnowflakeConfig) -> Iterator[Settings]:
    # Small batches: several flushes per partition.
    settings = pipeline_settings(kafka_connection, snowflake_config, partitions=PARTITIONS,
                                 batch_max_events=100)
    start_pipeline(settings.pipeline_config())
    try:
        yield settings
    finally:
        stop_pipeline(settings.pipeline_config())


# --------------------------------------------------------------------------- scraping


@dataclass
class Scrape:
    """The pipeline's series in one scrape, summed over Ray's own labels."""

    counters: dict[str, dict[Series, float]] = field(default_factory=dict)
    flush_count: dict[Series, float] = field(default_factory=dict)
    flush_sum: dict[Series, float] = field(default_factory=dict)
    flush_buckets: dict[Series, dict[float, float]] = field(default_factory=dict)
    lag: dict[Series, float] = field(default_factory=dict)
    labels: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # every sample's


COUNTERS = ("events_consumed", "events_validated", "events_rejected", "events_duplicate",
            "sink_rows")


def scrape(url: str) -> Scrape:
    text = httpx.get(url, timeout=5).text
    result = Scrape(counters={name: {} for name in COUNTERS})
    buckets: dict[Series, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(PREFIX):
                continue
            name, labels = sample.name.removeprefix(PREFIX), sample.labels
            result.labels.append((name, labels))
            series: Series = (labels.get("topic", ""), labels.get("partition", ""))
            if name.endswith("_total") and name.removesuffix("_total") in COUNTERS:
                if name == "events_rejected_total":
                    series = (*series, labels.get("reason", ""))
                values = result.counters[name.removesuffix("_total")]
                values[series] = values.get(series, 0.0) + sample.value
            elif name == "flush_seconds_count":
                result.flush_count[series] = result.flush_count.get(series, 0.0) + sample.value
            elif name == "flush_seconds_sum":
                result.flush_sum[series] = result.flush_sum.get(series, 0.0) + sample.value
            elif name == "flush_seconds_bucket":
                buckets[series][float(labels["le"])] += sample.value
            elif name == "partition_lag":
                result.lag[series] = result.lag.get(series, 0.0) + sample.value
    result.flush_buckets = {s: dict(b) for s, b in buckets.items()}
    return result


def scrape_until(url: str, expected: dict[str, dict[Series, float]], *,
                 timeout: float = EXPORT_TIMEOUT_S) -> Scrape:
    """Scrape until the counters equal ``expected`` (export lags the actors by a report
    interval) or the deadline passes; the last scrape either way, for the assertions."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = scrape(url)
        except httpx.HTTPError:
            last = Scrape(counters={name: {} for name in COUNTERS})
        if last.counters == expected or time.monotonic() > deadline:
            return last
        time.sleep(0.5)


# --------------------------------------------------------------------------- the test


@pytest.mark.timeout(240)
def test_metrics_reach_the_prometheus_export_with_exact_counts(
        settings: Settings, metrics_url: str) -> None:
    config = settings.pipeline_config()
    topic = config.topics.events
    work = workload(400, seed=31)
    events = [e for b in work.batches for e in b]
    retried = [e for b in work.retry_batches for e in b]
    garbage = [(f"acct-raw{n}".encode(), f"not json {n}".encode()) for n in range(7)]
    assert work.invalid_ids and retried  # the seed gives every kind of record

    # Business-rule reasons as the consumers will find them (no rule is near its boundary).
    now = datetime.now(UTC)
    reasons: dict[Key, str] = {}
    for event in events:
        reason = check_event(event, config.rules, now)
        if reason is not None:
            reasons[event.account_id, event.event_id] = reason_code(reason)
    assert set(reasons) == work.invalid_ids
    reasons.update({(k.decode(), v.decode()): CONTRACT_REASON for k, v in garbage})

    produce_events(config.kafka, topic, events)
    produce_raw(config.kafka, topic, garbage)
    produce_events(config.kafka, topic, retried)  # a client retrying: duplicates, no new rows
    wait_until_drained(config, timeout=90)

    # Ground truth: what landed, and how many records each partition holds.
    result = landed(settings)
    assert_exactly_once(result, work.valid_ids, set(reasons))
    ends = {p: end for p, end in end_offsets(config.kafka, topic).items() if end > 0}
    produced = len(events) + len(garbage) + len(retried)
    assert sum(ends.values()) == produced
    partition_of = {(a, e): p for a, e, p, _ in result.rows}
    rows = Counter(str(p) for _, _, p, _ in result.rows)
    dead = Counter((str(p), reasons[a, e]) for a, e, p, _ in result.dead)
    duplicates = Counter(str(partition_of[e.account_id, e.event_id]) for e in retried)
    expected: dict[str, dict[Series, float]] = {
        "events_consumed": {(topic, str(p)): float(n) for p, n in ends.items()},
        "events_validated": {(topic, p): float(n) for p, n in rows.items()},
        "events_rejected": {(topic, p, r): float(n) for (p, r), n in dead.items()},
        "events_duplicate": {(topic, p): float(n) for p, n in duplicates.items()},
        "sink_rows": {(topic, p): float(n) for p, n in rows.items()},
    }

    got = scrape_until(metrics_url, expected)

    assert got.labels, f"no {PREFIX}* series at {metrics_url} after {EXPORT_TIMEOUT_S:g}s"
    consumed = got.counters["events_consumed"]
    assert sum(consumed.values()) == produced
    assert consumed == expected["events_consumed"]
    rejected = got.counters["events_rejected"]
    assert sum(rejected.values()) == len(work.invalid_ids) + len(garbage)
    assert {r: sum(n for (_, _, reason), n in rejected.items() if reason == r)
            for r in {r for _, _, r in rejected}} == dict(Counter(reasons.values()))
    assert rejected == expected["events_rejected"]
    assert sum(got.counters["sink_rows"].values()) == len(work.valid_ids)
    assert got.counters["sink_rows"] == expected["sink_rows"]
    assert sum(got.counters["events_validated"].values()) == len(work.valid_ids)
    assert got.counters["events_validated"] == expected["events_validated"]
    assert sum(got.counters["events_duplicate"].values()) == len(retried)
    assert got.counters["events_duplicate"] == expected["events_duplicate"]

    # Every series is tagged with our topic and a real partition (and rejections a reason).
    partitions = {str(p) for p in range(PARTITIONS)}
    for name, labels in got.labels:
        assert labels.get("topic") == topic, (name, labels)
        assert labels.get("partition") in partitions, (name, labels)
        assert ("reason" in labels) == name.startswith("events_rejected"), (name, labels)

    # One flush (warehouse write) at least per partition that had records; the histogram is
    # consistent with itself. Its _sum is not asserted: Ray rebuilds histograms from bucket
    # midpoints in the metrics agent, so the exported sum is only an approximation.
    active = {(topic, str(p)) for p in ends}
    assert set(got.flush_count) == active
    assert all(n > 0 for n in got.flush_count.values()), got.flush_count
    assert all(s > 0 for s in got.flush_sum.values()), got.flush_sum
    for series, count in got.flush_count.items():
        buckets = got.flush_buckets[series]
        assert sorted(buckets) == [*FLUSH_SECONDS_BOUNDARIES, float("inf")]
        cumulative = [buckets[le] for le in sorted(buckets)]
        assert cumulative == sorted(cumulative), (series, buckets)
        assert cumulative[-1] == count, (series, buckets)

    # Drained: every partition's lag gauge is down to zero.
    assert got.lag == dict.fromkeys(active, 0.0)
