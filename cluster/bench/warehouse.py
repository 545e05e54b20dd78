"""``eventray bench warehouse``: what one batch write costs the warehouse, per row, by statement.

The sink's write transaction (``actors.sink``: BEGIN, the owners-table fence UPDATE, the
committed offset read, the rows INSERT, the offset INSERT, COMMIT) is run through
snowflake-connector-python against a Snowflake emulator this bench starts on a free port in a
temp dir (``cluster.local.snowflake_emulator``: fakesnow's server on DuckDB), for each candidate
table shape and INSERT statement, with the same rows in the same batches (``--batch`` rows, one
bound JSON array, qmark binding). For each candidate it prints:

* ``emulator``: the emulator process's CPU time (user + system) per row over the measured
  batches (the first batch of each candidate is a warm-up, not counted); this is the figure the
  pipeline benchmark's "snowflake emulator" role shows;
* ``in-process``: the same statements through fakesnow in this process (no HTTP, no server;
  sqlglot's transpilation + DuckDB), CPU per row: what the server adds is the difference;
  both run with the emulator's speed-ups (``cluster.local.emulator_speedups``) unless
  ``--stock-emulator``;
* ``sink``: this process's CPU per row while it drove the emulator (encoding the rows,
  the connector's request: gzip at the sink's level, JSON, HTTP).

and once, as the floor: ``raw DuckDB``, the same rows inserted into the same columns by DuckDB
itself in this process (``unnest`` of the bound array, no fakesnow), CPU per row.

Candidates (all valid Snowflake SQL; ``current`` is what ``actors.warehouse`` sends today):
see ``CANDIDATES``. ``--json PATH`` writes ``{"rows_per_batch", "batches", "raw_duckdb_us_per_row",
"candidates": [{"name", "emulator_us_per_row", "in_process_us_per_row", "sink_us_per_row",
"bytes_per_row"}]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import msgspec

from actors.config import SinkConfig, SnowflakeConfig
from actors.request_compression import effective_level, set_request_compression
from actors.rows import Body, EventRow, encode_rows, row_from_event
from actors.warehouse import owner_sql, warehouse_sql
from cluster.bench.workload import WorkloadSpec, generate
from cluster.settings import Settings

_TOPIC: Final = "bench-events"
_PARTITION: Final = 0
_EPOCH: Final = 1
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
_REQUEST_EVENTS: Final = 1000  # events per gateway request: rows of one request share its id


# -- candidates -----------------------------------------------------------------------------------

Encode = Callable[[Sequence[EventRow]], bytes]
# (rows_json, min_offset, topic, partition, token) -> the INSERT's parameters
Params = Callable[[str, int, str, int, str], tuple[object, ...]]


@dataclass(frozen=True)
class Candidate:
    name: str
    what: str
    create: str  # CREATE TABLE {events} (...)
    insert: str  # INSERT ... with {events} and {holds_token} to fill in
    encode: Encode
    params: Params


def _standard_params(rows: str, start: int, topic: str, partition: int,
                     token: str) -> tuple[object, ...]:
    return rows, start, topic, partition, token


def _constants_params(rows: str, start: int, topic: str, partition: int,
                      token: str) -> tuple[object, ...]:
    return topic, partition, rows, start, topic, partition, token


_V1_TABLE: Final = """CREATE TABLE IF NOT EXISTS {events} (
    EVENT_ID VARCHAR NOT NULL, ACCOUNT_ID VARCHAR NOT NULL, EVENT_TYPE VARCHAR NOT NULL,
    OCCURRED_AT TIMESTAMP_TZ NOT NULL, SCHEMA_VERSION NUMBER(10, 0) NOT NULL, BODY VARIANT,
    KAFKA_TOPIC VARCHAR NOT NULL, KAFKA_PARTITION NUMBER(10, 0) NOT NULL,
    KAFKA_OFFSET NUMBER(38, 0) NOT NULL, REQUEST_ID VARCHAR, ACCEPTED_AT TIMESTAMP_TZ,
    WRITTEN_AT TIMESTAMP_TZ NOT NULL, REPLAY_OF VARCHAR)"""
_V1_COLUMNS: Final = ("EVENT_ID, ACCOUNT_ID, EVENT_TYPE, OCCURRED_AT, SCHEMA_VERSION, BODY, "
                      "KAFKA_TOPIC, KAFKA_PARTITION, KAFKA_OFFSET, REQUEST_ID, ACCEPTED_AT, "
                      "WRITTEN_AT, REPLAY_OF")
_V1_ARRAYS: Final = f"""INSERT INTO {{events}} ({_V1_COLUMNS})
SELECT value[0]::string, value[1]::string, value[2]::string, value[3]::timestamp_tz,
    value[4]::number, value[5], value[6]::string, value[7]::number, value[8]::number,
    value[9]::string, TO_TIMESTAMP_TZ(value[10]::number, 3), CURRENT_TIMESTAMP(),
    value[11]::string
FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?)))
WHERE value[8]::number >= ? AND {{holds_token}}"""
_V1_OBJECTS: Final = f"""INSERT INTO {{events}} ({_V1_COLUMNS})
SELECT value:event_id::string, value:account_id::string, value:event_type::string,
    value:occurred_at::timestamp_tz, value:schema_version::number, value:body,
    value:kafka_topic::string, value:kafka_partition::number, value:kafka_offset::number,
    value:request_id::string, TO_TIMESTAMP_TZ(value:accepted_at_ms::number, 3),
    CURRENT_TIMESTAMP(), value:replay_of::string
FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?)))
WHERE value:kafka_offset::number >= ? AND {{holds_token}}"""
# The batch's topic and partition bound once, not repeated in every row.
_V1_CONSTANTS: Final = f"""INSERT INTO {{events}} ({_V1_COLUMNS})
SELECT value[0]::string, value[1]::string, value[2]::string, value[3]::timestamp_tz,
    value[4]::number, value[5], ?, ?, value[6]::number,
    value[7]::string, TO_TIMESTAMP_TZ(value[8]::number, 3), CURRENT_TIMESTAMP(),
    value[9]::string
FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?)))
WHERE value[6]::number >= ? AND {{holds_token}}"""
# ... and FLATTEN's input kept from being constant-folded by the emulator (a volatile term:
# RANDOM() is evaluated once per statement, never NULL; the value is the bound array).
_V1_VOLATILE: Final = _V1_CONSTANTS.replace(
    "PARSE_JSON(?)", "PARSE_JSON(IFF(RANDOM() IS NULL, NULL, ?))")
# v1_arrays with only that change.
_V1_ARRAYS_VOLATILE: Final = _V1_ARRAYS.replace(
    "PARSE_JSON(?)", "PARSE_JSON(IFF(RANDOM() IS NULL, NULL, ?))")
# ... and OCCURRED_AT as epoch microseconds (16 bytes instead of a 29-byte ISO string).
_V1_LEAN: Final = _V1_VOLATILE.replace("value[3]::timestamp_tz",
                                       "TO_TIMESTAMP_TZ(value[3]::number, 6)")

# The Snowflake Kafka connector's shape: the payload and the record's metadata as VARIANTs,
# typed only the columns queries filter and join on.
_CONNECTOR_TABLE: Final = """CREATE TABLE IF NOT EXISTS {events} (
    EVENT_ID VARCHAR NOT NULL, ACCOUNT_ID VARCHAR NOT NULL, EVENT_TYPE VARCHAR NOT NULL,
    OCCURRED_AT TIMESTAMP_TZ NOT NULL, KAFKA_TOPIC VARCHAR NOT NULL,
    KAFKA_PARTITION NUMBER(10, 0) NOT NULL, KAFKA_OFFSET NUMBER(38, 0) NOT NULL,
    ACCEPTED_AT TIMESTAMP_TZ, WRITTEN_AT TIMESTAMP_TZ NOT NULL, REPLAY_OF VARCHAR,
    BODY VARIANT, RECORD_METADATA VARIANT)"""
_CONNECTOR: Final = """INSERT INTO {events} (EVENT_ID, ACCOUNT_ID, EVENT_TYPE, OCCURRED_AT,
    KAFKA_TOPIC, KAFKA_PARTITION, KAFKA_OFFSET, ACCEPTED_AT, WRITTEN_AT, REPLAY_OF, BODY,
    RECORD_METADATA)
