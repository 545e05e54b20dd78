"""The exactly-once sink against the real connector and the fakesnow server.

Each test writes its own topic name, so the shared session tables never mix tests.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import ray
import snowflake.connector

from actors import sink as sink_module
from actors.config import SinkConfig, SnowflakeConfig
from actors.contract import PaymentBody, PaymentCaptured
from actors.exceptions import OffsetGapError, SinkError
from actors.rows import FlushResult, SinkBatch, encode_rows, row_from_event
from actors.sink import SnowflakeSink, SnowflakeSinkActor, SnowflakeWriter
from actors.warehouse import WarehouseSql
from cluster.local.snowflake_emulator import LocalSnowflake

pytestmark = pytest.mark.integration

SINK = SinkConfig(retry_attempts=3, retry_backoff_s=0.1)
WHEN = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
BASE_MS = 1_772_366_400_000


def new_topic() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def make_batch(topic: str, partition: int, from_offset: int, to_offset: int,
               offsets: list[int] | None = None, *, accepted_at_ms: int | None = BASE_MS,
               request_id: str | None = "req") -> SinkBatch:
    """Rows for ``offsets`` (default: every offset of the range) of ``[from, to)``."""
    chosen = list(range(from_offset, to_offset)) if offsets is None else offsets
    rows = [
        row_from_event(
            PaymentCaptured(event_id=f"{topic}-{partition}-{o}", account_id=f"acct-{o % 7}",
                            occurred_at=WHEN,
                            body=PaymentBody(amount_minor=100 + o, currency="EUR",
                                             merchant_id="m-1")),
            topic=topic, partition=partition, offset=o,
            request_id=None if request_id is None else f"{request_id}-{o}",
            accepted_at_ms=None if accepted_at_ms is None else accepted_at_ms + o,
        )
        for o in chosen
    ]
    return SinkBatch(topic=topic, partition=partition, from_offset=from_offset,
                     to_offset=to_offset, rows_json=encode_rows(rows), row_count=len(rows))


# The epoch each writer took per (topic, partition): a test writer is one consumer life.
_EPOCHS: weakref.WeakKeyDictionary[SnowflakeWriter, dict[tuple[str, int], int]] = (
    weakref.WeakKeyDictionary())


def write(writer: SnowflakeWriter, batch: SinkBatch) -> FlushResult:
    """``writer.write`` as the owner of the batch's partition (taken on the first write)."""
    owned = _EPOCHS.setdefault(writer, {})
    key = (batch.topic, batch.partition)
    if key not in owned:
        seen = writer.owner_epoch(*key) or 0
        owned[key] = writer.take_ownership(*key, f"test-{id(writer)}", seen)
    return writer.write(batch, owned[key])


@pytest.fixture(scope="module")
def tables_config(snowflake_config: SnowflakeConfig) -> SnowflakeConfig:
    """The session database with this module's own table names, created once."""
    config = msgspec.structs.replace(snowflake_config, events_table="SINK_TEST_EVENTS",
                                     offsets_table="SINK_TEST_OFFSETS")
    writer = SnowflakeWriter(config, SINK)
    writer.ensure_tables()
    writer.ensure_tables()  # idempotent
    writer.close()
    return config


@pytest.fixture
def writer(tables_config: SnowflakeConfig) -> Iterator[SnowflakeWriter]:
    w = SnowflakeWriter(tables_config, SINK)
    yield w
    w.close()


