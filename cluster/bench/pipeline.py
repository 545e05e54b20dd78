"""``eventray bench pipeline``: topic -> committed rows, the pipeline vs two raw baselines.

One run, one topic, one warehouse (fresh tables per phase):

(a) raw consume: one confluent-kafka consumer reads the whole topic (events/s, the ceiling of
    reading); (b) raw sink: one plain process, no Ray, consumes, decodes (``EventCodec``),
    validates (``validate_batch``), builds rows and writes them with ``SnowflakeWriter`` in the
    pipeline's batch size (the ceiling of one writer); (c) the pipeline: the supervisor's
    partition consumers and sink pool, from the moment they are all up until the warehouse's
    committed offsets reach the topic's end (rows already committed at that moment are not
    counted). Prints c/a and c/b. ``--e2e`` also drives HTTP -> committed row through the
    gateway (plain uvicorn subprocess) while the pipeline runs, with accept->commit latency
    taken from the rows' ACCEPTED_AT/WRITTEN_AT.

Starts its own LocalKafka and LocalSnowflake on free ports in a temp dir unless pointed at
running ones. Every phase is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from actors.config import (
    KafkaConnection,
    PipelineConfig,
    SnowflakeConfig,
)
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_CONTENT_TYPE,
    HEADER_REQUEST_ID,
    RECORD_CONTENT_TYPE,
    Event,
    EventCodec,
)
from actors.rows import EventRow, SinkBatch, encode_rows, row_from_event
from actors.sink import SnowflakeWriter
from actors.validation import validate_batch
from cluster.bench.cpu_usage import CpuReport, tree_usage_between
from cluster.bench.cpu_usage import snapshot as cpu_snapshot
from cluster.bench.first_row import FirstRowWatch
from cluster.bench.stack import (
    BenchError,
    bench_stack,
    create_topic,
    end_offsets,
    gateway_like_producer,
)
from cluster.bench.workload import WorkloadSpec, generate
from cluster.local.ray_head import use_loopback_for_in_process_ray
from cluster.settings import SINGLE_BROKER_TOPICS, Settings

log = logging.getLogger(__name__)

TARGETS = {"ratio_vs_sink": 1.0, "e2e_events_per_s": 30_000.0}
_REPO = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting a local one")
    parser.add_argument("--snowflake-port", type=int,
                        help="use the emulator on 127.0.0.1:PORT instead of starting one")
    parser.add_argument("--events", type=int, default=200_000, help="events in the topic")
    parser.add_argument("--invalid-share", type=float, default=0.05)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int,
                        help="events per warehouse batch (raw sink and pipeline); default: "
                        "pipeline.consumer.batch_max_events of the settings")
    parser.add_argument("--pool-size", type=int,
                        help="pipeline sink actors; default: pipeline.sink.pool_size")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per phase")
    parser.add_argument("--skip", choices=["consume", "sink", "pipeline"], action="append",
                        default=[])
    parser.add_argument("--e2e", action="store_true", help="also HTTP -> committed row")
    # 100k events lasted ~3.5 s end to end, a third of it ramp-up and the drain of the last
    # batches (a batch waits up to consumer.batch_max_wait_s): 300k measure the steady state.
    parser.add_argument("--e2e-events", type=int, default=300_000)
    parser.add_argument("--e2e-batch", type=int, default=1000, help="events per HTTP request")
    parser.add_argument("--e2e-concurrency", type=int, default=4)
    parser.add_argument("--profile", metavar="PATH",
                        help="cProfile the raw sink phase into PATH (pstats)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")


def _produce(conn: KafkaConnection, topic: str, events: list[Event]) -> float:
    """Produce as the gateway does (key, value, headers); every record confirmed. Events/s."""
    codec = EventCodec()
    producer = gateway_like_producer(conn)
    failures: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    started = time.perf_counter()
    request_id = uuid.uuid4().hex.encode()
    for n, event in enumerate(events):
        accepted = str(time.time_ns() // 1_000_000).encode()
        producer.produce(topic, key=event.account_id.encode(), value=codec.encode(event),
                         headers=[(HEADER_CONTENT_TYPE, RECORD_CONTENT_TYPE.encode()),
                                  (HEADER_REQUEST_ID, request_id),
                                  (HEADER_ACCEPTED_AT_MS, accepted)],
                         on_delivery=delivered)
        if n % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or failures:
        raise BenchError(f"produce: {left} records unsent, {len(failures)} failed "
                         f"(first: {failures[:1]})")
    return len(events) / (time.perf_counter() - started)


def _assigned_consumer(conn: KafkaConnection, topic: str, partitions: int) -> Any:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({**conn.client_config(), "group.id": f"bench-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "fetch.max.bytes": 64 * 1024 * 1024,
                         "max.partition.fetch.bytes": 16 * 1024 * 1024})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    return consumer


# -- (a) raw consume ------------------------------------------------------------------------


def raw_consume(conn: KafkaConnection, topic: str, ends: dict[int, int],
                timeout_s: float) -> float:
    """Read the whole topic with one consumer; events/s."""
    expected = sum(ends.values())
    consumer = _assigned_consumer(conn, topic, len(ends))
    try:
        count = 0
        started: float | None = None
        deadline = time.monotonic() + timeout_s
        while count < expected:
            messages = consumer.consume(num_messages=10_000, timeout=0.5)
            if started is None and messages:
                started = time.perf_counter()
            for message in messages:
                if message.error() is None:
                    count += 1
            if time.monotonic() > deadline:
                raise BenchError(f"raw consume: {count}/{expected} in {timeout_s:g}s")
        assert started is not None
        return count / (time.perf_counter() - started)
    finally:
        consumer.close()


# -- (b) raw sink ---------------------------------------------------------------------------


class _PartitionBuffer:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.next_offset = 0


def raw_sink(conn: KafkaConnection, topic: str, ends: dict[int, int], *,
             config: SnowflakeConfig, pipeline: PipelineConfig, batch_size: int,
             timeout_s: float) -> tuple[float, int]:
    """Consume -> decode -> validate -> rows -> SnowflakeWriter, one process; (events/s, rows)."""
    codec = EventCodec()
    writer = SnowflakeWriter(config, pipeline.sink)
    writer.ensure_tables()
    expected = sum(ends.values())
    consumer = _assigned_consumer(conn, topic, len(ends))
    buffers: dict[int, _PartitionBuffer] = defaultdict(_PartitionBuffer)
    epochs: dict[int, int] = {}  # the owner epoch taken per partition, as a consumer does
    done = 0
    rows_written = 0
    started: float | None = None

    def flush(partition: int, buffer: _PartitionBuffer) -> None:
        nonlocal done, rows_written
        batch = _sink_batch(codec, pipeline, topic, partition, buffer)
        if partition not in epochs:
            seen = writer.owner_epoch(topic, partition) or 0
            epochs[partition] = writer.take_ownership(topic, partition, "bench-raw-sink", seen)
        rows_written += writer.write(batch, epochs[partition]).rows_written
        done += len(buffer.messages)
        buffer.next_offset = batch.to_offset
        buffer.messages = []

    try:
        deadline = time.monotonic() + timeout_s
        while done < expected:
            messages = consumer.consume(num_messages=batch_size, timeout=0.2)
            if started is None and messages:
                started = time.perf_counter()
            for message in messages:
                if message.error() is None:
                    buffers[message.partition()].messages.append(message)
            for partition, buffer in buffers.items():
                if buffer.messages and (len(buffer.messages) >= batch_size
                                        or buffer.messages[-1].offset() + 1 >= ends[partition]):
                    flush(partition, buffer)
            if time.monotonic() > deadline:
                raise BenchError(f"raw sink: {done}/{expected} in {timeout_s:g}s")
        assert started is not None
        return done / (time.perf_counter() - started), rows_written
    finally:
        consumer.close()
        writer.close()


def _sink_batch(codec: EventCodec, pipeline: PipelineConfig, topic: str, partition: int,
                buffer: _PartitionBuffer) -> SinkBatch:
    """What a partition consumer does with one batch (dead letters are only counted here)."""
    decoded: list[tuple[Any, Event]] = []
    for message in buffer.messages:
        try:
            decoded.append((message, codec.decode_json(message.value())))
        except (msgspec.ValidationError, msgspec.DecodeError):
            continue
    reasons = validate_batch([e for _, e in decoded], pipeline.rules, datetime.now(UTC))
    rows: list[EventRow] = []
    for (message, event), reason in zip(decoded, reasons, strict=True):
        if reason is not None:
            continue
        headers = dict(message.headers() or [])
        accepted = headers.get(HEADER_ACCEPTED_AT_MS)
        request_id = headers.get(HEADER_REQUEST_ID)
        rows.append(row_from_event(
            event, topic=topic, partition=partition, offset=message.offset(),
            request_id=request_id.decode() if request_id else None,
            accepted_at_ms=int(accepted) if accepted else None))
    return SinkBatch(topic=topic, partition=partition, from_offset=buffer.next_offset,
                     to_offset=buffer.messages[-1].offset() + 1, rows_json=encode_rows(rows),
                     row_count=len(rows))


# -- (c) the pipeline -----------------------------------------------------------------------


class PipelineResult(msgspec.Struct):
    events_per_s: float
    wall_s: float
    outside_s: float  # CPU seconds of processes outside the bench meanwhile (not in ``cpu``)
    dead_lettered: int
    counted_events: int
    cpu: CpuReport
    first_row_s: float  # start_pipeline called -> the first batch committed


def _pipeline_config(settings: Settings, kafka: KafkaConnection, snowflake: SnowflakeConfig, *,
                     topic: str, partitions: int, args: argparse.Namespace,
                     tag: str) -> PipelineConfig:
    """The settings' pipeline (so a config file or EVENTRAY_PIPELINE__* variables are what is
    measured) on the bench's broker, warehouse, topic and tables."""
    base = settings.pipeline_config()
    return msgspec.structs.replace(
        base, kafka=kafka,
        # The bench creates its topics with one replica (create_topic): say so.
        topics=msgspec.structs.replace(base.topics, events=topic, dead_letter=f"{topic}.dlq",
                                       partitions=partitions, replication_factor=1,
                                       min_insync_replicas=1, durability="local"),
        snowflake=msgspec.structs.replace(snowflake, events_table=f"PIPE_{tag}",
                                          offsets_table=f"PIPE_OFFSETS_{tag}"),
        consumer=msgspec.structs.replace(base.consumer, group_id=f"bench-{tag.lower()}",
                                         batch_max_events=args.batch_size, num_cpus=0.1),
        sink=msgspec.structs.replace(base.sink, pool_size=args.pool_size, num_cpus=0.1),
        namespace=f"eventray-bench-{tag.lower()}",
    )