SELECT value[0]::string, value[1]::string, value[2]::string, value[3]::timestamp_tz,
    ?, ?, value[4]::number, TO_TIMESTAMP_TZ(value[5]::number, 3), CURRENT_TIMESTAMP(),
    value[6]::string, value[7], value[8]
FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?)))
WHERE value[4]::number >= ? AND {holds_token}"""
# The whole row as one VARIANT (an object) beside the typed keys.
_ROW_VARIANT_TABLE: Final = """CREATE TABLE IF NOT EXISTS {events} (
    EVENT_ID VARCHAR NOT NULL, ACCOUNT_ID VARCHAR NOT NULL, KAFKA_TOPIC VARCHAR NOT NULL,
    KAFKA_PARTITION NUMBER(10, 0) NOT NULL, KAFKA_OFFSET NUMBER(38, 0) NOT NULL,
    ACCEPTED_AT TIMESTAMP_TZ, WRITTEN_AT TIMESTAMP_TZ NOT NULL, REPLAY_OF VARCHAR,
    "ROW" VARIANT)"""
_ROW_VARIANT: Final = """INSERT INTO {events} (EVENT_ID, ACCOUNT_ID, KAFKA_TOPIC,
    KAFKA_PARTITION, KAFKA_OFFSET, ACCEPTED_AT, WRITTEN_AT, REPLAY_OF, "ROW")
SELECT value:event_id::string, value:account_id::string, ?, ?, value:kafka_offset::number,
    TO_TIMESTAMP_TZ(value:accepted_at_ms::number, 3), CURRENT_TIMESTAMP(),
    value:replay_of::string, value
FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?)))
WHERE value:kafka_offset::number >= ? AND {holds_token}"""


class _ObjectRow(msgspec.Struct, gc=False):
    event_id: str
    account_id: str
    event_type: str
    occurred_at: Any
    schema_version: int
    body: Body
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int
    request_id: str | None
    accepted_at_ms: int | None
    replay_of: str | None


class _Metadata(msgspec.Struct, gc=False):
    topic: str
    partition: int
    offset: int
    request_id: str | None
    accepted_at_ms: int | None
    schema_version: int


_ENCODER: Final = msgspec.json.Encoder()


def _objects(rows: Sequence[EventRow]) -> bytes:
    return _ENCODER.encode([_ObjectRow(*msgspec.structs.astuple(r)) for r in rows])


def _without_constants(rows: Sequence[EventRow]) -> bytes:
    return _ENCODER.encode([
        (r.event_id, r.account_id, r.event_type, r.occurred_at, r.schema_version, r.body,
         r.kafka_offset, r.request_id, r.accepted_at_ms, r.replay_of) for r in rows])


def _lean(rows: Sequence[EventRow]) -> bytes:
    return _ENCODER.encode([
        (r.event_id, r.account_id, r.event_type, _epoch_us(r.occurred_at), r.schema_version,
         r.body, r.kafka_offset, r.request_id, r.accepted_at_ms, r.replay_of) for r in rows])


def _epoch_us(at: datetime) -> int:
    return (at - _EPOCH_UTC) // _MICROSECOND


_EPOCH_UTC: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def _connector(rows: Sequence[EventRow]) -> bytes:
    return _ENCODER.encode([
        (r.event_id, r.account_id, r.event_type, r.occurred_at, r.kafka_offset,
         r.accepted_at_ms, r.replay_of, r.body,
         _Metadata(r.kafka_topic, r.kafka_partition, r.kafka_offset, r.request_id,
                   r.accepted_at_ms, r.schema_version)) for r in rows])


CANDIDATES: Final[tuple[Candidate, ...]] = (
    Candidate("v1_arrays", "13 typed columns, rows as arrays (before)", _V1_TABLE,
              _V1_ARRAYS, encode_rows, _standard_params),
    Candidate("v1_objects", "13 typed columns, rows as keyed objects", _V1_TABLE,
              _V1_OBJECTS, _objects, _standard_params),
    Candidate("v1_constants", "13 typed columns, topic/partition bound once", _V1_TABLE,
              _V1_CONSTANTS, _without_constants, _constants_params),
    Candidate("v1_arrays_volatile", "v1_arrays, FLATTEN's input not constant-folded",
              _V1_TABLE, _V1_ARRAYS_VOLATILE, encode_rows, _standard_params),
    Candidate("v1_volatile", "v1_constants, FLATTEN's input not constant-folded", _V1_TABLE,
              _V1_VOLATILE, _without_constants, _constants_params),
    Candidate("v1_lean", "v1_volatile, OCCURRED_AT bound as epoch µs", _V1_TABLE,
              _V1_LEAN, _lean, _constants_params),
    Candidate("connector", "10 typed + BODY and RECORD_METADATA VARIANTs", _CONNECTOR_TABLE,
              _CONNECTOR, _connector, _constants_params),
    Candidate("row_variant", "8 typed keys + the whole row as one VARIANT object",
              _ROW_VARIANT_TABLE, _ROW_VARIANT, _objects, _constants_params),
)


def current_candidate() -> Candidate:
    """What ``actors.warehouse`` sends today, as a candidate."""
    placeholder = "BENCH_EVENTS_TABLE"
    config = SnowflakeConfig(events_table=placeholder)
    create = warehouse_sql(config).create_events
    insert = owner_sql(config, _TOPIC, _PARTITION).insert_rows
    where = insert.rsplit(" AND EXISTS (", 1)[0]  # the token check, filled in per table
    return Candidate("current", "actors.warehouse as it is",
                     create.replace(placeholder, "{events}"),
                     where.replace(placeholder, "{events}") + " AND {holds_token}",
                     encode_rows, _standard_params)


# -- rows -----------------------------------------------------------------------------------------

def bench_rows(count: int) -> list[EventRow]:
    """``count`` realistic rows of one partition (offsets 0..), request ids per 1000."""
    workload = generate(WorkloadSpec(events=count, batch_size=count, invalid_share=0.0,
                                     refused_share=0.0, retry_share=0.0))
    events = [event for batch in workload.batches for event in batch]
    accepted = int(time.time() * 1000)
    request_id = ""
    rows = []
    for offset, event in enumerate(events):
        if offset % _REQUEST_EVENTS == 0:
            request_id = uuid.uuid4().hex
        rows.append(row_from_event(event, topic=_TOPIC, partition=_PARTITION, offset=offset,
                                   request_id=request_id, accepted_at_ms=accepted + offset))
    return rows


# -- the write transaction ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Statements:
    create_events: str
    create_offsets: str
    create_owners: str
    owner_row: str
    fence: str
    committed: str
    insert_rows: str
    insert_offset: str


def _statements(candidate: Candidate, events_table: str) -> _Statements:
    config = SnowflakeConfig(events_table=events_table,
                             offsets_table=f"{events_table}_OFFSETS",
                             owners_table=f"{events_table}_OWNERS")
    sql = warehouse_sql(config)
    owners = owner_sql(config, _TOPIC, _PARTITION)
    holds_token = (f'EXISTS (SELECT 1 FROM {owners.owners_table} WHERE TOPIC = ? AND '
                   '"PARTITION" = ? AND WRITE_TOKEN = ?)')
    return _Statements(
        create_events=candidate.create.format(events=events_table),
        create_offsets=sql.create_offsets,
        create_owners=owners.create,
        owner_row=owners.insert,
        fence=owners.fence_write,
        committed=sql.committed_offset,
        insert_rows=candidate.insert.format(events=events_table, holds_token=holds_token),
        insert_offset=owners.insert_offset,
    )


def _prepare(cursor: Any, statements: _Statements) -> None:
    cursor.execute(statements.create_events)
    cursor.execute(statements.create_offsets)
    cursor.execute(statements.create_owners)
    cursor.execute(statements.owner_row, (_TOPIC, _PARTITION, _EPOCH, "bench"))


def _write(cursor: Any, statements: _Statements, candidate: Candidate, rows: bytes, *,
           from_offset: int, to_offset: int) -> int:
    """One write transaction as ``SnowflakeWriter._write_once`` runs it; rows inserted."""
    key = (_TOPIC, _PARTITION)
    token = uuid.uuid4().hex
    cursor.execute("BEGIN")
    cursor.execute(statements.fence, (token, *key, _EPOCH))
    if _rows_changed(cursor) != 1:
        raise RuntimeError("the bench's owner row is missing")
    cursor.execute(statements.committed, key)
    row = cursor.fetchone()
    committed = from_offset if row is None or row[0] is None else int(row[0])
    cursor.execute(statements.insert_rows,
                   candidate.params(rows.decode(), committed, *key, token))
    written = _rows_changed(cursor)
    cursor.execute(statements.insert_offset, (*key, to_offset, *key, token))
    cursor.execute("COMMIT")
    return written


def _rows_changed(cursor: Any) -> int:
    rowcount = cursor.rowcount
    if isinstance(rowcount, int) and rowcount >= 0:
        return rowcount
    row = cursor.fetchone()
    return int(row[0]) if row else 0


# -- measuring ------------------------------------------------------------------------------------

def _process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass
class Result:
    """One candidate's figures, one per round; the least of the rounds is reported (on a
    shared machine, interference only adds CPU time)."""

    name: str
    what: str
    bytes_per_row: float
    emulator_us: list[float] = field(default_factory=list)
    in_process_us: list[float] = field(default_factory=list)
    sink_us: list[float] = field(default_factory=list)

    @property
    def emulator_us_per_row(self) -> float | None:
        return min(self.emulator_us, default=None)

    @property
    def in_process_us_per_row(self) -> float | None:
        return min(self.in_process_us, default=None)

    @property
    def sink_us_per_row(self) -> float | None:
        return min(self.sink_us, default=None)


def _connector_of(config: SnowflakeConfig) -> Callable[[], Any]:
    def connect() -> Any:
        import snowflake.connector

        return snowflake.connector.connect(**config.connect_kwargs(), paramstyle="qmark",
                                           autocommit=True)

    return connect


def _batches(rows: list[EventRow], size: int) -> list[tuple[int, int, Sequence[EventRow]]]:
    return [(start, min(start + size, len(rows)), rows[start:start + size])
            for start in range(0, len(rows), size)]


def _run_emulator(candidate: Candidate, connect: Callable[[], Any], emulator_pid: int,
                  batches: list[tuple[int, int, Sequence[EventRow]]], table: str) -> tuple[
                      float, float]:
    """(emulator µs per row, this process's µs per row) over every batch but the first."""
    statements = _statements(candidate, table)
    with connect() as conn, conn.cursor() as cursor:
        _prepare(cursor, statements)
        measured_rows = 0
        emulator = sink = 0.0
        for n, (start, end, batch) in enumerate(batches):
            sink_started = time.process_time()
            rows = candidate.encode(batch)
            emulator_started = _process_cpu_s(emulator_pid)
            written = _write(cursor, statements, candidate, rows, from_offset=start,
                         to_offset=end)
            emulator_s = _process_cpu_s(emulator_pid) - emulator_started
            sink_s = time.process_time() - sink_started
            if written != len(batch):
                raise RuntimeError(f"{candidate.name}: wrote {written} of {len(batch)} rows")
            if n == 0:
                continue  # warm-up: the first statement of a shape transpiles cold
            measured_rows += len(batch)
            emulator += emulator_s
            sink += sink_s
    return emulator / measured_rows * 1e6, sink / measured_rows * 1e6


def _run_in_process(candidate: Candidate, db_dir: Path,
                    batches: list[tuple[int, int, Sequence[EventRow]]]) -> float:
    """fakesnow in this process (no server): CPU µs per row over every batch but the first."""
    from fakesnow.instance import FakeSnow

    db_dir.mkdir(parents=True, exist_ok=True)
    fake = FakeSnow(db_path=db_dir)
    conn = fake.connect(database="BENCH", schema="PUBLIC", paramstyle="qmark")
    cursor = conn.cursor()
    statements = _statements(candidate, f"INPROC_{candidate.name.upper()}")
    _prepare(cursor, statements)
    encoded = [(start, end, len(batch), candidate.encode(batch)) for start, end, batch in batches]
    measured_rows = 0
    cpu = 0.0
    for n, (start, end, count, rows) in enumerate(encoded):
        started = time.process_time()
        written = _write(cursor, statements, candidate, rows, from_offset=start,
                         to_offset=end)
        took = time.process_time() - started
        if written != count:
            raise RuntimeError(f"{candidate.name} in process: wrote {written} of {count} rows")
        if n:
            measured_rows += count
            cpu += took
    started = time.process_time()
    fake.duck_conn.execute("CHECKPOINT")  # what the rows cost to store, compressed
    cpu += time.process_time() - started
    conn.close()
    fake.duck_conn.close()
    return cpu / measured_rows * 1e6


_RAW_TABLE: Final = """CREATE TABLE EVENTS (EVENT_ID VARCHAR NOT NULL,
    ACCOUNT_ID VARCHAR NOT NULL, EVENT_TYPE VARCHAR NOT NULL, OCCURRED_AT TIMESTAMPTZ NOT NULL,
    SCHEMA_VERSION BIGINT NOT NULL, BODY JSON, KAFKA_TOPIC VARCHAR NOT NULL,
    KAFKA_PARTITION BIGINT NOT NULL, KAFKA_OFFSET BIGINT NOT NULL, REQUEST_ID VARCHAR,
    ACCEPTED_AT TIMESTAMPTZ, WRITTEN_AT TIMESTAMPTZ NOT NULL, REPLAY_OF VARCHAR)"""
_RAW_INSERT: Final = """INSERT INTO EVENTS SELECT v->>'$[0]', v->>'$[1]', v->>'$[2]',
    CAST(v->>'$[3]' AS TIMESTAMPTZ), CAST(v->'$[4]' AS BIGINT), v->'$[5]', v->>'$[6]',
    CAST(v->'$[7]' AS BIGINT), CAST(v->'$[8]' AS BIGINT), v->>'$[9]',
    make_timestamptz(CAST(v->'$[10]' AS BIGINT) * 1000), current_timestamp, v->>'$[11]'
FROM (SELECT UNNEST(CAST(CAST(? AS JSON) AS JSON[])) AS v)
WHERE CAST(v->'$[8]' AS BIGINT) >= ?"""


def _run_raw_duckdb(db_dir: Path, batches: list[tuple[int, int, Sequence[EventRow]]]) -> float:
    """DuckDB alone, in this process, on a database file: the same rows into the same columns
    from one bound JSON array, in a transaction per batch. CPU µs per row (first batch not
    counted)."""
    import duckdb

    db_dir.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect(str(db_dir / "raw.db"))
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute(_RAW_TABLE)
    encoded = [(start, len(batch), encode_rows(batch).decode()) for start, _, batch in batches]
    measured_rows = 0
    cpu = 0.0
    for n, (start, count, rows) in enumerate(encoded):
        started = time.process_time()
        conn.execute("BEGIN")
        conn.execute(_RAW_INSERT, [rows, start])
        conn.execute("COMMIT")
        took = time.process_time() - started
        if n:
            measured_rows += count
            cpu += took
    started = time.process_time()
    conn.execute("CHECKPOINT")
    cpu += time.process_time() - started
    conn.close()
    return cpu / measured_rows * 1e6


# -- the command ----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(["current", *(c.name for c in CANDIDATES)])
    parser.add_argument("--rows", type=int, default=120_000,
                        help="rows per candidate (default 120k: 6 batches, the first a warm-up)")
    parser.add_argument("--batch", type=int, default=20_000,
                        help="rows per write transaction (default: the consumer's batch size)")
    parser.add_argument("--only", help=f"comma-separated candidates (default all: {names})")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of every candidate, interleaved; the least is reported")
    parser.add_argument("--no-in-process", action="store_true",
                        help="skip the in-process fakesnow figures")
    parser.add_argument("--stock-emulator", action="store_true",
                        help="fakesnow as it is, without cluster.local.emulator_speedups "
                             "(in the emulator and in process)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")


def run(settings: Settings, args: argparse.Namespace) -> int:
    from cluster.local.snowflake_emulator import LocalSnowflake

    candidates = [current_candidate(), *CANDIDATES]
    if args.only:
        wanted = {name.strip() for name in str(args.only).split(",")}
        unknown = wanted - {c.name for c in candidates}
        if unknown:
            raise SystemExit(f"unknown candidates: {', '.join(sorted(unknown))}")
        candidates = [c for c in candidates if c.name in wanted]
    rows = bench_rows(args.rows)
    batches = _batches(rows, args.batch)
    if len(batches) < 2:
        raise SystemExit("--rows must make at least two batches (the first is a warm-up)")
    sink: SinkConfig = settings.pipeline.sink
    set_request_compression(effective_level(sink.request_compression_level, "127.0.0.1"))
    speedups = not args.stock_emulator
    if speedups:  # for the in-process figures; the emulator installs them itself
        from cluster.local.emulator_speedups import install

        install()
    workdir = Path(tempfile.mkdtemp(prefix="eventray-bench-warehouse-"))
    emulator = LocalSnowflake(workdir / "emulator", port=0, log_dir=workdir, speedups=speedups)
    print(f"bench warehouse: {len(rows):,} rows per candidate in batches of {args.batch:,} "
          f"(first batch a warm-up), emulator in {workdir}"
          f"{'' if speedups else ', stock fakesnow (no speed-ups)'}", flush=True)
    by_name: dict[str, Result] = {}
    try:
        raw = _run_raw_duckdb(workdir / "raw", batches)
        print(f"raw DuckDB (in process, no fakesnow): {raw:.1f} µs/row", flush=True)
        emulator.start()
        pid = emulator.pid
        assert pid is not None
        for round_ in range(1, args.rounds + 1):
            for candidate in candidates:
                result = by_name.setdefault(candidate.name, Result(
                    candidate.name, candidate.what,
                    len(candidate.encode(rows[: args.batch])) / min(args.batch, len(rows))))
                # A database (DuckDB file) of its own: its WAL and checkpoints are its own too.
                database = f"BENCH_R{round_}_{candidate.name.upper()}"
                emulator.ensure_database(database)
                config = emulator.snowflake_config(database=database)
                emulator_us, sink_us = _run_emulator(candidate, _connector_of(config), pid,
                                                     batches, "EVENTS")
                result.emulator_us.append(emulator_us)
                result.sink_us.append(sink_us)
                if not args.no_in_process:
                    result.in_process_us.append(_run_in_process(
                        candidate, workdir / f"inproc-{round_}-{candidate.name}", batches))
                print(f"round {round_}: {_line(result, last=True)}", flush=True)
    finally:
        emulator.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results = list(by_name.values())
    print()
    print(f"least of {args.rounds} rounds per figure:")
    print(_table(results, raw))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "rows_per_batch": args.batch, "batches": len(batches) - 1,
            "emulator_speedups": speedups,
            "raw_duckdb_us_per_row": round(raw, 2),
            "candidates": [{
                "name": r.name, "what": r.what,
                "emulator_us_per_row": _rounded(r.emulator_us_per_row),
                "in_process_us_per_row": _rounded(r.in_process_us_per_row),
                "sink_us_per_row": _rounded(r.sink_us_per_row),
                "rounds": {"emulator_us_per_row": [round(v, 2) for v in r.emulator_us],
                           "in_process_us_per_row": [round(v, 2) for v in r.in_process_us],
                           "sink_us_per_row": [round(v, 2) for v in r.sink_us]},
                "bytes_per_row": round(r.bytes_per_row, 1)} for r in results],
        }, indent=2) + "\n")
        print(f"written {args.json}")
    return 0


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} µs"