def select(config: SnowflakeConfig, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Read with a separate connection (what another reader of the warehouse sees)."""
    conn = snowflake.connector.connect(**config.connect_kwargs(), paramstyle="qmark")
    try:
        cur = conn.cursor()
        cur.execute(sql, params)
        return list(cur.fetchall())
    finally:
        conn.close()


def offsets_of(config: SnowflakeConfig, topic: str, partition: int = 0) -> list[int]:
    rows = select(config, f"SELECT KAFKA_OFFSET FROM {config.events_table} "
                          "WHERE KAFKA_TOPIC = ? AND KAFKA_PARTITION = ? ORDER BY KAFKA_OFFSET",
                  (topic, partition))
    return [int(r[0]) for r in rows]


def test_batch_writes_exactly_its_rows_and_advances_the_offset(
        writer: SnowflakeWriter, tables_config: SnowflakeConfig) -> None:
    topic = new_topic()
    assert writer.committed_offset(topic, 0) is None
    result = write(writer, make_batch(topic, 0, 0, 5))
    assert (result.rows_written, result.rows_skipped, result.committed_offset) == (5, 0, 5)
    assert writer.committed_offset(topic, 0) == 5
    assert offsets_of(tables_config, topic) == [0, 1, 2, 3, 4]
    assert writer.count_rows(topic) == 5
    assert writer.committed_offset(topic, 1) is None  # other partitions untouched


def test_same_batch_again_writes_nothing(
        writer: SnowflakeWriter, tables_config: SnowflakeConfig) -> None:
    topic = new_topic()
    batch = make_batch(topic, 0, 0, 5)
    write(writer, batch)
    again = write(writer, batch)
    assert (again.rows_written, again.rows_skipped, again.committed_offset) == (0, 5, 5)
    assert offsets_of(tables_config, topic) == [0, 1, 2, 3, 4]
    # A batch entirely below the committed offset is also an idempotent no-op.
    older = write(writer, make_batch(topic, 0, 1, 3))
    assert (older.rows_written, older.rows_skipped, older.committed_offset) == (0, 2, 5)
    assert writer.count_rows(topic) == 5


def test_overlapping_retry_writes_only_the_new_rows(
        writer: SnowflakeWriter, tables_config: SnowflakeConfig) -> None:
    topic = new_topic()
    write(writer, make_batch(topic, 0, 0, 5))
    result = write(writer, make_batch(topic, 0, 3, 8))
    assert (result.rows_written, result.rows_skipped, result.committed_offset) == (3, 2, 8)
    assert offsets_of(tables_config, topic) == list(range(8))


def test_gap_raises_and_writes_nothing(
        writer: SnowflakeWriter, tables_config: SnowflakeConfig) -> None:
    topic = new_topic()
    write(writer, make_batch(topic, 0, 0, 5))
    with pytest.raises(OffsetGapError, match="committed_offset=5 from_offset=6"):
        write(writer, make_batch(topic, 0, 6, 9))
    assert writer.committed_offset(topic, 0) == 5
    assert offsets_of(tables_config, topic) == [0, 1, 2, 3, 4]
    # The writer is still usable: the continuing batch goes through.
    assert write(writer, make_batch(topic, 0, 5, 9)).rows_written == 4


def test_empty_batch_advances_the_offset(
        writer: SnowflakeWriter, tables_config: SnowflakeConfig) -> None:
    topic = new_topic()
    write(writer, make_batch(topic, 0, 0, 3))
    empty = write(writer, make_batch(topic, 0, 3, 10, offsets=[]))  # all invalid or duplicates
    assert (empty.rows_written, empty.rows_skipped, empty.committed_offset) == (0, 0, 10)
    assert writer.committed_offset(topic, 0) == 10
    assert offsets_of(tables_config, topic) == [0, 1, 2]
    # Rows with holes (some records dead-lettered) keep exactly the given offsets.
    write(writer, make_batch(topic, 0, 10, 15, offsets=[10, 12, 14]))
    assert offsets_of(tables_config, topic) == [0, 1, 2, 10, 12, 14]


def test_first_batch_may_start_anywhere(writer: SnowflakeWriter) -> None:
    topic = new_topic()
    result = write(writer, make_batch(topic, 2, 1000, 1004))
    assert (result.rows_written, result.committed_offset) == (4, 1004)
    with pytest.raises(OffsetGapError):
        write(writer, make_batch(topic, 2, 1005, 1006))


def test_inverted_range_is_refused(writer: SnowflakeWriter) -> None:
    with pytest.raises(SinkError, match="inverted"):
        write(writer, make_batch(new_topic(), 0, 5, 4, offsets=[]))


def test_two_writers_on_different_partitions_commit_in_parallel(
        tables_config: SnowflakeConfig) -> None:
    topic = new_topic()
    errors: list[BaseException] = []

    def run(partition: int) -> None:
        w = SnowflakeWriter(tables_config, SINK)
        try:
            for start in range(0, 200, 20):
                write(w, make_batch(topic, partition, start, start + 20))
        except BaseException as exc:
            errors.append(exc)
        finally:
            w.close()

    threads = [threading.Thread(target=run, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    reader = SnowflakeWriter(tables_config, SINK)
    try:
        assert reader.committed_offset(topic, 0) == 200
        assert reader.committed_offset(topic, 1) == 200
        assert reader.count_rows(topic) == 400
    finally:
        reader.close()
    assert offsets_of(tables_config, topic, 1) == list(range(200))


def test_recent_keys_by_accept_time(writer: SnowflakeWriter) -> None:
    topic = new_topic()
    write(writer, make_batch(topic, 0, 0, 4, accepted_at_ms=BASE_MS))  # accepted BASE_MS + o
    keys = writer.recent_keys(topic, 0, BASE_MS + 2)
    # Each with its offset and its exact accept time: a rebuilt window decides on them.
    assert sorted((k.offset, k.accepted_at_ms, k.key, k.written) for k in keys) == [
        (2, BASE_MS + 2, ("acct-2", f"{topic}-0-2"), True),
        (3, BASE_MS + 3, ("acct-3", f"{topic}-0-3"), True)]
    assert len(writer.recent_keys(topic, 0, BASE_MS)) == 4
    assert writer.recent_keys(topic, 1, 0) == []
    assert writer.recent_keys(topic, 0, BASE_MS + 10_000) == []


def test_recent_keys_limit_keeps_the_newest_first(writer: SnowflakeWriter) -> None:
    topic = new_topic()
    write(writer, make_batch(topic, 0, 0, 5, accepted_at_ms=BASE_MS))
    assert [k.key for k in writer.recent_keys(topic, 0, BASE_MS, limit=2)] == [
        ("acct-4", f"{topic}-0-4"), ("acct-3", f"{topic}-0-3")]
    assert [k.key[1] for k in writer.recent_keys(topic, 0, BASE_MS)] == [
        f"{topic}-0-{offset}" for offset in (4, 3, 2, 1, 0)]


def test_recent_keys_falls_back_to_written_at_without_accept_time(
        writer: SnowflakeWriter) -> None:
    topic = new_topic()
    before_ms = int(time.time() * 1000) - 60_000
    write(writer, make_batch(topic, 0, 0, 2, accepted_at_ms=None))
    assert len(writer.recent_keys(topic, 0, before_ms)) == 2
    assert writer.recent_keys(topic, 0, int(time.time() * 1000) + 3_600_000) == []


def test_lineage_columns(writer: SnowflakeWriter, tables_config: SnowflakeConfig) -> None:
    topic = new_topic()
    started = datetime.now(UTC) - timedelta(seconds=5)
    batch = make_batch(topic, 3, 40, 42)
    write(writer, batch)
    null_batch = make_batch(topic, 3, 42, 43, accepted_at_ms=None, request_id=None)
    write(writer, null_batch)
    rows = select(
        tables_config,
        "SELECT EVENT_ID, ACCOUNT_ID, EVENT_TYPE, OCCURRED_AT, SCHEMA_VERSION, BODY, "
        "KAFKA_TOPIC, KAFKA_PARTITION, KAFKA_OFFSET, REQUEST_ID, ACCEPTED_AT, WRITTEN_AT "
        f"FROM {tables_config.events_table} WHERE KAFKA_TOPIC = ? ORDER BY KAFKA_OFFSET",
        (topic,))
    assert len(rows) == 3
    first = rows[0]
    assert first[:3] == (f"{topic}-3-40", "acct-5", "payment.captured")
    assert first[3] == WHEN  # TIMESTAMP_TZ round-trips to the microsecond
    assert first[4] == 1
    assert msgspec.json.decode(first[5]) == {"amount_minor": 140, "currency": "EUR",
                                             "merchant_id": "m-1", "description": None}
    assert first[6:10] == (topic, 3, 40, "req-40")
    assert first[10] == datetime.fromtimestamp((BASE_MS + 40) / 1000, UTC)
    assert first[11] >= started
    last = rows[2]
    assert last[8:10] == (42, None)  # no request id: NULL
    # No accept time: NULL (asked in SQL: the emulator returns a NULL timestamp as the epoch).
    nulls = select(tables_config,
                   f"SELECT KAFKA_OFFSET, ACCEPTED_AT IS NULL FROM {tables_config.events_table} "
                   "WHERE KAFKA_TOPIC = ? ORDER BY KAFKA_OFFSET", (topic,))
    assert [tuple(r) for r in nulls] == [(40, False), (41, False), (42, True)]


def test_failed_transaction_commits_neither_rows_nor_offset(
        tables_config: SnowflakeConfig) -> None:
    """The insert fails after BEGIN (no events table): the offset row must not land."""
    broken = msgspec.structs.replace(tables_config, events_table="SINK_TEST_MISSING")
    w = SnowflakeWriter(broken, SINK)
    topic = new_topic()
    try:
        with pytest.raises(SinkError, match="write failed"):
            write(w, make_batch(topic, 0, 0, 3))
        assert w.committed_offset(topic, 0) is None
        # An empty batch needs no events table: the same writer (reconnected) still works.
        assert write(w, make_batch(topic, 0, 0, 3, offsets=[])).committed_offset == 3
    finally:
        w.close()


def test_an_abandoned_open_transaction_does_not_block_or_leak(
        writer: SnowflakeWriter, tables_config: SnowflakeConfig) -> None:
    """A sink killed mid-transaction leaves it open on the server; the next writer of the same
    partition must neither wait for it nor see its uncommitted rows and offset."""
    topic = new_topic()
    write(writer, make_batch(topic, 0, 0, 5))
    zombie = snowflake.connector.connect(**tables_config.connect_kwargs(), paramstyle="qmark")
    try:
        cur = zombie.cursor()
        cur.execute("BEGIN")
        cur.execute(f'INSERT INTO {tables_config.offsets_table} (TOPIC, "PARTITION", '
                    "NEXT_OFFSET, WRITTEN_AT) SELECT ?, 0, 99, CURRENT_TIMESTAMP()", (topic,))
        cur.execute(f"INSERT INTO {tables_config.events_table} SELECT * FROM "
                    f"{tables_config.events_table} WHERE KAFKA_TOPIC = ?", (topic,))
        # ... and the zombie never commits. The live writer carries on:
        result = write(writer, make_batch(topic, 0, 5, 9))
        assert (result.rows_written, result.committed_offset) == (4, 9)
        assert writer.committed_offset(topic, 0) == 9
        assert offsets_of(tables_config, topic) == list(range(9))
    finally:
        zombie.close()
    assert writer.committed_offset(topic, 0) == 9
    assert writer.count_rows(topic) == 9


def test_reconnects_after_the_emulator_restarts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A restart forgets every session; the writer reconnects and retries the transaction."""
    server = LocalSnowflake(tmp_path / "sf", port=0)
    server.start(timeout=90)
    try:
        server.ensure_database("RESTART", "PUBLIC")
        w = SnowflakeWriter(server.snowflake_config(database="RESTART"), SINK)
        w.ensure_tables()
        topic = new_topic()
        write(w, make_batch(topic, 0, 0, 3))
        server.restart(timeout=90)
        with caplog.at_level(logging.WARNING, logger="actors.sink"):
            result = write(w, make_batch(topic, 0, 3, 6))
        assert "transient Snowflake error, retrying what=write" in caplog.text
        assert (result.rows_written, result.committed_offset) == (3, 6)
        assert w.count_rows(topic) == 6
        w.close()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    ray.init(address="local", num_cpus=8, include_dashboard=False,
             namespace=f"sink-{uuid.uuid4().hex[:6]}",
             log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_sink_actor_survives_a_kill_and_continues(
        ray_session: None, tables_config: SnowflakeConfig) -> None:
    topic = new_topic()
    actor = SnowflakeSinkActor.options(num_cpus=0.1, max_restarts=2).remote(
        tables_config, SINK)
    assert ray.get(actor.ping.remote()) == ray.get_runtime_context().get_node_id()
    first = make_batch(topic, 0, 0, 50)
    epoch = ray.get(actor.take_ownership.remote(topic, 0, "test-life", 0))
    assert ray.get(actor.write.remote(first, epoch)).committed_offset == 50

    ray.kill(actor, no_restart=False)
    # ray.kill is asynchronous: a call may still reach the old process, and calls fail while
    # the actor restarts (also a call made after one that reached the old process). The
    # restarted one has a new connection and no memory: the warehouse is the state, and a
    # write is idempotent, so retrying the replay is safe.
    deadline = time.monotonic() + 60
    while True:
        try:
            assert ray.get(actor.committed_offset.remote(topic, 0), timeout=10) == 50
            replay = ray.get(actor.write.remote(first, epoch), timeout=30)
            break
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert (replay.rows_written, replay.rows_skipped) == (0, 50)
    second = ray.get(actor.write.remote(make_batch(topic, 0, 50, 80), epoch))
    assert (second.rows_written, second.committed_offset) == (30, 80)
    assert ray.get(actor.count_rows.remote(topic)) == 80
    ray.kill(actor, no_restart=True)


def test_sink_body_is_a_plain_class(tables_config: SnowflakeConfig) -> None:
    """The actor body works without Ray (same calls as the writer)."""
    sink = SnowflakeSink(tables_config, SINK)
    topic = new_topic()
    try:
        epoch = sink.take_ownership(topic, 0, "test-life", 0)
        assert sink.write(make_batch(topic, 0, 0, 2), epoch).rows_written == 2
        assert sink.committed_offset(topic, 0) == 2
        assert sink.count_rows(topic) == 2
    finally:
        sink.close()


# -- pruning superseded offset rows --------------------------------------------------------------


def offset_rows(config: SnowflakeConfig, topic: str, partition: int) -> list[int]:
    """The partition's NEXT_OFFSET rows in the offsets table (all of them, not just the max)."""
    rows = select(config, f"SELECT NEXT_OFFSET FROM {config.offsets_table} "
                          'WHERE TOPIC = ? AND "PARTITION" = ? ORDER BY NEXT_OFFSET',
                  (topic, partition))
    return [int(r[0]) for r in rows]


def write_batches(writer: SnowflakeWriter, topic: str, partition: int, count: int,
                  size: int = 2) -> None:
    """``count`` consecutive batches of ``size`` offsets each, from offset 0."""
    for start in range(0, count * size, size):
        write(writer, make_batch(topic, partition, start, start + size))


def test_offset_rows_are_pruned_every_n_writes_of_a_partition(
        tables_config: SnowflakeConfig, caplog: pytest.LogCaptureFixture) -> None:
    topic, other_topic = new_topic(), new_topic()
    pruning = SnowflakeWriter(tables_config, msgspec.structs.replace(SINK, prune_offsets_every=3))
    keeping = SnowflakeWriter(tables_config, msgspec.structs.replace(SINK, prune_offsets_every=0))
    try:
        # Rows the pruning writer must never touch: another partition of the topic, and the
        # same partition number of another topic.
        write_batches(keeping, topic, 1, 4)
        write_batches(keeping, other_topic, 0, 4)
        with caplog.at_level(logging.DEBUG, logger="actors.sink"):
            # Interleaved: partition 2 gets 2 writes, fewer than the interval. A shared counter
            # would have pruned it.
            for start in range(0, 20, 2):  # 10 writes of partition 0: offsets 2, 4, ... 20
                write(pruning, make_batch(topic, 0, start, start + 2))
                if start in (4, 8):  # partition 2: offsets 4 and 6
                    write(pruning, make_batch(topic, 2, start // 2, start // 2 + 2))
        # Pruned after writes 3, 6, 9 (keeping only 18), then write 10 appended 20.
        assert offset_rows(tables_config, topic, 0) == [18, 20]
        assert pruning.committed_offset(topic, 0) == 20
        assert offsets_of(tables_config, topic, 0) == list(range(20))  # events untouched
        assert offset_rows(tables_config, topic, 2) == [4, 6]
        assert offset_rows(tables_config, topic, 1) == [2, 4, 6, 8]
        assert offset_rows(tables_config, other_topic, 0) == [2, 4, 6, 8]
        assert caplog.text.count(f"offset rows pruned topic={topic} partition=0") == 3
        assert "pruning offset rows failed" not in caplog.text
        # The next writes continue from the pruned table; an idempotent replay still counts
        # as a write and prunes with the committed offset it read (the max row stays).
        write(pruning, make_batch(topic, 0, 20, 22))
        assert write(pruning, make_batch(topic, 0, 18, 20)).rows_written == 0
        assert offset_rows(tables_config, topic, 0) == [22]
        assert pruning.committed_offset(topic, 0) == 22
    finally:
        pruning.close()
        keeping.close()


def test_offset_rows_are_all_kept_when_pruning_is_disabled(
        tables_config: SnowflakeConfig) -> None:
    topic = new_topic()
    w = SnowflakeWriter(tables_config, msgspec.structs.replace(SINK, prune_offsets_every=0))
    try:
        write_batches(w, topic, 0, 7)
        assert offset_rows(tables_config, topic, 0) == [2, 4, 6, 8, 10, 12, 14]
        assert w.committed_offset(topic, 0) == 14
    finally:
        w.close()


def test_every_write_prunes_with_an_interval_of_one(tables_config: SnowflakeConfig) -> None:
    topic = new_topic()
    w = SnowflakeWriter(tables_config, msgspec.structs.replace(SINK, prune_offsets_every=1))
    try:
        for count in range(1, 5):
            write(w, make_batch(topic, 0, 2 * (count - 1), 2 * count))
            assert offset_rows(tables_config, topic, 0) == [2 * count]
        assert w.committed_offset(topic, 0) == 8
    finally:
        w.close()


def test_a_failing_prune_does_not_fail_the_write(
        tables_config: SnowflakeConfig, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The prune statement hits a table that does not exist (the write's own statements are
    untouched): every write still commits, the failure is logged with its partition, and the
    prune is attempted again at the next interval."""
    real_sql = sink_module.warehouse_sql

    def prune_a_missing_table(config: SnowflakeConfig) -> WarehouseSql:
        sql = real_sql(config)
        return dataclasses.replace(sql, prune_offsets=sql.prune_offsets.replace(
            f"FROM {sql.offsets_table} ", "FROM SINK_TEST_NO_SUCH_OFFSETS ", 1))

    monkeypatch.setattr(sink_module, "warehouse_sql", prune_a_missing_table)
    topic = new_topic()
    w = SnowflakeWriter(tables_config, msgspec.structs.replace(SINK, prune_offsets_every=2))
    try:
        with caplog.at_level(logging.WARNING, logger="actors.sink"):
            results = [write(w, make_batch(topic, 0, start, start + 2)) for start in (0, 2, 4, 6)]
        assert [(r.rows_written, r.committed_offset) for r in results] == [
            (2, 2), (2, 4), (2, 6), (2, 8)]
        failures = [r.getMessage() for r in caplog.records
                    if r.getMessage().startswith("pruning offset rows failed")]
        assert len(failures) == 2  # after writes 2 and 4: retried at the next interval
        assert f"topic={topic} partition=0 committed_offset=4" in failures[0]
        assert f"topic={topic} partition=0 committed_offset=8" in failures[1]
        assert "SINK_TEST_NO_SUCH_OFFSETS" in failures[0]
        assert "transient" not in caplog.text  # no write needed a retry
        # Nothing was pruned, everything was committed, and the writer carries on.
        assert offset_rows(tables_config, topic, 0) == [2, 4, 6, 8]
        assert write(w, make_batch(topic, 0, 8, 10)).committed_offset == 10
        assert w.committed_offset(topic, 0) == 10
        assert offsets_of(tables_config, topic) == list(range(10))
    finally:
        w.close()


def test_prune_beside_an_abandoned_open_transaction(
        tables_config: SnowflakeConfig, caplog: pytest.LogCaptureFixture) -> None:
    """A sink killed mid-write leaves an open transaction that inserted an offset row: the
    live writer's prunes neither block on it nor fail, and never see its row."""
    topic = new_topic()
    w = SnowflakeWriter(tables_config, msgspec.structs.replace(SINK, prune_offsets_every=1))
    zombie = snowflake.connector.connect(**tables_config.connect_kwargs(), paramstyle="qmark")
    try:
        write(w, make_batch(topic, 0, 0, 2))
        cur = zombie.cursor()
        cur.execute("BEGIN")
        cur.execute(f"SELECT MAX(NEXT_OFFSET) FROM {tables_config.offsets_table} "
                    'WHERE TOPIC = ? AND "PARTITION" = 0', (topic,))
        cur.execute(f'INSERT INTO {tables_config.offsets_table} (TOPIC, "PARTITION", '
                    "NEXT_OFFSET, WRITTEN_AT) SELECT ?, 0, 1, CURRENT_TIMESTAMP()", (topic,))
        with caplog.at_level(logging.WARNING, logger="actors.sink"):
            write(w, make_batch(topic, 0, 2, 4))
            write(w, make_batch(topic, 0, 4, 6))
        # A prune blocked by the zombie would fail after the connector's retries and warn.
        assert "pruning offset rows failed" not in caplog.text
        assert offset_rows(tables_config, topic, 0) == [6]
    finally:
        zombie.close()
    assert offset_rows(tables_config, topic, 0) == [6]
    assert w.committed_offset(topic, 0) == 6
    w.close()
