"""The metrics contract (``actors/metric_contract.py``, ``docs/metrics.md``) against Ray's real
Prometheus export.

One private Ray instance runs the gateway on Serve (HAProxy ingress, two replicas) and a small
pipeline (real broker, the Snowflake emulator). A known workload goes through the gateway:
valid events, events that break a business rule, refused requests, and later client retries;
records that break the contract are produced straight to Kafka. The retry window is bounded
(``dedup_max_keys``) so that it forgets keys early, and the retries are picked among the keys
it still holds, so every count stays exact. Once everything is committed, the node's metrics
endpoint must export exactly the contract's ``eventray_`` metrics, each with the contract's
labels (plus Ray's own, and Serve's replica labels on the gateway's), and exactly the counts
the run implies.

Ray adds the ``ray_`` prefix and the ``_total``/``_bucket``/``_sum``/``_count`` suffixes, and
labels such as ``WorkerId``: values are summed over Ray's labels (a restarted actor has one
series per worker) and, for the gateway, over replicas. The expected split over partitions is
taken from what landed (warehouse rows and offsets, dead letters) and Kafka's end offsets; the
totals from the workload and the HTTP answers.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import msgspec
import pytest
import snowflake.connector
from pipeline_helpers import (
    Key,
    Landed,
    assert_exactly_once,
    landed,
    pipeline_settings,
    produce_raw,
    ray_runtime_env,
    serve_environment,
    wait_until_drained,
    workload,
)
from prometheus_client.parser import text_string_to_metric_families
from raw_http import connect, start_body

from actors.batch_plan import CONTRACT_REASON
from actors.config import KafkaConnection, SnowflakeConfig
from actors.consumer import sink_index, sink_name
from actors.contract import Event
from actors.kafka_admin import end_offsets
from actors.metric_contract import (
    CONTRACT,
    GATEWAY_KEY_REFUSALS,
    GATEWAY_QUEUE_RECORDS,
    PARTITION_DRAIN_SECONDS,
    PARTITION_LAG,
    SINK_POOL_SIZE,
    MetricSpec,
)
from actors.validation import check_event, reason_code
from cluster.local.processes import free_port
from cluster.settings import Settings
from cluster.supervisor import start_pipeline, stop_pipeline
from gateway.config import GatewayConfig, ServeConfig
from gateway.serve_app import deploy

pytestmark = pytest.mark.integration

PARTITIONS = 3
POOL_SIZE = 2
REPLICAS = 2
DEDUP_MAX_KEYS = 100  # below each partition's ~130 keys: the window forgets some early
SINGLE_POSTS = 12     # events posted one by one to /v1/events; the rest in batches
PREFIX = "ray_"
EXPORT_TIMEOUT_S = 60.0
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
# Labels Ray's metrics agent adds to every series, and Serve to a replica's.
RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId",
              "otel_scope_name", "otel_scope_schema_url", "otel_scope_version"}
SERVE_LABELS = {"application", "deployment", "replica"}
APP_NAME = "metrics-contract"

Series = tuple[str, ...]


# --------------------------------------------------------------------------- scraping


@dataclass(frozen=True)
class Sample:
    spec: MetricSpec
    suffix: str               # "", "_total", "_bucket", "_sum" or "_count"
    labels: dict[str, str]    # every label of the series, Ray's too
    value: float


@dataclass
class Scrape:
    samples: list[Sample] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # eventray series outside the contract

    def total(self, spec: MetricSpec, suffix: str = "",
              by: tuple[str, ...] | None = None) -> dict[Series, float]:
        """``spec``'s samples summed per value of the labels ``by`` (default: its own)."""
        keys = spec.labels if by is None else by
        sums: dict[Series, float] = defaultdict(float)
        for sample in self.samples:
            if sample.spec is spec and sample.suffix == suffix:
                sums[tuple(sample.labels.get(k, "") for k in keys)] += sample.value
        return dict(sums)


EXPORTED = {PREFIX + spec.name + suffix: (spec, suffix)
            for spec in CONTRACT for suffix in SUFFIXES[spec.kind]}


