"""Every statement eventray runs against Snowflake: the DDL and the SQL, in one place.

Tables (names from ``SnowflakeConfig``; unquoted identifiers, so Snowflake stores them
upper-case):

* events: one row per accepted, valid event, with its Kafka lineage (topic, partition, offset,
  the gateway's request id and accept time), ``WRITTEN_AT``, set by the warehouse at write,
  and ``REPLAY_OF``, the dead letter (``<dlq partition>:<dlq offset>``) a replayed record came
  from (NULL otherwise). ``REPLAY_OF`` came after the first tables: ``migrate_events`` adds it
  to an events table created without it (``ADD COLUMN IF NOT EXISTS``, safe to run again).
* offsets: the partition's committed next offset, APPEND-ONLY. Each write transaction inserts a
  new ``(TOPIC, PARTITION, NEXT_OFFSET, WRITTEN_AT)`` row and readers take ``MAX(NEXT_OFFSET)``.
  Never UPDATE: inserts never wait for each other nor conflict (the owners row, updated first
  in the same transaction, is what serializes a partition's writers). Superseded
  rows are pruned by the sink (``prune_offsets``, every ``SinkConfig.prune_offsets_every``
  writes of a partition): a DELETE of the partition's rows below the offset it just committed,
  run as its own autocommit statement OUTSIDE the write transaction, so a sink killed
  mid-prune never leaves an open DELETE behind, and an open write transaction (which only
  inserts) does not conflict with it. The bound is an offset the writer just read or
  committed, never above the partition's maximum, so the max row (the committed position) is
  never deleted. A failed prune only leaves extra rows until the next one.
* owners: ONE SMALL TABLE PER (topic, partition) (``owner_sql``; named
  ``<owners_table>_<partition>_<8 hex digits of the topic's SHA-256>``, the topic and partition
  also in its row), holding the partition's owner ``EPOCH``, the consumer life that took it
  (``OWNER``) and the token of the last write transaction that held it (``WRITE_TOKEN``). One
  table per partition because Snowflake's UPDATE lock covers the table, not the row: with one
  owners table every partition's write transaction would wait for every other's. Created by
  the partition's first take on each sink (and by ``ensure_tables`` for the partitions it is
  given), always as its own autocommit statement (DDL commits an open transaction in
  Snowflake), never inside a take or a write. The fencing (``actors.sink``,
  docs/guarantees.md):

  - a consumer life takes a new epoch once, before its first write
    (``SnowflakeWriter.take_ownership``): make sure the row exists (``insert_if_missing``,
    epoch 0, which no owner ever holds), then in one transaction lock it (``lock``), read it
    (``current``), and replace it with epoch + 1 (``delete``, ``insert``). Two first inserts
    may both land (Snowflake enforces no unique key on standard tables, and an INSERT ... WHERE
    NOT EXISTS does not wait for a parallel one): the delete under the lock removes the extra
    row, and a straggler that commits later has epoch 0, which no write ever matches;
  - every batch write transaction FIRST updates the row where the epoch is the writer's
    (``fence_write``, setting a fresh ``WRITE_TOKEN``): 0 rows means a newer owner took the
    partition. The UPDATE takes the lock the next owner's take or write must wait for (or, on
    the emulator, conflict with), so the committed offset read after it is final;
  - the rows and the offset are inserted only ``WHERE EXISTS`` the row with the transaction's
    own token: should the warehouse abort the transaction midway (Snowflake aborts an idle
    transaction that blocks another; so does the emulator, see
    ``cluster.local.snowflake_emulator``) and run the remaining statements on their own,
    they insert nothing.

  Earlier versions kept every partition's row in the single table ``<owners_table>``. A
  partition's first take by this version moves its epoch out of it, in the take's transaction:
  it locks the partition's row there first (``legacy_lock``: an earlier version's write in
  flight commits before), continues from ``MAX(EPOCH)`` there (``legacy_epoch``) and deletes
  the row (``legacy_delete``): an earlier version's life that still runs matches no row at its
  next write and is fenced. Partitions without a row there never touch that table.

Timestamps are TIMESTAMP_TZ: the emulator (DuckDB TIMESTAMPTZ) returns them as aware UTC
datetimes, which round-trip exactly to the microsecond; Snowflake keeps the offset given.
The emulator stores NULL timestamps correctly but its result encoding returns them as the epoch
(1970-01-01): test for NULL with ``IS NULL`` in SQL, not in the fetched value.

Rows arrive as ONE bound JSON array per batch (``actors.rows.encode_rows``) that the warehouse
flattens server side: one statement per batch, valid Snowflake SQL and fast on the emulator
(``executemany`` is ~40x slower there, ``write_pandas``/``PUT``/``MERGE`` from FLATTEN fail).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from actors.config import SnowflakeConfig
from actors.exceptions import ConfigError
from actors.rows import row_field_index

# Unquoted Snowflake identifiers, optionally qualified (db.schema.table). We interpolate table
# names into SQL, so anything else is refused; values are always bound.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*){0,2}$")
# Snowflake's longest identifier.
_MAX_IDENTIFIER = 255
# The columns that name a partition in the owners and legacy owners tables.
_OWNER_KEY = 'TOPIC = ? AND "PARTITION" = ?'

# The events table's columns, in insert order.
EVENT_COLUMNS: tuple[str, ...] = (
    "EVENT_ID", "ACCOUNT_ID", "EVENT_TYPE", "OCCURRED_AT", "SCHEMA_VERSION", "BODY",
    "KAFKA_TOPIC", "KAFKA_PARTITION", "KAFKA_OFFSET", "REQUEST_ID", "ACCEPTED_AT", "WRITTEN_AT",
    "REPLAY_OF",
)


@dataclass(frozen=True, slots=True)
class WarehouseSql:
    """The statements for one pair of tables; parameters use the ``qmark`` style."""

    events_table: str
    offsets_table: str
    # The single owners table of earlier versions (``<owners_table>``): read, locked and emptied
    # partition by partition by the first takes of this version, never created.
    legacy_owners_table: str
    create_events: str
    # Run after create_events: bring an events table created by an earlier version up to date.
    migrate_events: tuple[str, ...]
    create_offsets: str
    # (topic, partition) -> MAX(EPOCH) of the partition's rows, NULL without one; 002003 when
    # the table does not exist
    legacy_epoch: str
    # (topic, partition) -> updates the partition's row(s): takes the lock, changes nothing
    legacy_lock: str
    # (topic, partition)
    legacy_delete: str
    # (topic, partition) -> MAX(NEXT_OFFSET) or NULL
    committed_offset: str
    # (topic, partition, committed_offset) -> deletes the partition's rows below it (autocommit)
    prune_offsets: str
    # (topic, partition, since_ms, limit) -> (ACCOUNT_ID, EVENT_ID, REPLAY_OF, KAFKA_OFFSET,
    # accept time (WRITTEN_AT without one)) rows, newest first
    recent_keys: str
    # (topic, partition, from_offset, to_offset) -> (KAFKA_PARTITION, KAFKA_OFFSET) of the rows
    # in [from_offset, to_offset)
    rows_in_range: str
    count_rows: str
    # (topic,)
    count_rows_of_topic: str


def warehouse_sql(config: SnowflakeConfig) -> WarehouseSql:
    """The statements for ``config``'s tables; raises ``ConfigError`` for unsafe table names."""
    events = _identifier("snowflake.events_table", config.events_table)
    offsets = _identifier("snowflake.offsets_table", config.offsets_table)
    legacy = _identifier("snowflake.owners_table", config.owners_table)
    return WarehouseSql(
        events_table=events,
        offsets_table=offsets,
        legacy_owners_table=legacy,
        create_events=f"""CREATE TABLE IF NOT EXISTS {events} (
    EVENT_ID VARCHAR NOT NULL,
    ACCOUNT_ID VARCHAR NOT NULL,
    EVENT_TYPE VARCHAR NOT NULL,
    OCCURRED_AT TIMESTAMP_TZ NOT NULL,
    SCHEMA_VERSION NUMBER(10, 0) NOT NULL,
    BODY VARIANT,
    KAFKA_TOPIC VARCHAR NOT NULL,
    KAFKA_PARTITION NUMBER(10, 0) NOT NULL,
    KAFKA_OFFSET NUMBER(38, 0) NOT NULL,
    REQUEST_ID VARCHAR,
    ACCEPTED_AT TIMESTAMP_TZ,
    WRITTEN_AT TIMESTAMP_TZ NOT NULL,
    REPLAY_OF VARCHAR
)""",
        migrate_events=(f"ALTER TABLE {events} ADD COLUMN IF NOT EXISTS REPLAY_OF VARCHAR",),
        create_offsets=f"""CREATE TABLE IF NOT EXISTS {offsets} (
    TOPIC VARCHAR NOT NULL,
    "PARTITION" NUMBER(10, 0) NOT NULL,
    NEXT_OFFSET NUMBER(38, 0) NOT NULL,
    WRITTEN_AT TIMESTAMP_TZ NOT NULL
)""",
        legacy_epoch=f"SELECT MAX(EPOCH) FROM {legacy} WHERE {_OWNER_KEY}",
        legacy_lock=f"UPDATE {legacy} SET UPDATED_AT = CURRENT_TIMESTAMP() WHERE {_OWNER_KEY}",
        legacy_delete=f"DELETE FROM {legacy} WHERE {_OWNER_KEY}",
        committed_offset=(
            f'SELECT MAX(NEXT_OFFSET) FROM {offsets} WHERE TOPIC = ? AND "PARTITION" = ?'
        ),
        # Strictly below: the row holding the bound (the partition's max) always stays.
        prune_offsets=(
            f'DELETE FROM {offsets} WHERE TOPIC = ? AND "PARTITION" = ? AND NEXT_OFFSET < ?'
        ),
        # Records produced without the gateway's accept-time header fall back to WRITTEN_AT.
        recent_keys=(
            f"SELECT ACCOUNT_ID, EVENT_ID, REPLAY_OF, KAFKA_OFFSET, "
            f"COALESCE(ACCEPTED_AT, WRITTEN_AT) FROM {events} "
            "WHERE KAFKA_TOPIC = ? AND KAFKA_PARTITION = ? "
            "AND COALESCE(ACCEPTED_AT, WRITTEN_AT) >= TO_TIMESTAMP_TZ(?, 3) "
            "ORDER BY KAFKA_OFFSET DESC LIMIT ?"
        ),
        rows_in_range=(
            f"SELECT KAFKA_PARTITION, KAFKA_OFFSET FROM {events} "
            "WHERE KAFKA_TOPIC = ? AND KAFKA_PARTITION = ? AND KAFKA_OFFSET >= ? "
            "AND KAFKA_OFFSET < ?"
        ),
        count_rows=f"SELECT COUNT(*) FROM {events}",
        count_rows_of_topic=f"SELECT COUNT(*) FROM {events} WHERE KAFKA_TOPIC = ?",
    )


