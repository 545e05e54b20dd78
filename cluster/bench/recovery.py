"""``eventray bench recovery``: a partition consumer's start on a full retry window.

One run, one topic of two partitions that share one sink (pool size 1):

1. Partition 0 ("A") is filled as a long-running pipeline leaves it: ``--keys`` rows in the
   events table, written by the sink's own transaction (``SnowflakeWriter.write``, the
   pipeline's SQL, 50,000 rows a batch), and ``--dead-letters`` dead letters in its
   dead-letter partition (the consumer's headers), interleaved by offset and all accepted
   within the last hour; the events partition holds small records below the committed offset
   (never read again). Then a first batch to plan: new events, a client retry of the newest
   row and one of the newest dead letter.
2. On a fresh local Ray: the sink, partition 1's consumer ("B", receiving small batches all
   along) and then A's consumer, the real actors. A rebuilds its window (``actors.recovery``)
   and commits its first batch.
3. Printed, and written with ``--json``: A's time from its actor's creation to its first
   committed batch; its rebuild (rows and dead letters read, keys the window holds, seconds);
   its process's peak RSS; B's batches committed while A rebuilt, and the longest gap between
   them; the first batch's decisions. Raw baselines in the same run, in this one process: a
   plain connector fetch of the same rows (one query, all held) and a plain Kafka read of the
   same dead-letter tail, and the ratio of A's rebuild to their sum.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Final

import msgspec

from actors.config import KafkaConnection, PipelineConfig, SnowflakeConfig
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_CONTENT_TYPE,
    HEADER_REQUEST_ID,
    RECORD_CONTENT_TYPE,
    EventCodec,
    PaymentBody,
    PaymentCaptured,
)
from actors.dead_letter import DeadLetter, dead_letter_headers
from actors.rows import SinkBatch, encode_rows, row_from_event
from actors.sink import SnowflakeWriter
from cluster.bench.stack import BenchError, bench_stack, create_topic
from cluster.settings import Settings

log = logging.getLogger(__name__)

_REPO = Path(__file__).resolve().parents[2]
_ROWS_PER_WRITE: Final = 50_000
_SPAN_MS: Final = 3_600_000  # the filled keys were accepted over the last hour
_POLL_S: Final = 0.05
# Above the default rules' max_amount_minor, within the contract: dead-lettered by a rule.
_TOO_MUCH: Final = 10**12
RECOVERING, OTHER = 0, 1  # the partition that restarts, the one sharing its sink


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting a local one")
    parser.add_argument("--snowflake-port", type=int,
                        help="use the emulator on 127.0.0.1:PORT instead of starting one")
    parser.add_argument("--keys", type=int, default=2_000_000,
                        help="rows of the restarting partition in its retry window")
    parser.add_argument("--dead-letters", type=int, default=1_000_000,
                        help="dead letters of the restarting partition in its retry window")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per phase")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")


# -- filling a partition -------------------------------------------------------------------


class Layout(msgspec.Struct, frozen=True):
    """Offsets 0 .. rows + dead letters - 1 of a partition, the dead letters spread evenly
    among the rows; each offset accepted ``_SPAN_MS`` before ``now_ms`` and on."""

    rows: int
    dead_letters: int
    now_ms: int

    @property
    def end(self) -> int:
        return self.rows + self.dead_letters

    def is_dead(self, offset: int) -> bool:
        return (offset + 1) * self.dead_letters // self.end > offset * self.dead_letters // self.end

    def accepted_ms(self, offset: int) -> int:
        return self.now_ms - _SPAN_MS + offset * _SPAN_MS // max(self.end, 1)

    def key(self, offset: int) -> tuple[str, str]:
        return f"acct-{offset % 10_000:05d}", f"w-{offset}"


def _event(layout: Layout, offset: int, *, amount: int = 100) -> PaymentCaptured:
    account, event_id = layout.key(offset)
    return PaymentCaptured(
        event_id=event_id, account_id=account,
        occurred_at=datetime.fromtimestamp(layout.accepted_ms(offset) / 1000, UTC),
        body=PaymentBody(amount_minor=amount, currency="EUR", merchant_id="m-1"))


def fill_records(conn: KafkaConnection, topic: str, partition: int, count: int) -> None:
    """``count`` small records on ``topic``/``partition`` (the offsets below the committed one;
    a consumer never reads them again)."""
    from confluent_kafka import Producer

    producer = Producer({**conn.client_config(), "linger.ms": 50, "batch.size": 1_000_000,
                         "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})
    _produce_all(producer, ((topic, partition, None, b"-", None) for _ in range(count)))


def fill_rows(config: SnowflakeConfig, pipeline: PipelineConfig, topic: str, partition: int,
              layout: Layout) -> None:
    """The layout's rows, written as the sink writes a partition's batches (one owner epoch,
    batches in offset order; the committed offset ends at ``layout.end``)."""
    writer = SnowflakeWriter(config, pipeline.sink)
    try:
        writer.ensure_tables(topic, pipeline.topics.partitions)
        seen = writer.owner_epoch(topic, partition) or 0
        epoch = writer.take_ownership(topic, partition, "bench-recovery-fill", seen)
        for start in range(0, layout.end, _ROWS_PER_WRITE):
            stop = min(layout.end, start + _ROWS_PER_WRITE)
            rows = [row_from_event(_event(layout, o), topic=topic, partition=partition,
                                   offset=o, request_id=None,
                                   accepted_at_ms=layout.accepted_ms(o))
                    for o in range(start, stop) if not layout.is_dead(o)]
            writer.write(SinkBatch(topic=topic, partition=partition, from_offset=start,
                                   to_offset=stop, rows_json=encode_rows(rows),
                                   row_count=len(rows)), epoch)
    finally:
        writer.close()


def fill_dead_letters(conn: KafkaConnection, dlq_topic: str, source_topic: str,
                      partition: int, layout: Layout) -> None:
    """The layout's dead letters on ``dlq_topic``/``partition``, with the consumer's headers."""
    from confluent_kafka import Producer

    codec = EventCodec()
    producer = Producer({**conn.client_config(), "linger.ms": 50, "batch.size": 1_000_000,
                         "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})

    def letters() -> Iterator[tuple[str, int, bytes | None, bytes, Any]]:
        for offset in range(layout.end):
            if not layout.is_dead(offset):
                continue
            event = _event(layout, offset, amount=_TOO_MUCH)
            letter = DeadLetter(
                offset, event.account_id.encode(), codec.encode(event),
                f"amount_above_max: {_TOO_MUCH} > 10000000000",
                ((HEADER_CONTENT_TYPE, RECORD_CONTENT_TYPE.encode()),
                 (HEADER_REQUEST_ID, b"bench-recovery"),
                 (HEADER_ACCEPTED_AT_MS, str(layout.accepted_ms(offset)).encode())))
            yield (dlq_topic, partition, letter.key, letter.value,
                   dead_letter_headers(letter, source_topic, partition))

    _produce_all(producer, letters())


def produce_events(conn: KafkaConnection, topic: str, partition: int,
                   events: list[PaymentCaptured], accepted_ms: int) -> None:
    """``events`` on ``topic``/``partition`` as the gateway produces them."""
    from confluent_kafka import Producer

    codec = EventCodec()
    headers = [(HEADER_CONTENT_TYPE, RECORD_CONTENT_TYPE.encode()),
               (HEADER_REQUEST_ID, uuid.uuid4().hex.encode()),
               (HEADER_ACCEPTED_AT_MS, str(accepted_ms).encode())]
    producer = Producer({**conn.client_config(), "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5})
    _produce_all(producer, ((topic, partition, e.account_id.encode(), codec.encode(e), headers)
                            for e in events))


def _produce_all(producer: Any,
                 records: Iterator[tuple[str, int, bytes | None, bytes, Any]]) -> None:
    failures: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    for n, (topic, partition, key, value, headers) in enumerate(records):
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=partition,
                                 headers=headers, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        if n % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(300)
    if left or failures:
        raise BenchError(f"produce: {left} records unsent, {len(failures)} failed "
                         f"(first: {failures[:1]})")


# -- raw baselines ---------------------------------------------------------------------------


class RawFetch(msgspec.Struct, frozen=True):
    rows: int
    seconds: float
    held_bytes: int  # resident memory this process grew by while holding them


def raw_fetch(config: SnowflakeConfig, topic: str, partition: int, end: int) -> RawFetch:
    """The partition's rows below ``end`` (key, replay, offset, accept time) in one plain
    query, all held."""
    import snowflake.connector

    conn = snowflake.connector.connect(**config.connect_kwargs(), paramstyle="qmark")
    try:
        before = _rss_bytes()
        started = time.perf_counter()
        cursor = conn.cursor()
        cursor.execute(f"SELECT ACCOUNT_ID, EVENT_ID, REPLAY_OF, KAFKA_OFFSET, "
                       f"COALESCE(ACCEPTED_AT, WRITTEN_AT) FROM {config.events_table} "
                       "WHERE KAFKA_TOPIC = ? AND KAFKA_PARTITION = ? AND KAFKA_OFFSET < ? "
                       "ORDER BY KAFKA_OFFSET", (topic, partition, end))
        rows = cursor.fetchall()
        seconds = time.perf_counter() - started
        held = _rss_bytes() - before
        count = len(rows)
        del rows
        return RawFetch(rows=count, seconds=seconds, held_bytes=held)
    finally:
        conn.close()


def raw_tail(conn: KafkaConnection, dlq_topic: str, partition: int,
             since_ms: int) -> tuple[int, float]:
    """(records, seconds): a plain read_committed read of the tail from ``since_ms`` on."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({**conn.client_config(), "group.id": f"bench-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True})
    try:
        started = time.perf_counter()
        (found,) = consumer.offsets_for_times([TopicPartition(dlq_topic, partition, since_ms)],
                                              timeout=30)
        consumer.assign([TopicPartition(dlq_topic, partition, found.offset)])
        count = 0
        while True:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                err = msg.error()
                if err is None:
                    count += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    return count, time.perf_counter() - started
                else:
                    raise BenchError(f"raw tail read: {err.str()}")
    finally:
        consumer.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the run ---------------------------------------------------------------------------------