def _committed(config: PipelineConfig) -> tuple[dict[int, int], int]:
    from cluster.supervisor import get_status

    status = get_status(config)
    if status is None:
        raise BenchError("the pipeline supervisor is gone")
    committed = {p.partition: p.committed_offset or 0 for p in status.partitions}
    return committed, status.totals.dead_lettered


class _DrainWatch:
    """Whether the pipeline committed up to given end offsets, asked of the broker: each
    consumer commits its group offset right after the warehouse committed a batch, so reading
    the group's offsets (``committed()``, no group join) costs the actors nothing, where the
    supervisor's status asks every consumer and sink (at 20 polls/s ~0.5 µs per event of the
    consumers' CPU). The supervisor is still asked every few seconds, should a group commit
    fail (consumers only log that)."""

    _STATUS_EVERY_S: Final = 3.0

    def __init__(self, config: PipelineConfig) -> None:
        from confluent_kafka import Consumer

        self._config = config
        self._consumer = Consumer({**config.kafka.client_config(),
                                   "group.id": config.consumer.group_id,
                                   "enable.auto.commit": False})
        self._asked_status = time.monotonic()

    def committed(self) -> dict[int, int]:
        from confluent_kafka import TopicPartition

        topic, partitions = self._config.topics.events, self._config.topics.partitions
        offsets = self._consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in offsets}

    def reached(self, ends: dict[int, int]) -> bool:
        committed = self.committed()
        if all(committed.get(p, 0) >= end for p, end in ends.items()):
            return True
        if time.monotonic() - self._asked_status >= self._STATUS_EVERY_S:
            self._asked_status = time.monotonic()
            by_status, _ = _committed(self._config)
            return all(by_status.get(p, 0) >= end for p, end in ends.items())
        return False

    def close(self) -> None:
        self._consumer.close()


