"""Fencing in the warehouse: two live writers of one partition never both commit.

Real connector, real fakesnow server. The writers pause at a step of their transaction (a
``WriteHook``), so each test forces the interleaving it is about; the emulator refuses a
conflicting statement at once (000625) where Snowflake would make it wait, and the writer
retries, so a writer shut out by another shows up as a second attempt ("begin" again).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import pytest
import snowflake.connector
from test_sink import make_batch, offset_rows, offsets_of, select

from actors.config import SinkConfig, SnowflakeConfig
from actors.exceptions import FencedError
from actors.rows import SinkBatch
from actors.sink import SnowflakeWriter
from actors.warehouse import owner_sql
from cluster.local.snowflake_emulator import LocalSnowflake

pytestmark = pytest.mark.integration

# Enough attempts for a writer shut out by a paused one to still be trying when it resumes.
PATIENT = SinkConfig(retry_attempts=40, retry_backoff_s=0.05, prune_offsets_every=0)
WAIT_S = 60.0


def new_topic() -> str:
    return f"f-{uuid.uuid4().hex[:10]}"


class Steps:
    """A ``WriteHook``: records the steps one writer reaches (in a timeline shared with the
    other writer) and holds the writer at ``hold_at`` until ``release`` is set."""

    def __init__(self, name: str, timeline: list[str], hold_at: str | None = None) -> None:
        self.name = name
        self.hold_at = hold_at
        self.release = threading.Event()
        self._timeline = timeline
        self._changed = threading.Condition()
        self._counts: dict[str, int] = {}

    def __call__(self, step: str) -> None:
        with self._changed:
            self._timeline.append(f"{self.name}:{step}")
            self._counts[step] = self._counts.get(step, 0) + 1
            self._changed.notify_all()
        if step == self.hold_at and not self.release.wait(WAIT_S):
            raise TimeoutError(f"{self.name} held at {step} for {WAIT_S:g}s")

    def count(self, step: str) -> int:
        with self._changed:
            return self._counts.get(step, 0)

    def wait_until(self, done: Callable[[], bool]) -> bool:
        with self._changed:
            return self._changed.wait_for(done, WAIT_S)


@pytest.fixture(scope="module")
def config(snowflake_config: SnowflakeConfig) -> SnowflakeConfig:
    config = msgspec.structs.replace(snowflake_config, events_table="FENCE_TEST_EVENTS",
                                     offsets_table="FENCE_TEST_OFFSETS",
                                     owners_table="FENCE_TEST_OWNERS")
    writer = SnowflakeWriter(config, PATIENT)
    writer.ensure_tables()
    writer.close()
    return config


@pytest.fixture
def writers(config: SnowflakeConfig) -> Iterator[Callable[..., SnowflakeWriter]]:
    """``writers(hook=None, cfg=None, statements=None)``: a writer with its own Snowflake
    session, closed after the test."""
    made: list[SnowflakeWriter] = []

    def make(hook: Steps | None = None, cfg: SnowflakeConfig | None = None,
             statements: Statements | None = None) -> SnowflakeWriter:
        writer = SnowflakeWriter(cfg or config, PATIENT, hook, statements)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close()


def owner_rows(config: SnowflakeConfig, topic: str, partition: int = 0) -> list[tuple[int, Any]]:
    table = owner_sql(config, topic, partition).owners_table
    rows = select(config, f"SELECT EPOCH, OWNER FROM {table} "
                          'WHERE TOPIC = ? AND "PARTITION" = ? ORDER BY EPOCH', (topic, partition))
    return [(int(epoch), owner) for epoch, owner in rows]


def test_two_sessions_of_one_owner_paused_between_read_and_commit_land_one_batch(
        config: SnowflakeConfig, writers: Callable[..., SnowflakeWriter]) -> None:
    """The same batch from two sessions of the same owner (a retry on a new session after a
    COMMIT timed out in the client but completed on the server, or a call still in flight on
    the sink of an earlier pool size): the first holds between its read of the committed offset
    and its commit. Before the owner row, the second read the same offset and both committed."""
    topic, timeline = new_topic(), list[str]()
    first, second = Steps("a", timeline, hold_at="offset_read"), Steps("b", timeline)
    a, b = writers(first), writers(second)
    epoch = a.take_ownership(topic, 0, "life-1", 0)
    batch = make_batch(topic, 0, 0, 50)
    with ThreadPoolExecutor(2) as pool:
        a_done = pool.submit(a.write, batch, epoch)
        assert first.wait_until(lambda: first.count("offset_read") == 1)
        b_done = pool.submit(b.write, batch, epoch)
        # b is shut out while a holds the row (a second attempt), or, unfenced, reads the
        # committed offset a read: either way it has run into a by then.
        assert second.wait_until(
            lambda: second.count("begin") >= 2 or second.count("offset_read") >= 1)
        first.release.set()
        a_result, b_result = a_done.result(WAIT_S), b_done.result(WAIT_S)
    assert offsets_of(config, topic) == list(range(50))  # exactly one batch landed
    assert offset_rows(config, topic, 0) == [50]
    assert (a_result.rows_written, b_result.rows_written) == (50, 0)
    assert b_result.committed_offset == 50
    # b read the committed offset only after a committed.
    assert timeline.index("b:offset_read") > timeline.index("a:before_commit")


def test_an_old_owner_writing_after_a_new_owner_took_the_partition_commits_nothing(
        config: SnowflakeConfig, writers: Callable[..., SnowflakeWriter]) -> None:
    topic = new_topic()
    old, new = writers(), writers()
    old_epoch = old.take_ownership(topic, 0, "life-old", old.owner_epoch(topic, 0) or 0)
    assert old.write(make_batch(topic, 0, 0, 5), old_epoch).committed_offset == 5
    new_epoch = new.take_ownership(topic, 0, "life-new", new.owner_epoch(topic, 0) or 0)
    assert new_epoch > old_epoch
    assert new.owner_epoch(topic, 0) == new_epoch

    # The old owner's next batch continues exactly where the partition stands, yet it is
    # refused, like an empty one; so is taking the partition back with the epoch it saw.
    with pytest.raises(FencedError, match=f"owned by epoch {new_epoch} .*not {old_epoch}"):
        old.write(make_batch(topic, 0, 5, 9), old_epoch)
    with pytest.raises(FencedError):
        old.write(make_batch(topic, 0, 5, 9, offsets=[]), old_epoch)
    with pytest.raises(FencedError, match="was taken by epoch"):
        old.take_ownership(topic, 0, "life-old", old_epoch)
    assert offsets_of(config, topic) == [0, 1, 2, 3, 4]
    assert offset_rows(config, topic, 0) == [5]

    assert new.write(make_batch(topic, 0, 5, 9), new_epoch).rows_written == 4
    assert offsets_of(config, topic) == list(range(9))
    assert owner_rows(config, topic) == [(new_epoch, "life-new")]


def test_a_take_waits_for_the_write_in_flight_and_fences_the_next(
        config: SnowflakeConfig, writers: Callable[..., SnowflakeWriter]) -> None:
    """A new owner takes the partition while the old one's write is between its read and its
    commit: that write (made while it was the owner) lands whole, the take follows it, and the
    old owner's next write is refused."""
    topic, timeline = new_topic(), list[str]()
    old_steps, new_steps = Steps("old", timeline, hold_at="offset_read"), Steps("new", timeline)
    old, new = writers(old_steps), writers(new_steps)
    old_epoch = old.take_ownership(topic, 0, "life-old", 0)
    with ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(old.write, make_batch(topic, 0, 0, 20), old_epoch)
        assert old_steps.wait_until(lambda: old_steps.count("offset_read") == 1)
        taken = pool.submit(new.take_ownership, topic, 0, "life-new", old_epoch)
        assert new_steps.wait_until(lambda: new_steps.count("owner_row") >= 2)  # shut out
        old_steps.release.set()
        assert in_flight.result(WAIT_S).rows_written == 20
        new_epoch = taken.result(WAIT_S)
    assert new_epoch == old_epoch + 1
    assert timeline.index("new:owner_locked") > timeline.index("old:before_commit")
    with pytest.raises(FencedError):
        old.write(make_batch(topic, 0, 20, 30), old_epoch)
    assert offsets_of(config, topic) == list(range(20))
    assert new.write(make_batch(topic, 0, 20, 30), new_epoch).rows_written == 10