def _pipeline_config(settings: Settings, kafka: KafkaConnection, snowflake: SnowflakeConfig,
                     topic: str, tag: str) -> PipelineConfig:
    """The settings' pipeline (so what a config file or EVENTRAY_PIPELINE__* set is what is
    measured) on the bench's broker, warehouse, topic and tables; one sink for both
    partitions; every offset row kept (B's commits are counted from them)."""
    base = settings.pipeline_config()
    return msgspec.structs.replace(
        base, kafka=kafka,
        topics=msgspec.structs.replace(base.topics, events=topic, dead_letter=f"{topic}.dlq",
                                       partitions=2, replication_factor=1,
                                       min_insync_replicas=1, durability="local"),
        snowflake=msgspec.structs.replace(snowflake, events_table=f"REC_{tag}",
                                          offsets_table=f"REC_OFFSETS_{tag}"),
        consumer=msgspec.structs.replace(base.consumer, group_id=f"bench-{tag.lower()}",
                                         num_cpus=0.1),
        sink=msgspec.structs.replace(base.sink, pool_size=1, num_cpus=0.1,
                                     prune_offsets_every=0),
        namespace=f"eventray-bench-{tag.lower()}",
    )


def _wait(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout_s:g}s")
        time.sleep(_POLL_S)


def _trickle(conn: KafkaConnection, topic: str, stop: threading.Event) -> None:
    """Small batches for partition B every 100 ms until ``stop``."""
    layout = Layout(rows=0, dead_letters=0, now_ms=int(time.time() * 1000))
    n = 0
    while not stop.wait(0.1):
        events = [msgspec.structs.replace(_event(layout, 0), event_id=f"b-{n + i}")
                  for i in range(20)]
        produce_events(conn, topic, OTHER, events, int(time.time() * 1000))
        n += 20


