"""The exactly-once Snowflake sink: a plain writer class and the Ray actor that hosts it.

Each consumer life (actor incarnation) first takes a new owner epoch for its partition
(``take_ownership``; the partition's owners table, ``actors.warehouse``) and sends it with
every batch.
``SnowflakeWriter.write`` applies one partition batch ``[from_offset, to_offset)`` in ONE
transaction that also appends the partition's new committed offset:

1. update the partition's owner row where the epoch is the batch's, with a fresh write token:
   no row -> a newer owner took the partition: roll back, ``FencedError`` (nothing written).
   The UPDATE takes the lock that every other writer of the partition (same epoch on another
   session, an older or a newer owner) waits for or, on the emulator, conflicts with. Each
   partition has an owners table of its own, so writers of other partitions never wait for it
   (Snowflake's UPDATE lock covers a whole table);
2. ``committed = MAX(NEXT_OFFSET)`` for the partition (``None``: never written), read AFTER
   the lock, so it includes whatever a writer that held the lock before committed;
3. ``committed >= to_offset``: already applied, nothing is written (an idempotent retry);
4. ``committed < from_offset``: the batch would skip records -> ``OffsetGapError``
   (unless the partition was never written: the consumer starts wherever the topic starts);
5. insert the rows with ``kafka_offset >= committed`` (a retry overlapping a committed range
   writes only the new rows) in one statement;
6. append ``(topic, partition, to_offset)`` to the offsets table; 7. COMMIT.

5 and 6 insert only while the row still carries the transaction's token: if the warehouse
aborted the transaction midway (it does so to an idle one that blocks others), they insert
nothing on their own and the attempt is retried (``TransactionAbortedError``).

Because 2-4 re-read the committed offset under the lock, retrying the whole transaction after a
lost connection (or a COMMIT whose outcome is unknown, on a new session) is safe: the retry
skips what committed. Rows and offset commit together or not at all, so the consumer's Kafka
offsets are only a hint: on restart it resumes from ``committed_offset``.

Every ``SinkConfig.prune_offsets_every`` successful writes of a partition, the writer deletes
the partition's offset rows below the offset just committed: AFTER the COMMIT, as its own
autocommit statement, never inside the write transaction. A failed prune is logged and tried
again at the next interval; it never fails the write (see ``actors.warehouse``).

A partition's batches arrive in order from its consumer, and a synchronous actor serialises
calls. A replaced consumer that still runs (a zombie on a node cut off, a call in flight on the
sink of an earlier pool size) or a second session of the same writer cannot commit beside the
current one: 1 serializes them and refuses the replaced one (docs/guarantees.md).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgspec
import ray
import snowflake.connector
from snowflake.connector import errors as sf_errors

from actors.config import SinkConfig, SnowflakeConfig
from actors.exceptions import (
    FencedError,
    OffsetGapError,
    SinkError,
    TransactionAbortedError,
)
from actors.metrics import SinkMetrics
from actors.partition_moves import PartitionMark
from actors.request_compression import effective_level, set_request_compression
from actors.retry_window import DecidedKey, replay_key
from actors.rows import FlushResult, SinkBatch
from actors.warehouse import (
    MovesSql,
    OwnerSql,
    WarehouseSql,
    epoch_ms,
    moves_sql,
    owner_sql,
    warehouse_sql,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

WriteHook = Callable[[str], None]
"""Called with the name of each step a write or take transaction reaches ("begin",
"owner_updated", "offset_read", "rows_inserted", "before_commit"; "owner_row",
"owner_locked"): tests pause a writer there to interleave two of them."""

StatementLog = Callable[[str], None]
"""Called with every statement the writer sends, before it is sent (tests check which tables
a transaction touches and that no DDL runs inside one)."""

# Errors after which a fresh connection and a retry of the whole transaction may succeed.
_TRANSIENT: Final[tuple[type[Exception], ...]] = (
    sf_errors.OperationalError,
    sf_errors.InterfaceError,
    sf_errors.InternalServerError,
    sf_errors.BadGatewayError,
    sf_errors.ServiceUnavailableError,
    sf_errors.GatewayTimeoutError,
    sf_errors.RequestTimeoutError,
    sf_errors.OtherHTTPRetryableError,
    sf_errors.TooManyRequests,
    sf_errors.RequestExceedMaxRetryError,
    sf_errors.TokenExpiredError,
    sf_errors.HttpError,
)
# Session gone (expired, or the server restarted and forgot it): reconnecting fixes it.
_SESSION_ERRNOS: Final = frozenset({390111, 390112, 390114})
# 000625: the statement was refused a lock another transaction holds (Snowflake: more than 20
# statements wait for it; the emulator: at once, for DuckDB's write conflict). Retrying the
# transaction later waits for that holder to commit, roll back, or be aborted.
_LOCK_ERRNOS: Final = frozenset({625})
# SQLSTATE of a statement Snowflake cancelled: 000625 above, the statement timeout (000630),
# and a lock wait past the session's LOCK_TIMEOUT (its code is not in the reference; the
# class is the same). The transaction is rolled back and retried from BEGIN.
_CANCELLED_SQLSTATE: Final = "57014"
# 002003: the object does not exist (or the role may not see it).
_NO_SUCH_OBJECT: Final = 2003
_MAX_BACKOFF_S: Final = 10.0
# Bounds the connector's own retry loop per request (unbounded by default: with the warehouse
# down, a call would hang for minutes instead of failing into our retries). Long queries on a
# real account are polled by the connector, each poll a short request.
_NETWORK_TIMEOUT_S: Final = 30
# recent_keys without a bound (the SQL always binds one).
_NO_LIMIT: Final = 2**62


def is_transient(exc: BaseException) -> bool:
    """Whether reconnecting and retrying the transaction may succeed after ``exc``."""
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, sf_errors.Error) and (
        exc.errno in _SESSION_ERRNOS | _LOCK_ERRNOS or exc.sqlstate == _CANCELLED_SQLSTATE)


def session_parameters(sink: SinkConfig) -> dict[str, Any]:
    """The sink's own Snowflake session parameters (docs/guarantees.md, a sink killed
    mid-transaction): a bounded lock wait, an optional statement timeout, and in-progress
    statements aborted when the client is gone."""
    params: dict[str, Any] = {"ABORT_DETACHED_QUERY": True}
    if sink.lock_timeout_s > 0:
        params["LOCK_TIMEOUT"] = sink.lock_timeout_s
    if sink.statement_timeout_s > 0:
        params["STATEMENT_TIMEOUT_IN_SECONDS"] = sink.statement_timeout_s
    return params


def sink_connect_kwargs(config: SnowflakeConfig, sink: SinkConfig) -> dict[str, Any]:
    """``config.connect_kwargs()`` with the sink's session parameters added."""
    kwargs = config.connect_kwargs()
    kwargs["session_parameters"] = {**kwargs.get("session_parameters", {}),
                                    **session_parameters(sink)}
    return kwargs


