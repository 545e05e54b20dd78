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
  Never UPDATE: a sink killed mid-transaction can leave an open transaction in the emulator that
  would make an UPDATE of the same row conflict forever; inserts never conflict. Superseded
  rows are pruned by the sink (``prune_offsets``, every ``SinkConfig.prune_offsets_every``
  writes of a partition): a DELETE of the partition's rows below the offset it just committed,
  run as its own autocommit statement OUTSIDE the write transaction, so a sink killed
  mid-prune never leaves an open DELETE behind, and an open write transaction (which only
  inserts) does not conflict with it. The bound is an offset the writer just read or
  committed, never above the partition's maximum, so the max row (the committed position) is
  never deleted. A failed prune only leaves extra rows until the next one.

Timestamps are TIMESTAMP_TZ: the emulator (DuckDB TIMESTAMPTZ) returns them as aware UTC
datetimes, which round-trip exactly to the microsecond; Snowflake keeps the offset given.
The emulator stores NULL timestamps correctly but its result encoding returns them as the epoch
(1970-01-01): test for NULL with ``IS NULL`` in SQL, not in the fetched value.

Rows arrive as ONE bound JSON array per batch (``actors.rows.encode_rows``) that the warehouse
flattens server side: one statement per batch, valid Snowflake SQL and fast on the emulator
(``executemany`` is ~40x slower there, ``write_pandas``/``PUT``/``MERGE`` from FLATTEN fail).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from actors.config import SnowflakeConfig
from actors.exceptions import ConfigError
from actors.rows import row_field_index

# Unquoted Snowflake identifiers, optionally qualified (db.schema.table). We interpolate table
# names into SQL, so anything else is refused; values are always bound.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*){0,2}$")

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
    create_events: str
    # Run after create_events: bring an events table created by an earlier version up to date.
    migrate_events: tuple[str, ...]
    create_offsets: str
    # (rows_json: str, min_offset: int) -> inserts the rows with kafka_offset >= min_offset
    insert_rows: str
    # (topic, partition, next_offset)
    insert_offset: str
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
    return WarehouseSql(
        events_table=events,
        offsets_table=offsets,
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
WHERE {_v("kafka_offset")}::number >= ?""",
        insert_offset=(
            f'INSERT INTO {offsets} (TOPIC, "PARTITION", NEXT_OFFSET, WRITTEN_AT) '
            "SELECT ?, ?, ?, CURRENT_TIMESTAMP()"
        ),
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