def scrape(url: str) -> Scrape:
    result = Scrape()
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for sample in family.samples:
            if not sample.name.startswith(PREFIX + "eventray_"):
                continue
            if sample.name not in EXPORTED:
                result.foreign.append(sample.name)
                continue
            spec, suffix = EXPORTED[sample.name]
            result.samples.append(Sample(spec, suffix, dict(sample.labels), sample.value))
    return result


def counters_of(got: Scrape) -> dict[str, dict[Series, float]]:
    """What ``Expected.counters`` compares: every counter and histogram count, summed over
    Ray's labels and replicas."""
    out = {spec.name: got.total(spec, "_total") for spec in CONTRACT if spec.kind == "counter"}
    out.update({spec.name: got.total(spec, "_count") for spec in CONTRACT
                if spec.kind == "histogram"})
    return out


def scrape_until(url: str, expected: dict[str, dict[Series, float]]) -> Scrape:
    """Scrape until the counters equal ``expected`` (the export lags by a report interval and
    the gateway hands its counts to Ray once a second) or the deadline passes; the last scrape
    either way, for the assertions."""
    deadline = time.monotonic() + EXPORT_TIMEOUT_S
    while True:
        try:
            last = scrape(url)
        except httpx.HTTPError:
            last = Scrape()
        if counters_of(last) == expected or time.monotonic() > deadline:
            return last
        time.sleep(0.5)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def metrics_url() -> Iterator[str]:
    """A private Ray instance with Serve's HAProxy ingress, exporting metrics on a free port,
    reported every 0.5 s."""
    import ray

    with serve_environment(ServeConfig()):
        ray.init(address="local", num_cpus=4, include_dashboard=False,
                 _metrics_export_port=free_port(),
                 _system_config={"metrics_report_interval_ms": 500},
                 namespace=f"eventray-metrics-{uuid.uuid4().hex[:6]}",
                 runtime_env=ray_runtime_env(), log_to_driver=False)
        try:
            node = next(n for n in ray.nodes() if n["Alive"])
            yield f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        finally:
            # Not serve.shutdown(): its controller waits 30 s for the HAProxy proxy and gives
            # up (measured); ending the local instance stops Serve and HAProxy with it.
            ray.shutdown()


@pytest.fixture(scope="module")
def settings(metrics_url: str, kafka_connection: KafkaConnection,
             snowflake_config: SnowflakeConfig) -> Settings:
    # Small batches: several writes per partition. No pruning: the offsets table then holds
    # one row per write, which the write-latency histogram must count.
    return pipeline_settings(
        kafka_connection, snowflake_config, partitions=PARTITIONS, pool_size=POOL_SIZE,
        batch_max_events=100,
        extra={"pipeline.metrics_interval_s": 0.5,
               "pipeline.consumer.dedup_max_keys": DEDUP_MAX_KEYS,
               # the memory window forgets key by key (the disk one by whole buckets), so
               # which keys it still holds is known exactly
               "pipeline.consumer.window_store": "memory",
               "pipeline.sink.prune_offsets_every": 0})