def test_first_takes_of_a_partition_with_duplicate_owner_rows(
        config: SnowflakeConfig, writers: Callable[..., SnowflakeWriter]) -> None:
    """Two first INSERTs of the owner row may both land (nothing enforces a unique key): the
    take removes the extra row under its lock, and a late one (epoch 0) matches no write."""
    topic = new_topic()
    owners = owner_sql(config, topic, 0)
    insert_placeholder = (f'INSERT INTO {owners.owners_table} (TOPIC, "PARTITION", EPOCH, '
                          "UPDATED_AT) SELECT ?, 0, 0, CURRENT_TIMESTAMP()")
    conn = snowflake.connector.connect(**config.connect_kwargs(), paramstyle="qmark")
    try:
        conn.cursor().execute(owners.create)
        conn.cursor().execute(insert_placeholder, (topic,))
        conn.cursor().execute(insert_placeholder, (topic,))
        a, b = writers(), writers()
        # Both lives saw no owner; the first take wins, the second is refused.
        epoch = a.take_ownership(topic, 0, "life-a", 0)
        assert epoch == 1
        assert a.take_ownership(topic, 0, "life-a", 0) == epoch  # a retry: the same epoch
        with pytest.raises(FencedError):
            b.take_ownership(topic, 0, "life-b", 0)
        assert owner_rows(config, topic) == [(1, "life-a")]
        conn.cursor().execute(insert_placeholder, (topic,))  # a straggler commits late
        assert a.write(make_batch(topic, 0, 0, 3), epoch).rows_written == 3
        assert b.take_ownership(topic, 0, "life-b", 1) == 2
        assert owner_rows(config, topic) == [(2, "life-b")]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def quick_abort_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSnowflake]:
    """An emulator of its own that aborts a transaction idle for 2 s (Snowflake: 5 minutes)."""
    server = LocalSnowflake(tmp_path_factory.mktemp("quick-abort"), port=0,
                            idle_transaction_abort_s=2.0)
    server.start(timeout=90)
    try:
        server.ensure_database("FENCE", "PUBLIC")
        yield server
    finally:
        server.stop()


