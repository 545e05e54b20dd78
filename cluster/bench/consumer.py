"""``eventray bench consumer``: where a partition consumer's CPU goes, per event, without Ray.

One process, a Kafka broker (its own in a temp dir unless ``--bootstrap``), one topic of
``--partitions`` partitions filled as the gateway fills it: requests of ``--request-events``
events sharing one header list (content type, request id, accept time, schema version), keyed
by account with librdkafka's ``murmur2_random`` partitioner, lz4-compressed.

Then, partition by partition, the consumer's steady-state code as a ``PartitionConsumer`` runs
it (``actors.consumer``) but without Ray and without a sink: a Kafka consumer configured as the
actor's, ``consume()`` sized by the ``Accumulator``, ``RecordReader``, the partition-count look
(``MoveGuard.observe``), ``plan_batch`` with the settings' retry window (a fresh directory for a
disk one), the window's ``persist`` and the group-offset commit once the batch "committed".

Printed per event, each stage's CPU time on the consumer's thread (µs; ``thread_time``, so
waiting for records and the load of a shared machine do not count):

* consume, read records (``RecordReader``), look (partition count), plan (``plan_batch``),
  persist (the window's write), commit (the group offset);
* inside plan, re-run on the same batch after it was planned: decode + validate, rows
  (``row_from_event``), encode (``encode_rows``); ``window + rest`` is plan minus those three;
* the process's CPU per event over the partition's run (librdkafka's threads included: fetch
  and decompression), as ``bench pipeline`` counts a consumer actor's;

against a raw confluent-kafka baseline in the same run: ``consume()`` in batches of the same
size with only ``error()`` looked at, and again reading every field the reader reads.
The process imports what a consumer actor holds (Ray included), so the cyclic GC walks a heap
of an actor's size; ``--gc`` sets it as the actor does (``actors.steady_gc``, the default),
leaves Python's default or turns it off, and the GC's own time per event is printed.
``--repeat N`` runs the consumer path N times (fresh windows and groups) and keeps the run with
the least CPU: on a shared machine the least disturbed one. ``--profile PATH`` writes a cProfile
of the consumer path (pstats). ``--json PATH`` writes the figures (µs per event by stage).

Not measured here: what Ray adds in an actor (sending the batch to the sink, ``ray.wait``,
``status()`` calls) and the window's rebuild at start; ``bench pipeline`` counts those.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from actors.batch_plan import _decode_and_check, plan_batch
from actors.batching import Accumulator
from actors.config import KafkaConnection, PipelineConfig
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_CONTENT_TYPE,
    HEADER_REQUEST_ID,
    HEADER_SCHEMA_VERSION,
    RECORD_CONTENT_TYPE,
    SCHEMA_VERSION,
    EventCodec,
)
from actors.dead_letter import NOTHING_RECOVERED
from actors.partition_moves import MoveGuard, SinkMovesIO
from actors.records import RecordReader, SourceRecord
from actors.retry_window import DedupWindow
from actors.rows import encode_rows, row_from_event
from actors.steady_gc import settle
from actors.window_store import DiskWindow
from cluster.bench.stack import BenchError, create_topic, end_offsets, gateway_like_producer
from cluster.bench.workload import WorkloadSpec, generate
from cluster.settings import Settings

STAGES: Final = ("consume", "read", "look", "plan", "persist", "commit")
PLAN_PARTS: Final = ("decode_validate", "rows", "encode")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting a local one")
    parser.add_argument("--events", type=int, default=200_000, help="events in the topic")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--request-events", type=int, default=1000,
                        help="events per produced request (one header list each)")
    parser.add_argument("--invalid-share", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int,
                        help="events per batch; default: pipeline.consumer.batch_max_events")
    parser.add_argument("--window", choices=["disk", "memory"],
                        help="the retry window; default: pipeline.consumer.window_store")
    parser.add_argument("--gc", choices=["actor", "default", "off"], default="actor",
                        help="the cyclic GC in the consumer path: as a consumer actor sets it "
                        "(actors.steady_gc), Python's default, or off")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the consumer path this many times (fresh windows), keep the "
                        "run with the least CPU")
    parser.add_argument("--profile", metavar="PATH",
                        help="cProfile the consumer path into PATH (pstats)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")


@contextmanager
def _kafka(settings: Settings, bootstrap: str | None) -> Iterator[KafkaConnection]:
    if bootstrap:
        yield KafkaConnection(bootstrap_servers=bootstrap)
        return
    from cluster.local.kafka_broker import LocalKafka

    work = Path(tempfile.mkdtemp(prefix="eventray-bench-consumer-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        broker = LocalKafka(work / "kafka", port=0, controller_port=0,
                            version=settings.local.kafka_version,
                            cache_dir=settings.cache_path(), heap="1g")
        stack.callback(broker.stop)
        broker.start(timeout=120)
        yield broker.connection()


def _produce(conn: KafkaConnection, topic: str, batches: list[list[Any]]) -> int:
    """Each batch as one gateway request: one header list, one accept time, keyed records."""
    codec = EventCodec()
    producer = gateway_like_producer(conn)
    failures: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    count = 0
    for batch in batches:
        headers: list[tuple[str, str | bytes | None]] = [
            (HEADER_CONTENT_TYPE, RECORD_CONTENT_TYPE.encode()),
            (HEADER_REQUEST_ID, uuid.uuid4().hex.encode()),
            (HEADER_ACCEPTED_AT_MS, str(time.time_ns() // 1_000_000).encode()),
            (HEADER_SCHEMA_VERSION, str(SCHEMA_VERSION).encode())]
        for event in batch:
            producer.produce(topic, codec.encode(event), event.account_id.encode(),
                             headers=headers, on_delivery=delivered)
            count += 1
        producer.poll(0)
    left = producer.flush(120)
    if left or failures:
        raise BenchError(f"produce: {left} records unsent, {len(failures)} failed")
    return count


def _consumer(conn: KafkaConnection, topic: str, partition: int, *, actor: bool) -> Any:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    conf = {**conn.client_config(), "group.id": f"bench-consumer-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False}
    if actor:  # as PartitionConsumer._session configures it
        conf.update({"enable.auto.offset.store": False, "auto.offset.reset": "earliest",
                     "isolation.level": "read_committed"})
    consumer = Consumer(conf)
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    return consumer


def _raw(conn: KafkaConnection, topic: str, partition: int, end: int, batch: int, *,
         fields: bool, timeout_s: float) -> tuple[float, float]:
    """(thread CPU µs, process CPU µs) per event for consume() alone, or reading every field too."""
    consumer = _consumer(conn, topic, partition, actor=True)
    try:
        count, spent = 0, 0.0
        cpu0 = time.process_time()
        deadline = time.monotonic() + timeout_s
        while count < end:
            t0 = time.thread_time()
            msgs = consumer.consume(num_messages=batch, timeout=0.2)
            for msg in msgs:
                if msg.error() is None:
                    count += 1
                    if fields:
                        msg.headers(), msg.key(), msg.value(), msg.offset()
            spent += time.thread_time() - t0
            if time.monotonic() > deadline:
                raise BenchError(f"raw consume of partition {partition}: {count}/{end}")
        return spent / count * 1e6, (time.process_time() - cpu0) / count * 1e6
    finally:
        consumer.close()


class _Timer:
    def __init__(self) -> None:
        self.spent: dict[str, float] = dict.fromkeys((*STAGES, *PLAN_PARTS), 0.0)
        self.events = 0
        self.batches = 0
        self.consume_calls = 0
        self.cpu_s = 0.0
        self.rerun_cpu_s = 0.0  # the plan's parts timed again: not the consumer's
        self.gc: _GcClock | None = None

    @property
    def process_cpu_us(self) -> float:
        return (self.cpu_s - self.rerun_cpu_s) / self.events * 1e6

    @property
    def thread_us(self) -> float:
        return sum(self.spent[stage] for stage in STAGES) / self.events * 1e6


class _Partition:
    """One partition through the consumer's steady-state code (see the module)."""

    def __init__(self, conn: KafkaConnection, config: PipelineConfig, *, topic: str,
                 partition: int, window_dir: Path) -> None:
        cfg = config.consumer
        self.config, self.topic, self.partition = config, topic, partition
        self.consumer = _consumer(conn, topic, partition, actor=True)
        self.window: DedupWindow
        if cfg.window_store == "disk":
            self.window = DiskWindow(cfg.dedup_window_s, cfg.dedup_max_keys,
                                     path=window_dir / f"p{partition}",
                                     identity=f"bench/{partition}",
                                     ram_bytes=cfg.window_ram_mb * 2**20)
        else:
            self.window = DedupWindow(cfg.dedup_window_s, None)
        io = SinkMovesIO(topic, partition, call_sink=lambda _call: [], consumer=self.consumer,
                         kafka=conn, dead_letter_topic=f"{topic}.dlq")
        self.moves = MoveGuard(topic, partition, cfg.dedup_window_s, io)
        self.codec = EventCodec()
        self.reader = RecordReader()
        self.acc = Accumulator(cfg)
        self.next_from: int | None = None

    def run(self, end: int, timer: _Timer, *, timeout_s: float) -> None:
        cfg = self.config.consumer
        spent, clock, acc = timer.spent, time.thread_time, self.acc
        cpu0 = time.process_time()
        deadline = time.monotonic() + timeout_s
        try:
            while (self.next_from or 0) < end:
                if time.monotonic() > deadline:
                    raise BenchError(f"consumer path of partition {self.partition}: "
                                     f"{self.next_from}/{end}")
                t0 = clock()
                msgs = self.consumer.consume(num_messages=max(acc.room, 1),
                                             timeout=cfg.poll_timeout_s)
                t1 = clock()
                records, nbytes, errors = self.reader.read(msgs)
                acc.add(records, time.monotonic(), nbytes)
                spent["consume"] += t1 - t0
                spent["read"] += clock() - t1
                timer.consume_calls += 1
                if errors and any(m.error().fatal() for m in errors):
                    raise BenchError(f"consume error: {errors[0].error()}")
                if acc.full(time.monotonic(), drained=not records):
                    self._batch(acc.take(), timer)
        finally:
            timer.cpu_s += time.process_time() - cpu0
            self.consumer.close()
            self.window.close()

    def _batch(self, batch: list[SourceRecord], timer: _Timer) -> None:
        from confluent_kafka import TopicPartition

        spent, clock = timer.spent, time.thread_time
        now = datetime.now(UTC)
        t0 = clock()
        self.moves.observe(self.next_from)
        t1 = clock()
        plan = plan_batch(batch, topic=self.topic, partition=self.partition,
                          next_from=self.next_from, codec=self.codec, rules=self.config.rules,
                          now=now, window=self.window,
                          forwards=self.moves.forward_targets(batch))
        t2 = clock()
        self.next_from = plan.batch.to_offset
        self.window.persist(self.next_from, 1)  # as after the sink's commit
        t3 = clock()
        self.consumer.commit(offsets=[TopicPartition(self.topic, self.partition,
                                                     self.next_from)], asynchronous=False)
        t4 = clock()
        spent["look"] += t1 - t0
        spent["plan"] += t2 - t1
        spent["persist"] += t3 - t2
        spent["commit"] += t4 - t3
        timer.events += len(batch)
        timer.batches += 1
        c0 = time.process_time()
        self._plan_parts(batch, now, spent)
        timer.rerun_cpu_s += time.process_time() - c0

    def _plan_parts(self, batch: list[SourceRecord], now: datetime,
                    spent: dict[str, float]) -> None:
        """Decode + validate, rows and encode of ``batch`` again, timed on their own."""
        clock = time.thread_time
        t0 = clock()
        decoded, events, verdicts, _ = _decode_and_check(
            batch, codec=self.codec, rules=self.config.rules, now=now,
            recovered=NOTHING_RECOVERED)
        t1 = clock()
        rows = [row_from_event(event, topic=self.topic, partition=self.partition,
                               offset=record.offset, request_id=record.request_id,
                               accepted_at_ms=record.accepted_at_ms, replay_of=record.replay_of)
                for record, event, reason in zip(decoded, events, verdicts, strict=True)
                if reason is None]
        t2 = clock()
        encode_rows(rows)
        t3 = clock()
        spent["decode_validate"] += t1 - t0
        spent["rows"] += t2 - t1
        spent["encode"] += t3 - t2