class SnowflakeWriter:
    """One Snowflake connection that writes partition batches exactly once. No Ray in here.

    Not thread-safe: one caller at a time (the sink actor is synchronous).
    """

    def __init__(self, config: SnowflakeConfig, sink: SinkConfig,
                 hook: WriteHook | None = None, statements: StatementLog | None = None) -> None:
        self._config = config
        self._sink = sink
        self._sql: WarehouseSql = warehouse_sql(config)
        self._moves: MovesSql = moves_sql(config)
        self._marks_ready = False  # the partition marks table is known to exist
        self._conn: Any = None  # connected lazily, on first use
        self._hook: WriteHook = hook or _no_hook
        self._statements = statements
        # (topic, partition) -> its owners table's statements; and the tables known to exist
        self._owner_sql: dict[tuple[str, int], OwnerSql] = {}
        self._owner_tables: set[tuple[str, int]] = set()
        # (topic, partition) -> successful writes since its last prune attempt
        self._writes_since_prune: dict[tuple[str, int], int] = {}

    # -- public API ---------------------------------------------------------------------------

    def ensure_tables(self, topic: str | None = None, partitions: int = 0) -> None:
        """Create the events and offsets tables when missing, and the owners tables of
        ``topic``'s partitions ``0 .. partitions - 1`` (idempotent). A partition added later
        gets its owners table from its first take."""
        self._with_retries("ensure_tables", self._ensure_tables_once)
        if topic is not None:
            self.ensure_owner_tables(topic, partitions)

    def ensure_owner_tables(self, topic: str, partitions: int) -> None:
        """The owners tables of ``topic``'s partitions ``0 .. partitions - 1`` (each created
        once per writer)."""
        for partition in range(partitions):
            self._ensure_owner_table(topic, partition)

    def take_ownership(self, topic: str, partition: int, owner: str, expected: int) -> int:
        """Take a new owner epoch of ``topic``/``partition`` for ``owner`` (a consumer life)
        and return it; from then on writes with an older epoch are refused.

        ``expected`` is the epoch ``owner`` saw before (``owner_epoch``; 0 when there was
        none): if another owner took the partition since, ``FencedError`` (the newer one
        keeps it). Retrying is safe: an earlier attempt that committed for ``owner`` is
        returned, not taken again, so one life never takes two epochs.
        """
        self._ensure_owner_table(topic, partition)
        return self._with_retries(
            "take_ownership", lambda: self._take_once(topic, partition, owner, expected))

    def owner_epoch(self, topic: str, partition: int) -> int | None:
        """The partition's current owner epoch; ``None`` when nobody ever took it. (Until
        this version's first take of the partition, the epoch an earlier version left in the
        single owners table counts too.)"""
        self._ensure_owner_table(topic, partition)
        key = (topic, partition)

        def once() -> int | None:
            cursor = self._connection().cursor()
            try:
                self._execute(cursor, self._owners(*key).current, key)
                row = cursor.fetchone()
                epochs = [int(row[0])] if row is not None else []
                legacy = self._legacy_epoch(cursor, key)
                if legacy is not None:
                    epochs.append(legacy)
                return max(epochs) if epochs else None
            finally:
                cursor.close()

        return self._with_retries("owner_epoch", once)

    def write(self, batch: SinkBatch, epoch: int) -> FlushResult:
        """Apply ``batch`` exactly once as the owner holding ``epoch``; see the module
        docstring for the steps. Raises ``FencedError`` when a newer owner took the partition."""
        if batch.to_offset < batch.from_offset:
            raise SinkError(
                f"batch range inverted topic={batch.topic} partition={batch.partition} "
                f"from_offset={batch.from_offset} to_offset={batch.to_offset}"
            )
        started = time.perf_counter()
        written, committed = self._with_retries("write", lambda: self._write_once(batch, epoch))
        result = FlushResult(
            rows_written=written,
            rows_skipped=batch.row_count - written,
            committed_offset=committed,
            seconds=time.perf_counter() - started,
        )
        logger.debug(
            "batch written topic=%s partition=%d from_offset=%d to_offset=%d rows_written=%d "
            "rows_skipped=%d seconds=%.3f", batch.topic, batch.partition, batch.from_offset,
            batch.to_offset, result.rows_written, result.rows_skipped, result.seconds,
        )
        self._maybe_prune_offsets(batch.topic, batch.partition, committed)
        return result

    def committed_offset(self, topic: str, partition: int) -> int | None:
        """The partition's committed next offset; ``None`` when it was never written."""
        rows = self._query(self._sql.committed_offset, (topic, partition))
        value = rows[0][0] if rows else None
        return None if value is None else int(value)

    def recent_keys(self, topic: str, partition: int, since_ms: int,
                    limit: int = _NO_LIMIT) -> list[DecidedKey]:
        """The event keys of the partition's rows accepted at/after ``since_ms``, the ``limit``
        newest (by offset) first, each with its offset and accept time; a row of a replayed
        dead letter is followed by its replay key (``actors.retry_window.replay_key``).

        Rows without a gateway accept time count from when they were written.
        """
        rows = self._query(self._sql.recent_keys, (topic, partition, since_ms, limit))
        keys: list[DecidedKey] = []
        for account, event, replay_of, offset, accepted in rows:
            at_ms = epoch_ms(accepted)
            keys.append(DecidedKey(int(offset), at_ms, (str(account), str(event))))
            if replay_of is not None:
                keys.append(DecidedKey(int(offset), at_ms, replay_key(str(replay_of))))
        return keys

    def partition_marks(self, topic: str) -> list[PartitionMark]:
        """The topic's partition marks (``actors.partition_moves``)."""
        self._ensure_marks_table()
        rows = self._query(self._moves.marks, (topic,))
        return [PartitionMark(int(count), int(partition), int(mark), epoch_ms(at))
                for count, partition, mark, at in rows]

    def record_partition_mark(self, topic: str, partitions: int, partition: int,
                              mark: int) -> None:
        """Record ``partition``'s mark under ``partitions`` unless it has one."""
        self._ensure_marks_table()
        self._query(self._moves.insert_mark,
                    (topic, partitions, partition, mark, topic, partitions, partition))

    def written_elsewhere(self, topic: str, partition: int, keys: list[tuple[str, str]],
                          since_ms: int) -> list[DecidedKey]:
        """Which of ``keys`` the topic's other partitions wrote, accepted at/after
        ``since_ms``: each with its offset there and accept time."""
        rows = self._query(self._moves.written_elsewhere,
                           (json.dumps(keys), topic, partition, since_ms))
        return [DecidedKey(int(offset), epoch_ms(at), (str(account), str(event)))
                for account, event, offset, at in rows]

    def count_rows(self, topic: str | None = None) -> int:
        """Rows in the events table (of ``topic`` when given)."""
        if topic is None:
            rows = self._query(self._sql.count_rows, ())
        else:
            rows = self._query(self._sql.count_rows_of_topic, (topic,))
        return int(rows[0][0])

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sf_errors.Error as exc:
                # The connection is being dropped anyway; the server ends the session itself.
                logger.warning("closing the Snowflake connection failed error=%r", exc)

    # -- internals ----------------------------------------------------------------------------

    def _connection(self) -> Any:
        if self._conn is None:
            set_request_compression(effective_level(self._sink.request_compression_level,
                                                    self._config.host))
            self._conn = snowflake.connector.connect(
                **sink_connect_kwargs(self._config, self._sink), paramstyle="qmark",
                autocommit=True, network_timeout=_NETWORK_TIMEOUT_S,
            )
            logger.info("connected to Snowflake database=%s schema=%s",
                        self._config.database, self._config.schema)
        return self._conn

    def _with_retries(self, what: str, attempt_once: Callable[[], _T]) -> _T:
        """Run ``attempt_once`` and retry it on a transient error with a fresh connection."""
        attempts = self._sink.retry_attempts
        for attempt in range(1, attempts + 1):
            try:
                result = attempt_once()
            except (sf_errors.Error, TransactionAbortedError) as exc:
                self.close()
                if isinstance(exc, sf_errors.Error) and not is_transient(exc):
                    raise SinkError(f"{what} failed: {exc}") from exc
                if attempt == attempts:
                    raise SinkError(f"{what} failed after {attempts} attempts: {exc}") from exc
                backoff = min(self._sink.retry_backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S)
                logger.warning("transient Snowflake error, retrying what=%s attempt=%d "
                               "backoff_s=%.2f error=%r", what, attempt, backoff, exc)
                time.sleep(backoff)
            else:
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _execute(self, cursor: Any, sql: str, params: tuple[object, ...] = ()) -> None:
        if self._statements is not None:
            self._statements(sql)
        cursor.execute(sql, params)

    def _ensure_tables_once(self) -> None:
        cursor = self._connection().cursor()
        try:
            self._execute(cursor, self._sql.create_events)
            for statement in self._sql.migrate_events:
                self._execute(cursor, statement)
            self._execute(cursor, self._sql.create_offsets)
        finally:
            cursor.close()

    def _owners(self, topic: str, partition: int) -> OwnerSql:
        key = (topic, partition)
        sql = self._owner_sql.get(key)
        if sql is None:
            sql = self._owner_sql[key] = owner_sql(self._config, topic, partition)
        return sql

    def _ensure_owner_table(self, topic: str, partition: int) -> None:
        """Create the partition's owners table once per writer, as its own autocommit
        statement: DDL commits an open transaction in Snowflake, so it never runs inside a
        take or a write (those only ever follow it)."""
        if (topic, partition) in self._owner_tables:
            return
        create = self._owners(topic, partition).create

        def once() -> None:
            cursor = self._connection().cursor()
            try:
                self._execute(cursor, create)
            finally:
                cursor.close()

        self._with_retries("create owners table", once)
        self._owner_tables.add((topic, partition))

    def _legacy_epoch(self, cursor: Any, key: tuple[str, int]) -> int | None:
        """The partition's epoch in the single owners table of earlier versions; ``None`` when
        that table does not exist or has no row of the partition (never there, or moved)."""
        try:
            self._execute(cursor, self._sql.legacy_epoch, key)
        except sf_errors.ProgrammingError as exc:
            if exc.errno == _NO_SUCH_OBJECT:
                return None
            raise
        row = cursor.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _ensure_marks_table(self) -> None:
        if not self._marks_ready:
            self._query(self._moves.create_marks, ())
            self._marks_ready = True

    def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        def once() -> list[tuple[Any, ...]]:
            cursor = self._connection().cursor()
            try:
                self._execute(cursor, sql, params)
                return list(cursor.fetchall())
            finally:
                cursor.close()

        return self._with_retries("query", once)

    def _take_once(self, topic: str, partition: int, owner: str, expected: int) -> int:
        """One attempt of ``take_ownership``: see ``actors.warehouse`` for the statements."""
        key = (topic, partition)
        sql = self._owners(topic, partition)
        cursor = self._connection().cursor()
        try:
            # Autocommit, so the row exists for the UPDATE below to lock (an UPDATE of no row
            # locks nothing on the emulator).
            self._execute(cursor, sql.insert_if_missing, (*key, *key))
            # An earlier version's row of the partition, in its single owners table: moved here
            # by this take, under that table's lock (actors.warehouse).
            legacy = self._legacy_epoch(cursor, key) is not None
            self._hook("owner_row")
            self._execute(cursor, "BEGIN")
            done = False
            try:
                if legacy:  # first: an earlier version's write in flight commits before
                    self._execute(cursor, self._sql.legacy_lock, key)
                self._execute(cursor, sql.lock, key)
                self._hook("owner_locked")
                self._execute(cursor, sql.current, key)
                row = cursor.fetchone()
                if row is None:
                    raise SinkError(f"the owner row of {topic}/{partition} is missing")
                current, holder = int(row[0]), row[1]
                if holder == owner:
                    return current  # an earlier attempt committed: nothing more to take
                legacy_epoch = self._legacy_epoch(cursor, key) if legacy else None
                if legacy_epoch is not None:
                    current = max(current, legacy_epoch)
                if current != expected:
                    raise FencedError(
                        f"partition {topic}/{partition} was taken by epoch {current} "
                        f"(owner {holder}) after {owner} saw epoch {expected}")
                self._execute(cursor, sql.delete, key)  # also any duplicate first row
                self._execute(cursor, sql.insert, (*key, current + 1, owner))
                if legacy_epoch is not None:
                    self._execute(cursor, self._sql.legacy_delete, key)
                self._execute(cursor, "COMMIT")
                done = True
            finally:
                if not done:
                    self._rollback(cursor)
        finally:
            cursor.close()
        if legacy_epoch is not None:
            logger.info("partition owner moved from the single owners table topic=%s "
                        "partition=%d table=%s epoch=%d", topic, partition,
                        self._sql.legacy_owners_table, legacy_epoch)
        logger.info("partition owner taken topic=%s partition=%d epoch=%d owner=%s",
                    topic, partition, current + 1, owner)
        return current + 1

    def _write_once(self, batch: SinkBatch, epoch: int) -> tuple[int, int]:
        """One transaction; returns ``(rows_written, committed_offset)``."""
        key = (batch.topic, batch.partition)
        sql = self._owners(*key)
        token = uuid.uuid4().hex  # identifies this attempt's transaction (module docstring)
        cursor = self._connection().cursor()
        try:
            self._hook("begin")
            self._execute(cursor, "BEGIN")
            done = False
            try:
                self._execute(cursor, sql.fence_write, (token, *key, epoch))
                owner_rows = _rows_changed(cursor)
                if owner_rows == 0:
                    raise self._fenced(cursor, batch, epoch)
                if owner_rows > 1:  # a take leaves one row per epoch: never fence on this
                    raise SinkError(f"{owner_rows} owner rows of {batch.topic}/"
                                    f"{batch.partition} hold epoch {epoch}")
                self._hook("owner_updated")
                self._execute(cursor, self._sql.committed_offset, key)
                row = cursor.fetchone()
                committed = None if row is None or row[0] is None else int(row[0])
                self._hook("offset_read")
                start = _start_offset(batch, committed)
                if start is None:
                    assert committed is not None
                    return 0, committed  # already applied: rolled back, nothing written
                written = 0
                if batch.row_count > 0:
                    self._execute(cursor, sql.insert_rows,
                                  (batch.rows_json.decode(), start, *key, token))
                    written = _rows_changed(cursor)
                self._hook("rows_inserted")
                self._execute(cursor, sql.insert_offset, (*key, batch.to_offset, *key, token))
                if _rows_changed(cursor) != 1:
                    raise TransactionAbortedError(
                        f"the write transaction of {batch.topic}/{batch.partition} "
                        f"[{batch.from_offset}, {batch.to_offset}) was aborted midway; retrying")
                self._hook("before_commit")
                self._execute(cursor, "COMMIT")
                done = True
            finally:
                if not done:
                    self._rollback(cursor)
        finally:
            cursor.close()
        return written, batch.to_offset

    def _fenced(self, cursor: Any, batch: SinkBatch, epoch: int) -> FencedError:
        """The error for a write whose epoch is not the partition's (read for the message)."""
        self._execute(cursor, self._owners(batch.topic, batch.partition).current,
                      (batch.topic, batch.partition))
        row = cursor.fetchone()
        current = "none" if row is None else f"{int(row[0])} (owner {row[1]})"
        logger.warning("write fenced topic=%s partition=%d epoch=%d current_epoch=%s "
                       "from_offset=%d to_offset=%d", batch.topic, batch.partition, epoch,
                       current, batch.from_offset, batch.to_offset)
        return FencedError(
            f"partition {batch.topic}/{batch.partition} is owned by epoch {current}, not "
            f"{epoch}: batch [{batch.from_offset}, {batch.to_offset}) not written")

    def _maybe_prune_offsets(self, topic: str, partition: int, committed: int) -> None:
        """Every ``prune_offsets_every`` writes of the partition, delete its offset rows below
        ``committed`` (the offset the write just committed or read: never above the max row).

        Runs after the write transaction, as one autocommit statement, attempted once: a failure
        is logged and never fails the (already committed) write.
        """
        every = self._sink.prune_offsets_every
        if every == 0:
            return
        key = (topic, partition)
        count = self._writes_since_prune.get(key, 0) + 1
        if count < every:
            self._writes_since_prune[key] = count
            return
        self._writes_since_prune[key] = 0  # pruned or failed: next attempt a full interval away
        try:
            cursor = self._connection().cursor()
            try:
                self._execute(cursor, self._sql.prune_offsets, (topic, partition, committed))
                deleted = cursor.rowcount
            finally:
                cursor.close()
        except sf_errors.Error as exc:
            # Handled, not swallowed: the write is committed and superseded rows only cost
            # space and MAX() time, so we log and prune again at the next interval (a later
            # prune's bound covers these rows too). A broken session is dropped so the next
            # write reconnects instead of spending a retry on it.
            if is_transient(exc):
                self.close()
            logger.warning("pruning offset rows failed, retrying at the next interval "
                           "topic=%s partition=%d committed_offset=%d error=%r",
                           topic, partition, committed, exc)
            return
        logger.debug("offset rows pruned topic=%s partition=%d below_offset=%d deleted=%s",
                     topic, partition, committed, deleted)

    def _rollback(self, cursor: Any) -> None:
        try:
            self._execute(cursor, "ROLLBACK")
        except sf_errors.Error as exc:
            # The session is unusable; drop it so the server discards the open transaction.
            logger.warning("rollback failed, dropping the connection error=%r", exc)
            self.close()