def test_a_transaction_aborted_midway_inserts_nothing_on_its_own(
        quick_abort_server: LocalSnowflake, writers: Callable[..., SnowflakeWriter],
        tmp_path: Path) -> None:
    """A writer stops between its read and its inserts (a zombie: SIGSTOP, a long GC) for
    longer than the warehouse lets an idle transaction block others: its transaction is
    aborted, the other session of the owner writes the batch, and when the first resumes its
    remaining statements run on their own. They must insert nothing."""
    config = quick_abort_server.snowflake_config(database="FENCE")
    setup = writers(cfg=config)
    setup.ensure_tables()
    topic, timeline = new_topic(), list[str]()
    first, second = Steps("a", timeline, hold_at="offset_read"), Steps("b", timeline)
    a, b = writers(first, config), writers(second, config)
    epoch = a.take_ownership(topic, 0, "life-1", 0)
    batch: SinkBatch = make_batch(topic, 0, 0, 40)
    with ThreadPoolExecutor(2) as pool:
        a_done = pool.submit(a.write, batch, epoch)
        assert first.wait_until(lambda: first.count("offset_read") == 1)
        b_result = pool.submit(b.write, batch, epoch).result(WAIT_S)  # after a's abort
        first.release.set()
        a_result = a_done.result(WAIT_S)
    assert offsets_of(config, topic) == list(range(40))
    assert (b_result.rows_written, a_result.rows_written) == (40, 0)
    assert offset_rows(config, topic, 0) == [40]
    # a's first attempt found its transaction gone and started again (then skipped it all).
    assert first.count("begin") == 2