@dataclass(frozen=True, slots=True)
class OwnerSql:
    """The statements of ONE partition's owners table (``owner_sql``), and the write's two
    INSERTs, which check that table for the transaction's token."""

    owners_table: str
    create: str
    # (topic, partition, topic, partition) -> inserts the row with epoch 0 unless there is one
    insert_if_missing: str
    # (topic, partition) -> updates the partition's row(s): takes the lock, changes nothing
    lock: str
    # (topic, partition) -> (EPOCH, OWNER) of the row with the highest epoch, or no row
    current: str
    # (topic, partition)
    delete: str
    # (topic, partition, epoch, owner)
    insert: str
    # (write_token, topic, partition, epoch) -> 1 row updated, 0 when the epoch is not current
    fence_write: str
    # (rows_json: str, min_offset: int, topic, partition, write_token) -> inserts the rows with
    # kafka_offset >= min_offset while the transaction holding write_token is alive
    insert_rows: str
    # (topic, partition, next_offset, topic, partition, write_token) -> 1 row, likewise
    insert_offset: str


def owners_table_name(owners_table: str, topic: str, partition: int) -> str:
    """``<owners_table>_<partition>_<first 8 hex digits of SHA-256(topic)>``: one table per
    topic and partition, so no two partitions' write transactions share a lock. Two topics
    whose digests collide share a table, which only makes them wait for each other."""
    digest = hashlib.sha256(topic.encode()).hexdigest()[:8].upper()
    name = f"{owners_table}_{partition}_{digest}"
    if len(name.rsplit(".", 1)[-1]) > _MAX_IDENTIFIER:
        raise ConfigError(f"snowflake.owners_table: {owners_table!r} is too long for a "
                          f"partition's owners table ({name})")
    return name