def run_pipeline(config: PipelineConfig, ends: dict[int, int],
                 timeout_s: float) -> PipelineResult:
    """Start the pipeline on a filled topic; rate from all-actors-up to drained."""
    from cluster.supervisor import start_pipeline

    with FirstRowWatch(config.snowflake, config.topics.events) as first_row:
        wall_start = first_row.started
        start_pipeline(config, ready_timeout_s=timeout_s)
        t0 = time.perf_counter()
        cpu_before = cpu_snapshot(t0)
        committed0, _ = _committed(config)
        deadline = time.monotonic() + timeout_s
        watch = _DrainWatch(config)
        try:
            while not watch.reached(ends):
                if time.monotonic() > deadline:
                    raise BenchError(f"pipeline: committed {watch.committed()} of {ends} in "
                                     f"{timeout_s:g}s")
                time.sleep(0.05)
        finally:
            watch.close()
        t1 = time.perf_counter()
        cpu_after = cpu_snapshot(t1)
        _, dead = _committed(config)
        first_row_s = first_row.seconds(timeout_s)
    cpu, outside_s = tree_usage_between(cpu_before, cpu_after)
    counted = sum(ends.values()) - sum(committed0.values())
    return PipelineResult(events_per_s=counted / (t1 - t0),
                          wall_s=time.perf_counter() - wall_start, dead_lettered=dead,
                          counted_events=counted, cpu=cpu, first_row_s=first_row_s,
                          outside_s=outside_s)