class Statements:
    """A ``StatementLog``: every statement one writer sends, in order."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, sql: str) -> None:
        self.sent.append(" ".join(sql.split()))

    def transactions(self) -> list[list[str]]:
        """The statements sent inside each transaction, BEGIN to COMMIT/ROLLBACK excluded."""
        found: list[list[str]] = []
        current: list[str] | None = None
        for sql in self.sent:
            if sql == "BEGIN":
                current = []
            elif sql in ("COMMIT", "ROLLBACK"):
                assert current is not None, f"{sql} outside a transaction"
                found.append(current)
                current = None
            elif current is not None:
                current.append(sql)
        assert current is None, "a transaction left open"
        return found


def updated_tables(statements: list[str]) -> set[str]:
    """The tables the UPDATE statements among ``statements`` lock."""
    return {m.group(1) for sql in statements if (m := re.match(r"UPDATE (\S+) ", sql))}


def table_names(config: SnowflakeConfig, like: str) -> set[str]:
    rows = select(config, "SELECT TABLE_NAME FROM INFORMATION_SCHEMA.TABLES "
                          "WHERE TABLE_NAME LIKE ?", (like,))
    return {str(r[0]) for r in rows}


def test_writers_of_different_partitions_lock_different_tables_and_both_commit(
        config: SnowflakeConfig, writers: Callable[..., SnowflakeWriter]) -> None:
    """Snowflake's UPDATE lock covers a whole table: had the partitions' fence UPDATEs the same
    owners table, each partition's write transaction would wait for every other's (the
    emulator locks rows, so it cannot show the wait: the test checks the tables). Both writers
    hold their fence lock at once, then both commit, neither shut out."""
    topic, timeline = new_topic(), list[str]()
    steps = {p: Steps(f"w{p}", timeline, hold_at="owner_updated") for p in (0, 1)}
    sent = {p: Statements() for p in (0, 1)}
    made = {p: writers(steps[p], statements=sent[p]) for p in (0, 1)}
    epochs = {p: made[p].take_ownership(topic, p, f"life-{p}", 0) for p in (0, 1)}
    with ThreadPoolExecutor(2) as pool:
        done = {p: pool.submit(made[p].write, make_batch(topic, p, 0, 30), epochs[p])
                for p in (0, 1)}
        for p in (0, 1):  # both hold their fence UPDATE's lock at the same time
            assert steps[p].wait_until(lambda p=p: steps[p].count("owner_updated") == 1)
        for p in (0, 1):
            steps[p].release.set()
        results = {p: done[p].result(WAIT_S) for p in (0, 1)}
    for p in (0, 1):
        assert results[p].rows_written == 30
        assert steps[p].count("begin") == 1  # never shut out by the other partition
        assert offsets_of(config, topic, p) == list(range(30))
    writes = {p: sent[p].transactions()[-1] for p in (0, 1)}
    locked = {p: updated_tables(writes[p]) for p in (0, 1)}
    assert locked[0] == {owner_sql(config, topic, 0).owners_table}
    assert locked[1] == {owner_sql(config, topic, 1).owners_table}
    assert locked[0].isdisjoint(locked[1])
    # The fence UPDATE is the write transaction's first statement.
    assert all(writes[p][0].startswith(f"UPDATE {owner_sql(config, topic, p).owners_table} ")
               for p in (0, 1))


def test_a_partition_added_online_gets_its_owners_table_outside_any_transaction(
        config: SnowflakeConfig, writers: Callable[..., SnowflakeWriter]) -> None:
    """``ensure_tables`` creates the owners tables of the partitions known then; a partition
    added later gets its table from its first take. The CREATE (DDL, which commits an open
    transaction in Snowflake) runs on its own, never between a BEGIN and its end."""
    topic = new_topic()
    names = [owner_sql(config, topic, p).owners_table for p in range(3)]
    starting = writers()
    starting.ensure_tables(topic, 2)
    assert table_names(config, f"{config.owners_table}_%") >= set(names[:2])
    assert names[2] not in table_names(config, f"{config.owners_table}_%")

    sent = Statements()
    added = writers(statements=sent)
    epoch = added.take_ownership(topic, 2, "life-2", added.owner_epoch(topic, 2) or 0)
    assert added.write(make_batch(topic, 2, 0, 4), epoch).rows_written == 4
    assert names[2] in table_names(config, f"{config.owners_table}_%")
    assert owner_rows(config, topic, 2) == [(epoch, "life-2")]
    ddl = [i for i, sql in enumerate(sent.sent) if sql.startswith(("CREATE", "ALTER"))]
    assert ddl and all(names[2] in sent.sent[i] for i in ddl)
    assert max(ddl) < sent.sent.index("BEGIN")  # before the first transaction
    assert all(not sql.startswith(("CREATE", "ALTER", "DROP"))
               for transaction in sent.transactions() for sql in transaction)


# What the single owners table of earlier versions looked like, and their fence statement.
LEGACY_OWNERS = """CREATE TABLE IF NOT EXISTS {table} (
    TOPIC VARCHAR NOT NULL,
    "PARTITION" NUMBER(10, 0) NOT NULL,
    EPOCH NUMBER(38, 0) NOT NULL,
    OWNER VARCHAR,
    WRITE_TOKEN VARCHAR,
    UPDATED_AT TIMESTAMP_TZ NOT NULL
)"""
LEGACY_FENCE = ("UPDATE {table} SET WRITE_TOKEN = ?, UPDATED_AT = CURRENT_TIMESTAMP() "
                'WHERE TOPIC = ? AND "PARTITION" = ? AND EPOCH = ?')


@pytest.fixture
def legacy(config: SnowflakeConfig) -> Iterator[tuple[SnowflakeConfig, Any]]:
    """A config whose owners table exists in the earlier versions' single-table form, and an
    autocommit session on it standing for a sink of such a version."""
    legacy_config = msgspec.structs.replace(
        config, owners_table=f"FENCE_LEGACY_{uuid.uuid4().hex[:6].upper()}")
    conn = snowflake.connector.connect(**legacy_config.connect_kwargs(), paramstyle="qmark",
                                       autocommit=True)
    try:
        conn.cursor().execute(LEGACY_OWNERS.format(table=legacy_config.owners_table))
        yield legacy_config, conn
    finally:
        conn.close()


def legacy_owner(conn: Any, config: SnowflakeConfig, topic: str, epoch: int) -> None:
    conn.cursor().execute(
        f'INSERT INTO {config.owners_table} (TOPIC, "PARTITION", EPOCH, OWNER, UPDATED_AT) '
        "SELECT ?, 0, ?, 'life-of-an-earlier-version', CURRENT_TIMESTAMP()", (topic, epoch))


def legacy_fence(conn: Any, config: SnowflakeConfig, topic: str, epoch: int) -> int:
    """An earlier version's first write statement: the owner rows it updated (0: fenced)."""
    cursor = conn.cursor()
    cursor.execute(LEGACY_FENCE.format(table=config.owners_table), ("t", topic, 0, epoch))
    return int(cursor.rowcount)