def owner_sql(config: SnowflakeConfig, topic: str, partition: int) -> OwnerSql:
    """The statements of ``topic``/``partition``'s owners table and the write's INSERTs."""
    events = _identifier("snowflake.events_table", config.events_table)
    offsets = _identifier("snowflake.offsets_table", config.offsets_table)
    owners = owners_table_name(_identifier("snowflake.owners_table", config.owners_table),
                               topic, partition)
    # True only inside the transaction that set the token (or after it committed).
    holds_token = f"EXISTS (SELECT 1 FROM {owners} WHERE {_OWNER_KEY} AND WRITE_TOKEN = ?)"
    return OwnerSql(
        owners_table=owners,
        create=f"""CREATE TABLE IF NOT EXISTS {owners} (
    TOPIC VARCHAR NOT NULL,
    "PARTITION" NUMBER(10, 0) NOT NULL,
    EPOCH NUMBER(38, 0) NOT NULL,
    OWNER VARCHAR,
    WRITE_TOKEN VARCHAR,
    UPDATED_AT TIMESTAMP_TZ NOT NULL
)""",
        insert_if_missing=(
            f'INSERT INTO {owners} (TOPIC, "PARTITION", EPOCH, UPDATED_AT) '
            "SELECT ?, ?, 0, CURRENT_TIMESTAMP() "
            f"WHERE NOT EXISTS (SELECT 1 FROM {owners} WHERE {_OWNER_KEY})"
        ),
        lock=f"UPDATE {owners} SET UPDATED_AT = CURRENT_TIMESTAMP() WHERE {_OWNER_KEY}",
        current=(
            f"SELECT EPOCH, OWNER FROM {owners} WHERE {_OWNER_KEY} ORDER BY EPOCH DESC LIMIT 1"
        ),
        delete=f"DELETE FROM {owners} WHERE {_OWNER_KEY}",
        insert=(
            f'INSERT INTO {owners} (TOPIC, "PARTITION", EPOCH, OWNER, UPDATED_AT) '
            "SELECT ?, ?, ?, ?, CURRENT_TIMESTAMP()"
        ),
        fence_write=(
            f"UPDATE {owners} SET WRITE_TOKEN = ?, UPDATED_AT = CURRENT_TIMESTAMP() "
            f"WHERE {_OWNER_KEY} AND EPOCH = ?"
        ),
        insert_rows=f"""INSERT INTO {events} ({", ".join(EVENT_COLUMNS)})
SELECT
    {_v("event_id")}::string,
    {_v("account_id")}::string,
    {_v("event_type")}::string,
    {_v("occurred_at")}::timestamp_tz,
    {_v("schema_version")}::number,
    {_v("body")},
    {_v("kafka_topic")}::string,
    {_v("kafka_partition")}::number,
    {_v("kafka_offset")}::number,
    {_v("request_id")}::string,
    TO_TIMESTAMP_TZ({_v("accepted_at_ms")}::number, 3),
    CURRENT_TIMESTAMP(),
    {_v("replay_of")}::string
FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?)))
WHERE {_v("kafka_offset")}::number >= ? AND {holds_token}""",
        insert_offset=(
            f'INSERT INTO {offsets} (TOPIC, "PARTITION", NEXT_OFFSET, WRITTEN_AT) '
            f"SELECT ?, ?, ?, CURRENT_TIMESTAMP() WHERE {holds_token}"
        ),
    )