def _table_keys(config: SnowflakeConfig, table: str, topic: str) -> list[tuple[str, str]]:
    import snowflake.connector

    conn = snowflake.connector.connect(**config.connect_kwargs(), paramstyle="qmark")
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT ACCOUNT_ID, EVENT_ID FROM {table} WHERE KAFKA_TOPIC = ?",
                       (topic,))
        return [(str(a), str(e)) for a, e in cursor.fetchall()]
    finally:
        conn.close()


def _latencies_ms(config: SnowflakeConfig, table: str, topic: str,
                  id_prefix: str) -> list[float]:
    """Accept -> commit of the rows whose event id starts with ``id_prefix``, sorted."""
    import snowflake.connector

    conn = snowflake.connector.connect(**config.connect_kwargs(), paramstyle="qmark")
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT ACCEPTED_AT, WRITTEN_AT FROM {table} WHERE KAFKA_TOPIC = ? "
                       "AND ACCEPTED_AT IS NOT NULL AND STARTSWITH(EVENT_ID, ?)",
                       (topic, id_prefix))
        return sorted((w - a).total_seconds() * 1000 for a, w in cursor.fetchall())
    finally:
        conn.close()


# -- e2e: HTTP -> committed row -------------------------------------------------------------


@contextmanager
def _gateway(settings: Settings, kafka: KafkaConnection, topic: str,
             partitions: int) -> Iterator[str]:
    """The gateway under plain uvicorn in a subprocess; yields its base URL."""
    from cluster.local.processes import free_port
    from gateway.server import encode_config

    gw_settings = settings.with_overrides({
        "kafka.bootstrap_servers": kafka.bootstrap_servers, "topics.events": topic,
        "topics.dead_letter": f"{topic}.dlq", "topics.partitions": partitions,
        **SINGLE_BROKER_TOPICS, "gateway.port": free_port(), "gateway.host": "127.0.0.1"})
    config = gw_settings.gateway_config()
    path = os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH", "")) if p)
    process = subprocess.Popen([sys.executable, "-m", "gateway.server"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": path})
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(encode_config(config))
        process.stdin.close()
        line = process.stdout.readline().decode().strip()
        if not line.startswith("listening on "):
            raise BenchError(f"gateway did not start: {line!r}")
        yield line.removeprefix("listening on ")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _post_all(url: str, batches: list[list[Event]], concurrency: int) -> int:
    """POST every batch (retrying 429/503 with the same body); the events accepted."""
    import httpx

    queue = list(reversed(batches))
    lock = threading.Lock()
    accepted = 0
    errors: list[str] = []

    def worker() -> None:
        nonlocal accepted
        with httpx.Client(base_url=url, timeout=60) as client:
            while True:
                with lock:
                    if not queue or errors:
                        return
                    batch = queue.pop()
                body = msgspec.json.encode(batch)
                for _ in range(100):
                    response = client.post("/v1/events/batch", content=body,
                                           headers={"content-type": "application/json"})
                    if response.status_code == 202:
                        with lock:
                            accepted += len(batch)
                        break
                    if response.status_code not in (429, 503):
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                        return
                    time.sleep(0.2)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(f"the gateway refused a batch: {errors[0]}")
    return accepted


# -- run ------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def run(settings: Settings, args: argparse.Namespace) -> int:
    import ray

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tag = uuid.uuid4().hex[:6].upper()
    topic = f"bench-{tag.lower()}"
    if args.batch_size is None:
        args.batch_size = settings.pipeline.consumer.batch_max_events
    if args.pool_size is None:
        args.pool_size = settings.pipeline.sink.pool_size
    out: dict[str, Any] = {"raw_consume_events_per_s": None, "raw_sink_events_per_s": None,
                           "pipeline_events_per_s": None, "ratio_vs_consume": None,
                           "ratio_vs_sink": None, "first_row_s": None, "e2e": None}
    with bench_stack(settings, bootstrap=args.bootstrap, snowflake_port=args.snowflake_port,
                     name="pipeline") as (kafka, snowflake):
        workload = generate(WorkloadSpec(events=args.events, batch_size=args.e2e_batch,
                                         invalid_share=args.invalid_share, refused_share=0.0,
                                         retry_share=0.0, run_id=f"b{tag}"))
        events = [e for batch in workload.batches for e in batch]
        create_topic(kafka, topic, args.partitions)
        produced = _produce(kafka, topic, events)
        ends = end_offsets(kafka, topic, args.partitions)
        print(f"topic {topic}: {sum(ends.values()):,} events ({len(workload.invalid_ids):,} "
              f"invalid) produced at {produced:,.0f} events/s")
        config = _pipeline_config(settings, kafka, snowflake, topic=topic,
                                  partitions=args.partitions, args=args, tag=tag)

        if "consume" not in args.skip:
            out["raw_consume_events_per_s"] = raw_consume(kafka, topic, ends, args.timeout)
            print(f"(a) raw consume      {out['raw_consume_events_per_s']:>12,.0f} events/s")
        if "sink" not in args.skip:
            raw_config = msgspec.structs.replace(snowflake, events_table=f"RAW_{tag}",
                                                 offsets_table=f"RAW_OFFSETS_{tag}")
            profiler = None
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            rate, raw_rows = raw_sink(kafka, topic, ends, config=raw_config, pipeline=config,
                                      batch_size=args.batch_size, timeout_s=args.timeout)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            out["raw_sink_events_per_s"] = rate
            print(f"(b) raw sink         {rate:>12,.0f} events/s ({raw_rows} rows)")

        if "pipeline" not in args.skip or args.e2e:
            use_loopback_for_in_process_ray()
            ray.init(address="local", num_cpus=8, include_dashboard=False,
                     namespace=config.namespace,
                     log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(_REPO)}})
            try:
                _pipeline_phases(settings, args, kafka=kafka, config=config, workload=workload,
                                 ends=ends, out=out)
            finally:
                from cluster.supervisor import stop_pipeline

                stop_pipeline(config)
                ray.shutdown()

    _print_ratios(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _pipeline_phases(settings: Settings, args: argparse.Namespace, *, kafka: KafkaConnection,
                     config: PipelineConfig, workload: Any,
                     ends: dict[int, int], out: dict[str, Any]) -> None:
    topic = config.topics.events
    table = config.snowflake.events_table
    result = run_pipeline(config, ends, args.timeout)
    out["pipeline_events_per_s"] = result.events_per_s
    out["first_row_s"] = round(result.first_row_s, 2)
    print(f"start -> first row   {result.first_row_s:>12.1f} s (start_pipeline called -> the "
          "first batch committed)")
    print(f"(c) pipeline         {result.events_per_s:>12,.0f} events/s "
          f"({result.counted_events} events after all actors were up; wall {result.wall_s:.1f}s"
          " with startup)")
    print("\n".join(result.cpu.lines(result.counted_events)))
    _print_outside(result.outside_s)
    keys = _table_keys(config.snowflake, table, topic)
    distinct = set(keys)
    out.update(accepted=sum(ends.values()), rows=len(keys), dead_lettered=result.dead_lettered,
               lost=len(workload.valid_ids - distinct), duplicated=len(keys) - len(distinct),
               invalid_in_table=len(workload.invalid_ids & distinct))
    print(f"    rows={len(keys)} dead_lettered={result.dead_lettered} lost={out['lost']} "
          f"duplicated={out['duplicated']} invalid_in_table={out['invalid_in_table']}")

    if not args.e2e:
        return
    e2e = generate(WorkloadSpec(events=args.e2e_events, batch_size=args.e2e_batch,
                                invalid_share=0.0, refused_share=0.0, retry_share=0.0,
                                run_id=f"e{uuid.uuid4().hex[:6]}"))
    with _gateway(settings, kafka, topic, config.topics.partitions) as url:
        started = time.perf_counter()
        cpu_before = cpu_snapshot(started)
        accepted = _post_all(url, e2e.batches, args.e2e_concurrency)
        posted_s = time.perf_counter() - started
        new_ends = end_offsets(kafka, topic, config.topics.partitions)
        deadline = time.monotonic() + args.timeout
        watch = _DrainWatch(config)
        try:
            while not watch.reached(new_ends):
                if time.monotonic() > deadline:
                    raise BenchError(f"e2e: committed {watch.committed()} of {new_ends}")
                time.sleep(0.05)
        finally:
            watch.close()
        finished = time.perf_counter()
        # While the gateway still runs; only this bench's processes (others on a shared machine
        # would be counted under the same role names).
        cpu, outside_s = tree_usage_between(cpu_before, cpu_snapshot(finished))
        elapsed = finished - started
    latencies = _latencies_ms(config.snowflake, table, topic, f"{e2e.run_id}-")
    e2e_keys = set(_table_keys(config.snowflake, table, topic))
    out["e2e"] = {"events_per_s": accepted / elapsed, "accept_events_per_s": accepted / posted_s,
                  "p50_ms": _round(_percentile(latencies, 0.5)),
                  "p99_ms": _round(_percentile(latencies, 0.99)),
                  "lost": len(e2e.valid_ids - e2e_keys),
                  "cpu_us_per_event": cpu_us_per_event(cpu.by_role, accepted)}
    out["e2e"]["owned_cpu_us_per_event"] = owned_cpu_us(out["e2e"]["cpu_us_per_event"])
    print(f"e2e HTTP -> row      {out['e2e']['events_per_s']:>12,.0f} events/s "
          f"(accepted {accepted:,} at {accepted / posted_s:,.0f}/s) "
          f"p50 {_ms(out['e2e']['p50_ms'])} p99 {_ms(out['e2e']['p99_ms'])} "
          f"lost {out['e2e']['lost']}")
    print("\n".join(cpu.lines(accepted)))
    _print_outside(outside_s)
    print(f"    owned (gateway + consumers + sinks): "
          f"{out['e2e']['owned_cpu_us_per_event']:.1f} µs per event")


def _print_outside(outside_s: float) -> None:
    if outside_s >= 0.05:
        print(f"    (processes outside this bench used {outside_s:.1f} cpu-s meanwhile: not "
              "counted above; the figures are cleanest on a quiet machine)")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def cpu_us_per_event(by_role: dict[str, float], events: int) -> dict[str, float]:
    """CPU µs per event by role, largest first, rounded to 0.1 µs (roles under 0.05 left out)."""
    per_event = {role: round(secs / events * 1e6, 1) for role, secs in by_role.items()
                 if events and secs / events * 1e6 >= 0.05}
    return dict(sorted(per_event.items(), key=lambda item: -item[1]))


def owned_cpu_us(per_event: dict[str, float]) -> float:
    """The parts this project owns: consumers, sinks and the gateway measured (the largest
    gateway role: uvicorn here, a Serve replica where Serve carries the load)."""
    gateway = max((us for role, us in per_event.items() if role.startswith("gateway (")),
                  default=0.0)
    return round(per_event.get("consumer actors", 0.0) + per_event.get("sink actors", 0.0)
                 + gateway, 1)


def _print_ratios(out: dict[str, Any]) -> None:
    pipe = out["pipeline_events_per_s"]
    if pipe is not None and out["raw_consume_events_per_s"]:
        out["ratio_vs_consume"] = pipe / out["raw_consume_events_per_s"]
        print(f"c/a = {out['ratio_vs_consume']:.3f}")
    if pipe is not None and out["raw_sink_events_per_s"]:
        out["ratio_vs_sink"] = pipe / out["raw_sink_events_per_s"]
        verdict = "OK" if out["ratio_vs_sink"] >= TARGETS["ratio_vs_sink"] else "BELOW TARGET"
        print(f"c/b = {out['ratio_vs_sink']:.3f} (target >= {TARGETS['ratio_vs_sink']}) "
              f"{verdict}")