def _no_hook(_step: str) -> None:
    pass


def _start_offset(batch: SinkBatch, committed: int | None) -> int | None:
    """The first offset to insert, ``None`` when the batch is already applied.

    Raises ``OffsetGapError`` when the batch starts after the committed offset.
    """
    if committed is None:
        return batch.from_offset  # never written: start wherever the consumer starts
    if committed >= batch.to_offset:
        return None
    if committed < batch.from_offset:
        raise OffsetGapError(
            f"batch would skip records topic={batch.topic} partition={batch.partition} "
            f"committed_offset={committed} from_offset={batch.from_offset}"
        )
    return committed


def _rows_changed(cursor: Any) -> int:
    """Rows inserted or updated by the last DML (Snowflake returns the count as a result
    row)."""
    rowcount = cursor.rowcount
    if isinstance(rowcount, int) and rowcount >= 0:
        return rowcount
    row = cursor.fetchone()
    return int(row[0]) if row else 0


class SinkLoad(msgspec.Struct, frozen=True):
    """A sink's answer to ``load``."""

    node_id: str
    busy_s: float  # wall seconds spent in write() since the actor (re)started
    writes: int


class SnowflakeSink:
    """The sink actor body. Keep it a SYNCHRONOUS actor: calls are serialised, which the
    exactly-once design relies on. The connection is made inside the actor, from config."""

    def __init__(self, config: SnowflakeConfig, sink: SinkConfig,
                 index: int | None = None) -> None:
        self._writer = SnowflakeWriter(config, sink)
        self._index = index
        # (topic, partition) written through this sink; replaced, never mutated, so that
        # __repr__ may read it from another thread.
        self._written: frozenset[tuple[str, int]] = frozenset()
        self._metrics = _actor_metrics()
        self._busy_s = 0.0  # wall seconds inside write(), failed writes included
        self._writes = 0
        self._tables_ready = False  # this life created (or found) the events and offsets tables

    def __repr__(self) -> str:
        """``sink(1 wrote=events/1,3)``; no Ray calls. Which partitions it serves is the
        supervisor's to say (``eventray status``): they move between sinks."""
        if "_written" not in self.__dict__:  # __init__ failed before it got that far
            return "sink(not started)"
        if self._index is None:
            return f"sink(wrote={_partitions_text(self._written)})"
        return f"sink({self._index} wrote={_partitions_text(self._written)})"

    def ping(self) -> str:
        """The node id the actor runs on (liveness and placement checks)."""
        node_id: str = ray.get_runtime_context().get_node_id()
        return node_id

    def load(self) -> SinkLoad:
        """Where the sink runs and the seconds it spent writing since it started: the
        supervisor's samples of it give each sink's busy share (``cluster.autoscale_policy``)."""
        return SinkLoad(node_id=self.ping(), busy_s=self._busy_s, writes=self._writes)

    def ensure_tables(self, topic: str | None = None, partitions: int = 0) -> None:
        """The tables, and the owners tables of ``topic``'s first ``partitions``. Once per
        actor life: consumers created beside the supervisor ask too, and wait for the answer
        before their first take (``PartitionConsumer``), so one sink runs all this DDL."""
        if not self._tables_ready:
            self._writer.ensure_tables(topic, partitions)
            self._tables_ready = True
        elif topic is not None:
            self._writer.ensure_owner_tables(topic, partitions)

    def take_ownership(self, topic: str, partition: int, owner: str, expected: int) -> int:
        return self._writer.take_ownership(topic, partition, owner, expected)

    def take_ownership_and_offset(self, topic: str, partition: int, owner: str,
                                  expected: int) -> tuple[int, int | None]:
        """``take_ownership``, then the partition's committed offset (read after the take:
        no older owner commits past it): a consumer's start in one call, so partitions that
        share this sink start one after another instead of interleaving their calls."""
        epoch = self._writer.take_ownership(topic, partition, owner, expected)
        return epoch, self._writer.committed_offset(topic, partition)

    def owner_epoch(self, topic: str, partition: int) -> int | None:
        return self._writer.owner_epoch(topic, partition)

    def owner_epoch_and_offset(self, topic: str, partition: int) -> tuple[int | None, int | None]:
        """``owner_epoch`` and the committed offset read after it, in one call (the check of
        a consumer session that restarts)."""
        return (self._writer.owner_epoch(topic, partition),
                self._writer.committed_offset(topic, partition))

    def write(self, batch: SinkBatch, epoch: int) -> FlushResult:
        started = time.monotonic()
        try:
            result = self._writer.write(batch, epoch)
        finally:
            self._busy_s += time.monotonic() - started
            self._writes += 1
        if self._metrics is not None:
            self._metrics.wrote(batch.topic, batch.partition, result.seconds)
        if (batch.topic, batch.partition) not in self._written:
            self._written = self._written | {(batch.topic, batch.partition)}
        return result

    def committed_offset(self, topic: str, partition: int) -> int | None:
        return self._writer.committed_offset(topic, partition)

    def recent_keys(self, topic: str, partition: int, since_ms: int,
                    limit: int = _NO_LIMIT) -> list[DecidedKey]:
        return self._writer.recent_keys(topic, partition, since_ms, limit)

    def partition_marks(self, topic: str) -> list[PartitionMark]:
        return self._writer.partition_marks(topic)

    def record_partition_mark(self, topic: str, partitions: int, partition: int,
                              mark: int) -> None:
        self._writer.record_partition_mark(topic, partitions, partition, mark)

    def written_elsewhere(self, topic: str, partition: int, keys: list[tuple[str, str]],
                          since_ms: int) -> list[DecidedKey]:
        return self._writer.written_elsewhere(topic, partition, keys, since_ms)

    def count_rows(self, topic: str | None = None) -> int:
        return self._writer.count_rows(topic)

    def close(self) -> None:
        self._writer.close()


def _actor_metrics() -> SinkMetrics | None:
    """The sink's metrics when it runs as a named Ray actor (labelled with its name); None for
    the plain class outside an actor (tests)."""
    if not ray.is_initialized():
        return None
    name = ray.get_runtime_context().get_actor_name()
    return SinkMetrics(name) if name else None


def _partitions_text(written: frozenset[tuple[str, int]]) -> str:
    """``events/1,3;other/0``; ``-`` when nothing was written."""
    topics: dict[str, list[int]] = {}
    for topic, partition in sorted(written):
        topics.setdefault(topic, []).append(partition)
    return ";".join(f"{topic}/{','.join(map(str, parts))}"
                    for topic, parts in topics.items()) or "-"


SnowflakeSinkActor = ray.remote(SnowflakeSink)