@dataclass(frozen=True, slots=True)
class MovesSql:
    """The statements behind retries across partition changes (``actors.partition_moves``).

    Partition marks: one row per (topic, partition count, partition), the offset the partition
    planned its first batch under that count from (-1: nothing before) and when. Inserted once
    by the partition's consumer (``WHERE NOT EXISTS``; should two lives of one consumer both
    insert, readers take the highest mark, which makes others wait longer, never shorter).
    """

    marks_table: str
    create_marks: str
    # (topic, partitions, partition, mark, topic, partitions, partition)
    insert_mark: str
    # (topic,) -> (PARTITIONS, PARTITION, MAX(MARK_OFFSET), MIN(MARKED_AT)) rows
    marks: str
    # (keys_json: '[[account, event], ...]', topic, partition, since_ms) -> (ACCOUNT_ID,
    # EVENT_ID, KAFKA_OFFSET, accept time) of the rows of those keys on the topic's OTHER
    # partitions accepted at/after since_ms
    written_elsewhere: str


def moves_sql(config: SnowflakeConfig) -> MovesSql:
    """The statements for ``config``'s marks and events tables."""
    events = _identifier("snowflake.events_table", config.events_table)
    marks = _identifier("snowflake.partition_marks_table", config.partition_marks_table)
    return MovesSql(
        marks_table=marks,
        create_marks=f"""CREATE TABLE IF NOT EXISTS {marks} (
    TOPIC VARCHAR NOT NULL,
    PARTITIONS NUMBER(10, 0) NOT NULL,
    "PARTITION" NUMBER(10, 0) NOT NULL,
    MARK_OFFSET NUMBER(38, 0) NOT NULL,
    MARKED_AT TIMESTAMP_TZ NOT NULL
)""",
        insert_mark=(
            f'INSERT INTO {marks} (TOPIC, PARTITIONS, "PARTITION", MARK_OFFSET, MARKED_AT) '
            "SELECT ?, ?, ?, ?, CURRENT_TIMESTAMP() "
            f'WHERE NOT EXISTS (SELECT 1 FROM {marks} WHERE TOPIC = ? AND PARTITIONS = ? '
            'AND "PARTITION" = ?)'
        ),
        marks=(
            f'SELECT PARTITIONS, "PARTITION", MAX(MARK_OFFSET), MIN(MARKED_AT) FROM {marks} '
            'WHERE TOPIC = ? GROUP BY PARTITIONS, "PARTITION"'
        ),
        written_elsewhere=(
            "SELECT e.ACCOUNT_ID, e.EVENT_ID, e.KAFKA_OFFSET, "
            f"COALESCE(e.ACCEPTED_AT, e.WRITTEN_AT) FROM {events} e JOIN ("
            "SELECT value[0]::string AS A, value[1]::string AS E "
            "FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?)))) k "
            "ON e.ACCOUNT_ID = k.A AND e.EVENT_ID = k.E "
            "WHERE e.KAFKA_TOPIC = ? AND e.KAFKA_PARTITION <> ? "
            "AND COALESCE(e.ACCEPTED_AT, e.WRITTEN_AT) >= TO_TIMESTAMP_TZ(?, 3)"
        ),
    )