def _commits_between(config: SnowflakeConfig, topic: str, partition: int, start_ms: int,
                     end_ms: int) -> list[int]:
    """Epoch ms of the partition's offset rows written in [start_ms, end_ms]."""
    import snowflake.connector

    conn = snowflake.connector.connect(**config.connect_kwargs(), paramstyle="qmark")
    try:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT FLOOR(DATE_PART(EPOCH_MICROSECOND, WRITTEN_AT) / 1000) "
            f'FROM {config.offsets_table} WHERE TOPIC = ? AND "PARTITION" = ? '
            "AND WRITTEN_AT >= TO_TIMESTAMP_TZ(?, 3) AND WRITTEN_AT <= TO_TIMESTAMP_TZ(?, 3) "
            "ORDER BY 1", (topic, partition, start_ms, end_ms))
        return [int(row[0]) for row in cursor.fetchall()]
    finally:
        conn.close()


def run(settings: Settings, args: argparse.Namespace) -> int:
    import ray

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tag = uuid.uuid4().hex[:6].upper()
    topic = f"bench-recovery-{tag.lower()}"
    with bench_stack(settings, bootstrap=args.bootstrap, snowflake_port=args.snowflake_port,
                     name="recovery") as (kafka, snowflake):
        config = _pipeline_config(settings, kafka, snowflake, topic, tag)
        create_topic(kafka, topic, 2)
        create_topic(kafka, config.topics.dead_letter, 2)
        layout = Layout(rows=args.keys, dead_letters=args.dead_letters,
                        now_ms=int(time.time() * 1000))
        started = time.perf_counter()
        fill_records(kafka, topic, RECOVERING, layout.end)
        fill_dead_letters(kafka, config.topics.dead_letter, topic, RECOVERING, layout)
        fill_rows(config.snowflake, config, topic, RECOVERING, layout)
        print(f"partition {RECOVERING}: {layout.rows:,} rows and {layout.dead_letters:,} dead "
              f"letters in its retry window, committed offset {layout.end:,} (filled in "
              f"{time.perf_counter() - started:.0f}s)", flush=True)
        out: dict[str, Any] = {"keys": layout.rows, "dead_letters": layout.dead_letters}
        _first_batch(kafka, topic, layout)

        from cluster.local.ray_head import use_loopback_for_in_process_ray

        use_loopback_for_in_process_ray()
        ray.init(address="local", num_cpus=8, include_dashboard=False,
                 namespace=config.namespace, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(_REPO)}})
        try:
            _restart(config, layout, out, args.timeout)
        finally:
            ray.shutdown()

        fetched = raw_fetch(config.snowflake, topic, RECOVERING, layout.end)
        since_ms = layout.now_ms - _SPAN_MS - 1  # all of the tail, as the consumer reads it
        records, tail_s = raw_tail(kafka, config.topics.dead_letter, RECOVERING, since_ms)
        out.update(raw_fetch_rows=fetched.rows, raw_fetch_s=fetched.seconds,
                   raw_fetch_held_bytes=fetched.held_bytes, raw_tail_records=records,
                   raw_tail_s=tail_s,
                   rebuild_vs_raw=out["rebuild_s"] / (fetched.seconds + tail_s))
    _print(out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _first_batch(kafka: KafkaConnection, topic: str, layout: Layout) -> None:
    """New events for the restarting partition, with a client retry of its newest row and of
    its newest dead letter: the rebuilt window must drop both."""
    fresh = Layout(rows=0, dead_letters=0, now_ms=layout.now_ms)
    events = [msgspec.structs.replace(_event(fresh, 0), event_id=f"n-{i}") for i in range(100)]
    for dead in (False, True):
        offset = _newest(layout, dead=dead)
        if offset is not None:
            events.append(_event(layout, offset, amount=_TOO_MUCH if dead else 100))
    produce_events(kafka, topic, RECOVERING, events, int(time.time() * 1000))


def _newest(layout: Layout, *, dead: bool) -> int | None:
    """The highest offset holding a dead letter (``dead``) or a row."""
    for offset in range(layout.end - 1, -1, -1):
        if layout.is_dead(offset) == dead:
            return offset
    return None


def _restart(config: PipelineConfig, layout: Layout, out: dict[str, Any],
             timeout_s: float) -> None:
    """The sink, B's consumer, then A's: measured until A's first batch committed."""
    import ray

    from actors.consumer import ConsumerStatus, consumer_name, partition_consumer_actor
    from actors.sink import SnowflakeSinkActor

    topic = config.topics.events
    sink: Any = SnowflakeSinkActor.options(name="sink:0", namespace=config.namespace,
                                           num_cpus=0.1).remote(config.snowflake, config.sink, 0)
    ray.get(sink.ensure_tables.remote(topic, 2), timeout=timeout_s)
    actor = partition_consumer_actor()

    def start(partition: int) -> Any:
        return actor.options(name=consumer_name(topic, partition), namespace=config.namespace,
                             num_cpus=0.1, max_concurrency=4).remote(config, partition)

    def status(handle: Any) -> ConsumerStatus:
        answer: ConsumerStatus = ray.get(handle.status.remote(), timeout=timeout_s)
        return answer

    other = start(OTHER)
    stop = threading.Event()
    trickle = threading.Thread(target=_trickle, args=(config.kafka, topic, stop), daemon=True)
    trickle.start()
    try:
        _wait("partition 1's first commit", lambda: (status(other).committed_offset or 0) > 0,
              timeout_s)
        began, began_ms = time.perf_counter(), time.time_ns() // 1_000_000
        restarting = start(RECOVERING)
        _wait("partition 0's first commit",
              lambda: (status(restarting).committed_offset or 0) > layout.end, timeout_s)
        first_commit_s = time.perf_counter() - began
    finally:
        stop.set()
        trickle.join()
    done = status(restarting)
    recovery = done.recovery
    if recovery is None or not recovery.finished:
        raise BenchError("partition 0 committed without a finished window rebuild")
    end_ms = recovery.started_at_ms + int(recovery.seconds * 1000)
    commits = _commits_between(config.snowflake, topic, OTHER, recovery.started_at_ms, end_ms)
    edges = [recovery.started_at_ms, *commits, end_ms]
    out.update(time_to_first_commit_s=first_commit_s,
               rebuild_began_s=(recovery.started_at_ms - began_ms) / 1000,
               rebuild_s=recovery.seconds,
               rows_read=recovery.rows_read, dead_letters_read=recovery.dead_letters_read,
               window_keys=recovery.window_keys, evicted_early=recovery.evicted_early,
               peak_rss_bytes=recovery.peak_rss_bytes,
               other_partition_commits_during_rebuild=len(commits),
               other_partition_longest_gap_s=max(b - a for a, b in pairwise(edges)) / 1000,
               first_batch={"rows_written": done.rows_written,
                            "duplicates": done.duplicates})


def _print(out: dict[str, Any]) -> None:
    mb = 2**20
    print(f"(a) raw warehouse fetch   {out['raw_fetch_rows']:>10,} rows in "
          f"{out['raw_fetch_s']:6.1f}s, holding them: +{out['raw_fetch_held_bytes'] / mb:,.0f} MB")
    print(f"(b) raw dead-letter read  {out['raw_tail_records']:>10,} records in "
          f"{out['raw_tail_s']:6.1f}s")
    print(f"(c) consumer start -> first committed batch {out['time_to_first_commit_s']:.1f}s "
          f"(the rebuild began after {out['rebuild_began_s']:.1f}s and took "
          f"{out['rebuild_s']:.1f}s): {out['rows_read']:,} rows and "
          f"{out['dead_letters_read']:,} dead letters read, {out['window_keys']:,} keys held "
          f"({out['evicted_early']:,} older ones past dedup_max_keys forgotten); "
          f"peak RSS {out['peak_rss_bytes'] / mb:,.0f} MB")
    print(f"    rebuild / (a + b) = {out['rebuild_vs_raw']:.2f}")
    print(f"partition 1 (same sink) committed {out['other_partition_commits_during_rebuild']} "
          f"batches during the rebuild, longest gap {out['other_partition_longest_gap_s']:.2f}s")
    print(f"first batch: {out['first_batch']['rows_written']} rows written, "
          f"{out['first_batch']['duplicates']} retries dropped")