@pytest.fixture(scope="module")
def gateway(settings: Settings) -> Iterator[httpx.Client]:
    """Deployed first, right after Ray started: HAProxy binds ports chosen before ``ray.init``
    (``serve_env``), and every worker Ray starts meanwhile takes a port that might be one."""
    config = settings.pipeline_config()
    gateway_config = GatewayConfig(
        port=free_port(), kafka=config.kafka, topics=config.topics,
        serve=ServeConfig(app_name=APP_NAME, num_replicas=REPLICAS, replica_num_cpus=0.25))
    with httpx.Client(base_url=deploy(gateway_config), timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def pipeline(settings: Settings, gateway: httpx.Client) -> Iterator[Settings]:
    start_pipeline(settings.pipeline_config())
    try:
        yield settings
    finally:
        stop_pipeline(settings.pipeline_config())


# --------------------------------------------------------------------------- the run


class Client:
    """Posts to the gateway and keeps what a client saw: every answer, accepted events."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.requests: Counter[tuple[str, str]] = Counter()  # (route, status)
        self.refused: Counter[str] = Counter()               # reason -> events
        self.accepted = 0
        self.accepted_requests = 0

    def post(self, route: str, body: bytes, events: int,
             content_type: str = "application/json") -> httpx.Response:
        response = self.http.post(route, content=body, headers={"content-type": content_type})
        self.requests[route, str(response.status_code)] += 1
        if response.status_code == 202:
            self.accepted += response.json()["accepted"]
            self.accepted_requests += 1
        else:
            self.refused[response.json()["error"]] += events
        return response

    def post_events(self, events: list[Event]) -> None:
        """Until accepted, as a client retries a 429/503 (every answer is counted)."""
        for _ in range(20):
            if len(events) == 1:
                response = self.post("/v1/events", msgspec.json.encode(events[0]), 1)
            else:
                response = self.post("/v1/events/batch", msgspec.json.encode(events),
                                      len(events))
            if response.status_code == 202:
                return
            assert response.status_code in (429, 503), response.text
            time.sleep(0.5)
        raise AssertionError("the gateway kept refusing a valid request")


@dataclass
class Run:
    settings: Settings
    client: Client
    landed: Landed
    ends: dict[int, int]
    reasons: dict[Key, str]
    retried: list[Event]
    write_counts: dict[int, int]   # warehouse writes (offset rows) per partition


def offset_rows(config: SnowflakeConfig, topic: str) -> dict[int, int]:
    conn = snowflake.connector.connect(**config.connect_kwargs())
    try:
        cursor = conn.cursor()
        cursor.execute(f'SELECT "PARTITION", COUNT(*) FROM {config.offsets_table} '
                       "WHERE TOPIC = %s GROUP BY 1", (topic,))
        return {int(p): int(n) for p, n in cursor.fetchall()}
    finally:
        conn.close()


def newest_keys(result: Landed, per_partition: int) -> set[Key]:
    """The keys each partition's retry window still holds: its newest decoded events."""
    by_partition: dict[int, list[tuple[int, Key]]] = defaultdict(list)
    for account, event_id, partition, offset in [*result.rows, *result.dead]:
        by_partition[partition].append((offset, (account, event_id)))
    return {key for entries in by_partition.values()
            for _, key in sorted(entries)[-per_partition:]}


@pytest.fixture(scope="module")
def run(pipeline: Settings, gateway: httpx.Client) -> Run:
    settings = pipeline
    config = settings.pipeline_config()
    topic = config.topics.events
    work = workload(400, seed=31)
    events = [e for b in work.batches for e in b]
    garbage = [(f"acct-raw{n}".encode(), f"not json {n}".encode()) for n in range(7)]
    assert work.invalid_ids  # the seed gives events that break a rule
    now = datetime.now(UTC)
    reasons: dict[Key, str] = {}
    for event in events:
        reason = check_event(event, config.rules, now)
        if reason is not None:
            reasons[event.account_id, event.event_id] = reason_code(reason)
    assert set(reasons) == work.invalid_ids
    reasons.update({(k.decode(), v.decode()): CONTRACT_REASON for k, v in garbage})

    client = Client(gateway)
    for event in events[:SINGLE_POSTS]:
        client.post_events([event])
    for start in range(SINGLE_POSTS, len(events), 97):
        client.post_events(events[start:start + 97])
    # Refused: a batch with an event that breaks the contract, a single one, a wrong media
    # type, an unknown path.
    broken = [msgspec.to_builtins(e) for e in events[:5]]
    broken[2]["body"] = {}
    assert client.post("/v1/events/batch", msgspec.json.encode(broken), 5).status_code == 400
    assert client.post("/v1/events", msgspec.json.encode(broken[2]), 1).status_code == 400
    assert client.post("/v1/events", b"{}", 1, "text/plain").status_code == 415
    missing = gateway.get("/v2/nothing")
    assert missing.status_code == 404
    client.requests["other", "404"] += 1
    # A client that leaves in the middle of its body: counted, not answered, nothing produced.
    with connect(str(gateway.base_url)) as sock:
        start_body(sock, "/v1/events", 1000, msgspec.json.encode(events[0])[:40])
    produce_raw(config.kafka, topic, garbage)
    wait_until_drained(config, timeout=120)

    # Client retries of keys the bounded window still holds: dropped as duplicates.
    first = landed(settings)
    kept = newest_keys(first, DEDUP_MAX_KEYS)
    retried = [e for e in events if (e.account_id, e.event_id) in kept][::7]
    assert retried
    client.post_events(retried)
    wait_until_drained(config, timeout=120)

    result = landed(settings)
    assert_exactly_once(result, work.valid_ids, set(reasons))
    ends = end_offsets(config.kafka, topic)
    assert sum(ends.values()) == len(events) + len(garbage) + len(retried)
    return Run(settings=settings, client=client, landed=result, ends=ends, reasons=reasons,
               retried=retried, write_counts=offset_rows(config.snowflake, topic))


@dataclass
class Expected:
    counters: dict[str, dict[Series, float]]
    topic: str


@pytest.fixture(scope="module")
def expected(run: Run) -> Expected:
    topic = run.settings.pipeline_config().topics.events
    partition_of = {(a, e): p for a, e, p, _ in run.landed.rows}
    partition_of.update({(a, e): p for a, e, p, _ in run.landed.dead})
    rows = Counter(str(p) for _, _, p, _ in run.landed.rows)
    dead = Counter((str(p), run.reasons[a, e]) for a, e, p, _ in run.landed.dead)
    decoded = Counter(str(p) for a, e, p, _ in [*run.landed.rows, *run.landed.dead]
                      if run.reasons.get((a, e)) != CONTRACT_REASON)
    duplicates = Counter(str(partition_of[e.account_id, e.event_id]) for e in run.retried)
    client = run.client
    counters: dict[str, dict[Series, float]] = {
        "eventray_gateway_requests": {k: float(n) for k, n in client.requests.items()},
        "eventray_gateway_events_accepted": {(): float(client.accepted)},
        "eventray_gateway_events_refused": {(r,): float(n) for r, n in client.refused.items()},
        "eventray_gateway_produce_latency_seconds": {(): float(client.accepted_requests)},
        "eventray_gateway_client_disconnects": {("/v1/events",): 1.0},
        "eventray_gateway_key_refusals": {},  # no API keys in this run
        "eventray_events_consumed": {(topic, str(p)): float(n)
                                     for p, n in run.ends.items() if n > 0},
        "eventray_events_validated": {(topic, p): float(n) for p, n in rows.items()},
        "eventray_events_rejected": {(topic, p, r): float(n) for (p, r), n in dead.items()},
        "eventray_events_duplicate": {(topic, p): float(n) for p, n in duplicates.items()},
        "eventray_dedup_evicted_early": {(topic, p): float(n - DEDUP_MAX_KEYS)
                                         for p, n in decoded.items() if n > DEDUP_MAX_KEYS},
        "eventray_sink_rows": {(topic, p): float(n) for p, n in rows.items()},
        "eventray_sink_write_seconds": {
            (topic, str(p), sink_name(sink_index(p, POOL_SIZE))): float(n)
            for p, n in run.write_counts.items()},
    }
    assert counters["eventray_dedup_evicted_early"], "no partition outgrew the retry window"
    return Expected(counters=counters, topic=topic)


@pytest.fixture(scope="module")
def got(metrics_url: str, expected: Expected) -> Scrape:
    return scrape_until(metrics_url, expected.counters)


# --------------------------------------------------------------------------- the tests


def test_exactly_the_contract_metrics_are_exported(got: Scrape) -> None:
    assert got.samples, "no ray_eventray_* series in the export"
    assert got.foreign == [], f"exported but not in the contract: {sorted(set(got.foreign))}"
    # Key refusals only with API keys (tests/integration/test_gateway_keys.py counts them).
    assert {s.spec.name for s in got.samples} == {spec.name for spec in CONTRACT
                                                  if spec is not GATEWAY_KEY_REFUSALS}


def test_every_series_has_the_contract_labels(got: Scrape, expected: Expected) -> None:
    partitions = {str(p) for p in range(PARTITIONS)}
    for sample in got.samples:
        spec, labels = sample.spec, set(sample.labels)
        ours = labels - RAY_LABELS - (SERVE_LABELS if spec.emitted_by == "gateway" else set())
        if sample.suffix == "_bucket":
            ours.discard("le")
        assert ours == set(spec.labels), (spec.name, sample.labels)
        assert "WorkerId" in labels, (spec.name, sample.labels)
        if spec.emitted_by == "gateway":  # per replica, whichever replica answered
            assert labels >= SERVE_LABELS, (spec.name, sample.labels)
            assert sample.labels["application"] == APP_NAME
            assert sample.labels["deployment"] == "gateway"
        if "topic" in spec.labels:
            assert sample.labels["topic"] == expected.topic, (spec.name, sample.labels)
            assert sample.labels["partition"] in partitions, (spec.name, sample.labels)


def test_counters_and_histogram_counts_are_exact(got: Scrape, expected: Expected) -> None:
    counts = counters_of(got)
    for name, want in expected.counters.items():
        assert counts[name] == want, name
    assert counts == expected.counters


def test_the_gateway_is_exported_per_replica(got: Scrape, gateway: httpx.Client) -> None:
    # Each replica samples its producer queue every second: one series per replica, all
    # drained.
    queues = got.total(GATEWAY_QUEUE_RECORDS, by=("replica",))
    assert len(queues) == REPLICAS, queues
    assert set(queues.values()) == {0.0}
    # A scrape through HAProxy reaches one replica: it points at Ray's export instead.
    text = gateway.get("/metrics").text
    assert "Ray's metrics agent" in text
    assert [line for line in text.splitlines() if not line.startswith("#")] == []


def test_histograms_are_consistent(got: Scrape) -> None:
    for spec in CONTRACT:
        if spec.kind != "histogram":
            continue
        counts = got.total(spec, "_count")
        buckets: dict[Series, dict[float, float]] = defaultdict(dict)
        for sample in got.samples:
            if sample.spec is spec and sample.suffix == "_bucket":
                series = tuple(sample.labels.get(k, "") for k in spec.labels)
                le = float(sample.labels["le"])
                buckets[series][le] = buckets[series].get(le, 0.0) + sample.value
        assert set(buckets) == set(counts), spec.name
        for series, by_le in buckets.items():
            assert sorted(by_le) == [*spec.buckets, float("inf")], (spec.name, series)
            cumulative = [by_le[le] for le in sorted(by_le)]
            assert cumulative == sorted(cumulative), (spec.name, series, by_le)
            assert cumulative[-1] == counts[series], (spec.name, series)
        # _sum is only approximate (Ray rebuilds it from bucket midpoints), but positive.
        assert all(v > 0 for v in got.total(spec, "_sum").values()), spec.name


def test_the_supervisor_gauges_show_a_drained_pipeline(
        metrics_url: str, got: Scrape, expected: Expected) -> None:
    every = {(expected.topic, str(p)) for p in range(PARTITIONS)}
    deadline = time.monotonic() + EXPORT_TIMEOUT_S
    while True:  # the gauges follow the counters by a metrics interval
        lag = got.total(PARTITION_LAG)
        drain = got.total(PARTITION_DRAIN_SECONDS)
        if ((lag == dict.fromkeys(every, 0.0) and drain == dict.fromkeys(every, 0.0))
                or time.monotonic() > deadline):
            break
        time.sleep(0.5)
        got = scrape(metrics_url)
    assert lag == dict.fromkeys(every, 0.0)
    assert drain == dict.fromkeys(every, 0.0)
    assert got.total(SINK_POOL_SIZE) == {(): float(POOL_SIZE)}