@dataclass(frozen=True, slots=True)
class WindowSql:
    """What a consumer reads at its (re)start to rebuild its retry window
    (``actors.window_keys``): the partition's rows accepted since a time (WRITTEN_AT for rows
    without an accept time), at most a bound of the newest, in pages by offset. A page starts
    at an offset, not at a row count, so each is a range a real warehouse prunes to and a
    reader resumes at after a lost connection."""

    # (topic, partition, since_ms, limit) -> MIN(KAFKA_OFFSET) of the ``limit`` newest such
    # rows by offset; NULL when there is none
    first_offset: str
    # (topic, partition, since_ms, from_offset, page_rows) -> (REPLAY_OF, ACCOUNT_ID, EVENT_ID,
    # KAFKA_OFFSET, accept time in epoch ms) of the first ``page_rows`` such rows at/after
    # from_offset, by offset
    page: str


def window_sql(config: SnowflakeConfig) -> WindowSql:
    """The statements for ``config``'s events table."""
    events = _identifier("snowflake.events_table", config.events_table)
    recent = ("KAFKA_TOPIC = ? AND KAFKA_PARTITION = ? "
              "AND COALESCE(ACCEPTED_AT, WRITTEN_AT) >= TO_TIMESTAMP_TZ(?, 3)")
    return WindowSql(
        first_offset=(
            f"SELECT MIN(KAFKA_OFFSET) FROM (SELECT KAFKA_OFFSET FROM {events} WHERE {recent} "
            "ORDER BY KAFKA_OFFSET DESC LIMIT ?)"
        ),
        # Epoch ms computed by the warehouse (a fetched TIMESTAMP_TZ costs a datetime per row),
        # rounded down like epoch_ms (the emulator rounds EPOCH_MILLISECOND to the nearest).
        page=(
            "SELECT REPLAY_OF, ACCOUNT_ID, EVENT_ID, KAFKA_OFFSET, "
            "FLOOR(DATE_PART(EPOCH_MICROSECOND, COALESCE(ACCEPTED_AT, WRITTEN_AT)) / 1000) "
            f"FROM {events} WHERE {recent} AND KAFKA_OFFSET >= ? ORDER BY KAFKA_OFFSET LIMIT ?"
        ),
    )


def epoch_ms(value: datetime) -> int:
    """A TIMESTAMP_TZ as fetched (an aware datetime) in epoch milliseconds, exactly."""
    return (value - _EPOCH) // _MILLISECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def _v(field: str) -> str:
    """The flattened row's element holding ``field`` (rows are JSON arrays, see EventRow)."""
    return f"value[{row_field_index(field)}]"


def _identifier(key: str, name: str) -> str:
    if _IDENTIFIER.match(name) is None:
        raise ConfigError(f"{key}: {name!r} is not an unquoted Snowflake identifier")
    return name