def test_a_partition_owned_in_the_single_owners_table_continues_from_its_epoch(
        legacy: tuple[SnowflakeConfig, Any], writers: Callable[..., SnowflakeWriter]) -> None:
    """The first take by this version continues from the epoch an earlier version left, and
    moves it out of the single table: a life of that version still running matches no owner
    row there at its next write, so it is fenced."""
    config, conn = legacy
    topic = new_topic()
    legacy_owner(conn, config, topic, 7)
    new = writers(cfg=config)
    assert new.owner_epoch(topic, 0) == 7
    assert new.take_ownership(topic, 0, "life-new", 7) == 8
    assert owner_rows(config, topic) == [(8, "life-new")]
    assert select(config, f"SELECT COUNT(*) FROM {config.owners_table} WHERE TOPIC = ?",
                  (topic,)) == [(0,)]
    assert legacy_fence(conn, config, topic, 7) == 0  # the earlier version's life: fenced
    assert new.owner_epoch(topic, 0) == 8
    assert new.write(make_batch(topic, 0, 0, 5), 8).rows_written == 5
    # A take that saw no epoch (a life started beside the earlier version's) is refused.
    blind_topic = new_topic()
    legacy_owner(conn, config, blind_topic, 3)
    with pytest.raises(FencedError, match="taken by epoch 3"):
        new.take_ownership(blind_topic, 0, "life-blind", 0)


def test_a_take_waits_for_an_earlier_versions_write_in_flight(
        legacy: tuple[SnowflakeConfig, Any], writers: Callable[..., SnowflakeWriter]) -> None:
    """An earlier version's sink is between its fence UPDATE (on the single owners table) and
    its COMMIT when this version's first take of the partition arrives: the take waits for it
    (the emulator refuses it until then: retried), so the batch in flight lands whole and the
    new owner's offset read follows it. Without the take locking the single table's row, the
    new owner would read offset 0 and write the batch a second time."""
    config, conn = legacy
    topic, timeline = new_topic(), list[str]()
    legacy_owner(conn, config, topic, 3)
    steps = Steps("new", timeline)
    new = writers(steps, config)
    old_write = owner_sql(config, topic, 0)  # an earlier version's INSERTs, its table in them
    in_flight = conn.cursor()
    in_flight.execute("BEGIN")
    in_flight.execute(LEGACY_FENCE.format(table=config.owners_table), ("old", topic, 0, 3))
    assert in_flight.rowcount == 1
    batch = make_batch(topic, 0, 0, 10)
    in_flight.execute(old_write.insert_rows.replace(old_write.owners_table, config.owners_table),
                      (batch.rows_json.decode(), 0, topic, 0, "old"))
    in_flight.execute(
        old_write.insert_offset.replace(old_write.owners_table, config.owners_table),
        (topic, 0, 10, topic, 0, "old"))
    with ThreadPoolExecutor(1) as pool:
        taken = pool.submit(new.take_ownership, topic, 0, "life-new", 3)
        assert steps.wait_until(lambda: steps.count("owner_row") >= 2)  # shut out: retried
        assert not taken.done()
        in_flight.execute("COMMIT")
        epoch = taken.result(WAIT_S)
    assert epoch == 4
    assert new.committed_offset(topic, 0) == 10
    result = new.write(make_batch(topic, 0, 0, 20), epoch)
    assert (result.rows_written, result.committed_offset) == (10, 20)
    assert offsets_of(config, topic) == list(range(20))
    assert legacy_fence(conn, config, topic, 3) == 0