def _line(r: Result, *, last: bool) -> str:
    """The candidate's figures: of its last round, or the least of its rounds."""
    def pick(values: list[float]) -> float | None:
        if not values:
            return None
        return values[-1] if last else min(values)

    return (f"{r.name}: emulator {_us(pick(r.emulator_us))}/row, in process "
            f"{_us(pick(r.in_process_us))}/row, sink {_us(pick(r.sink_us))}/row, "
            f"{r.bytes_per_row:.0f} bytes/row")


def _table(results: list[Result], raw: float) -> str:
    lines = ["| candidate | emulator CPU/row | x raw DuckDB | fakesnow in process | "
             "sink CPU/row | bytes/row |", "|---|---|---|---|---|---|"]
    for r in results:
        ratio = "-" if r.emulator_us_per_row is None else f"{r.emulator_us_per_row / raw:.1f}"
        lines.append(f"| {r.name}: {r.what} | {_us(r.emulator_us_per_row)} | {ratio} | "
                     f"{_us(r.in_process_us_per_row)} | {_us(r.sink_us_per_row)} | "
                     f"{r.bytes_per_row:.0f} |")
    lines.append(f"| raw DuckDB, same rows and columns, in process | {raw:.1f} µs | 1.0 | "
                 "- | - | - |")
    return "\n".join(lines)