def _actor_heap() -> int:
    """Import what a consumer actor's process holds (Ray, the sink's Snowflake connector, the
    metrics), so the cyclic GC walks a heap of an actor's size; the objects tracked."""
    for module in ("ray", "ray.util.metrics", "actors.consumer", "actors.sink",
                   "actors.metrics", "snowflake.connector"):
        importlib.import_module(module)
    return len(gc.get_objects())


def run(settings: Settings, args: argparse.Namespace) -> int:
    heap = _actor_heap()
    base = settings.pipeline_config()
    consumer_cfg = base.consumer
    if args.batch_size:
        consumer_cfg = msgspec.structs.replace(consumer_cfg, batch_max_events=args.batch_size)
    if args.window:
        consumer_cfg = msgspec.structs.replace(consumer_cfg, window_store=args.window)
    config = msgspec.structs.replace(base, consumer=consumer_cfg)
    batch = consumer_cfg.batch_max_events
    topic = f"bench-consumer-{uuid.uuid4().hex[:6]}"
    workload = generate(WorkloadSpec(events=args.events, batch_size=args.request_events,
                                     invalid_share=args.invalid_share, refused_share=0.0,
                                     retry_share=0.0, run_id=f"c{uuid.uuid4().hex[:6]}"))
    timeout_s = 600.0
    with _kafka(settings, args.bootstrap) as conn, \
            tempfile.TemporaryDirectory(prefix="eventray-bench-consumer-window-") as wdir:
        create_topic(conn, topic, args.partitions)
        produced = _produce(conn, topic, workload.batches)
        ends = end_offsets(conn, topic, args.partitions)
        print(f"topic {topic}: {produced:,} events in {args.partitions} partitions, requests of "
              f"{args.request_events}; batches of {batch:,}, window {consumer_cfg.window_store}, "
              f"gc {args.gc} ({heap:,} objects tracked)", flush=True)
        _set_gc(args.gc, batch)
        raw_thread = raw_cpu = fields_thread = fields_cpu = 0.0
        for p, end in ends.items():
            wall, cpu = _raw(conn, topic, p, end, batch, fields=False, timeout_s=timeout_s)
            raw_thread, raw_cpu = raw_thread + wall * end, raw_cpu + cpu * end
            wall, cpu = _raw(conn, topic, p, end, batch, fields=True, timeout_s=timeout_s)
            fields_thread, fields_cpu = fields_thread + wall * end, fields_cpu + cpu * end
        total = sum(ends.values())
        timers: list[_Timer] = []
        for attempt in range(max(args.repeat, 1)):
            timer = _Timer()
            gc_clock = timer.gc = _GcClock()
            profiler = cProfile.Profile() if args.profile and attempt == 0 else None
            if profiler is not None:
                profiler.enable()
            for p, end in ends.items():
                _Partition(conn, config, topic=topic, partition=p,
                           window_dir=Path(wdir) / str(attempt)).run(end, timer,
                                                                      timeout_s=timeout_s)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            timers.append(timer)
            gc.callbacks.remove(gc_clock._callback)
        timer = min(timers, key=lambda t: t.thread_us)
    per = {stage: secs / timer.events * 1e6 for stage, secs in timer.spent.items()}
    per["window_rest"] = per["plan"] - sum(per[part] for part in PLAN_PARTS)
    stages_total = sum(per[stage] for stage in STAGES)
    out = {
        "events": timer.events, "batches": timer.batches, "consume_calls": timer.consume_calls,
        "window": consumer_cfg.window_store, "batch_max_events": batch,
        "raw_consume_us": raw_thread / total, "raw_consume_cpu_us": raw_cpu / total,
        "raw_fields_us": fields_thread / total, "raw_fields_cpu_us": fields_cpu / total,
        "stages_us": {k: round(v, 3) for k, v in per.items()},
        "stages_total_us": stages_total,
        "process_cpu_us": timer.process_cpu_us, "gc": args.gc,
        "runs_thread_us": [round(t.thread_us, 2) for t in timers],
        "gc_us": 0.0 if timer.gc is None else timer.gc.seconds / timer.events * 1e6,
        "gc_collections": None if timer.gc is None else timer.gc.collections,
    }
    _print(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


class _GcClock:
    """Time spent in cyclic GC collections (``gc.callbacks``), on any thread."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._started
            self.collections[info["generation"]] += 1


def _set_gc(mode: str, batch_max_events: int) -> None:
    if mode == "off":
        gc.disable()
    elif mode == "actor":
        settle(batch_max_events)


def _print(out: dict[str, Any]) -> None:
    s = out["stages_us"]
    print(f"raw consume()                      {out['raw_consume_us']:6.2f} µs/event "
          f"(process CPU {out['raw_consume_cpu_us']:.2f})")
    print(f"raw consume() + every field        {out['raw_fields_us']:6.2f} µs/event "
          f"(process CPU {out['raw_fields_cpu_us']:.2f})")
    print(f"consumer path ({out['events']:,} events, {out['batches']} batches, "
          f"{out['consume_calls']} consume calls), µs per event on its thread:")
    for stage in STAGES:
        print(f"  {stage:<32}{s[stage]:6.2f}")
        if stage == "plan":
            for part in (*PLAN_PARTS, "window_rest"):
                print(f"    {part:<30}{s[part]:6.2f}")
    print(f"  {'total':<32}{out['stages_total_us']:6.2f}")
    print(f"process CPU per event (librdkafka threads included): {out['process_cpu_us']:.2f} µs")
    print(f"  of which cyclic GC: {out['gc_us']:.2f} µs (collections by generation: "
          f"{out['gc_collections']})")
    if len(out["runs_thread_us"]) > 1:
        print(f"(the best of {len(out['runs_thread_us'])} runs: {out['runs_thread_us']} µs)")
