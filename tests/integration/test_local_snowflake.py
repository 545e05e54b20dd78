"""The Snowflake emulator as a service, through the real connector: rows written are read
back, and survive a restart (graceful and kill -9) on the same data directory."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import snowflake.connector

from actors.config import SnowflakeConfig
from cluster.local.processes import ServiceStartError, group_members
from cluster.local.snowflake_emulator import LocalSnowflake

pytestmark = pytest.mark.integration


def query(config: SnowflakeConfig, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with snowflake.connector.connect(**config.connect_kwargs()) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []


def test_rows_written_through_the_connector_are_read_back(
        snowflake_config: SnowflakeConfig) -> None:
    query(snowflake_config,
          "CREATE TABLE roundtrip (id INTEGER, name VARCHAR, amount NUMBER(18,2))")
    with snowflake.connector.connect(**snowflake_config.connect_kwargs()) as conn, \
            conn.cursor() as cur:
        cur.execute("BEGIN")
        for i in range(5):
            cur.execute("INSERT INTO roundtrip VALUES (%s, %s, %s)", (i, f"n{i}", i * 1.5))
        cur.execute("COMMIT")
        # A rolled back write leaves nothing.
        cur.execute("BEGIN")
        cur.execute("INSERT INTO roundtrip VALUES (%s, %s, %s)", (99, "gone", 0))
        cur.execute("ROLLBACK")

    rows = query(snowflake_config, "SELECT id, name, amount FROM roundtrip ORDER BY id")
    assert [(r[0], r[1], float(r[2])) for r in rows] == [(i, f"n{i}", i * 1.5) for i in range(5)]


@pytest.fixture
def own_emulator(tmp_path: Path) -> Iterator[LocalSnowflake]:
    server = LocalSnowflake(tmp_path / "snowflake")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(180)
def test_data_persists_across_restart_and_kill_9(own_emulator: LocalSnowflake) -> None:
    own_emulator.start()
    port = own_emulator.port
    own_emulator.ensure_database("PERSIST", "APP")
    config = own_emulator.snowflake_config(database="PERSIST", schema="APP")
    query(config, "CREATE TABLE kept (id INTEGER, note VARCHAR)")
    query(config, "INSERT INTO kept VALUES (1, 'before stop')")

    own_emulator.restart()
    assert own_emulator.port == port
    query(config, "INSERT INTO kept VALUES (2, 'before kill')")
    pid = own_emulator.pid
    assert pid is not None
    own_emulator.kill()
    assert not own_emulator.is_running()
    assert group_members(pid) == []
    own_emulator.start()

    assert query(config, "SELECT id, note FROM kept ORDER BY id") == [
        (1, "before stop"), (2, "before kill")]


@pytest.mark.timeout(60)
def test_a_taken_port_fails_the_start_and_names_the_port(
        snowflake_server: LocalSnowflake, tmp_path: Path) -> None:
    other = LocalSnowflake(tmp_path / "snowflake", port=snowflake_server.port)
    with pytest.raises(ServiceStartError, match=str(snowflake_server.port)):
        other.start()
    assert not other.is_running()


# -- the emulator's speed-ups (cluster.local.emulator_speedups) return fakesnow's own results --

@pytest.fixture(scope="module")
def stock_snowflake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSnowflake]:
    """fakesnow as it is, without the emulator's speed-ups: the results to compare with."""
    server = LocalSnowflake(tmp_path_factory.mktemp("stock") / "snowflake", speedups=False)
    try:
        server.start(timeout=90)
        yield server
    finally:
        server.stop()


def bound_query(config: SnowflakeConfig, sql: str,
                params: tuple[Any, ...]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows and (name, type code) of each column, binds sent to the server as the sink's are."""
    with snowflake.connector.connect(**config.connect_kwargs(), paramstyle="qmark",
                                     network_timeout=30) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall()), [(c.name, c.type_code) for c in cur.description]


FLATTEN_INPUTS = {
    "arrays of arrays": '[[1, "a", [2, [3]]], [], [null], [[[]]]]',
    "arrays of objects": '[{"a": 1, "b": {"c": [1, 2]}}, {"a": null}, {}, {"a": 1, "a": 2}]',
    "nested and odd values": ('[1.5, 1e5, 1E-7, -0, 12345678901234567890123, "\\u00e9\\n\\"\\/", '
                              '"\\ud83d\\ude00", true, false, "", {"k": [null, {"x": "y"}]}]'),
    "nulls": "[null, 1, null, {}, null]",
    "empty array": "[]",
    "blanks around": " \n\t[ 1 , 2 ] ",
    "an object": '{"k": 1, "j": [2], "n": null}',
    "json null": "null",
}
# SEQ as text: fakesnow's server answers an HTTP 500 for a UBIGINT past the int64 range.
FLATTEN_SQL = ("SELECT SEQ::string, KEY, PATH, INDEX, VALUE, THIS, value::string, value[0], "
               "value:a, typeof(value) FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?)))")
ELEMENTS_SQL = ("SELECT index, value, value[0]::string, value:a::string "
                "FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?))) f WHERE f.index >= ?")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", list(FLATTEN_INPUTS))
def test_flatten_returns_what_fakesnow_returns(
        name: str, snowflake_config: SnowflakeConfig, stock_snowflake: LocalSnowflake) -> None:
    stock = stock_snowflake.snowflake_config(database=snowflake_config.database)
    text = FLATTEN_INPUTS[name]
    rows, _ = bound_query(snowflake_config, FLATTEN_SQL, (text,))
    assert rows or name in {"empty array", "json null"}  # the comparison compares something
    for sql, params in ((FLATTEN_SQL, (text,)), (ELEMENTS_SQL, (text, 1))):
        assert bound_query(snowflake_config, sql, params) == bound_query(stock, sql, params)


@pytest.mark.timeout(180)
def test_flatten_of_a_scalar_fails_as_in_fakesnow(
        snowflake_config: SnowflakeConfig, stock_snowflake: LocalSnowflake) -> None:
    stock = stock_snowflake.snowflake_config(database=snowflake_config.database)
    errors = []
    for config in (snowflake_config, stock):
        with pytest.raises(snowflake.connector.ProgrammingError) as caught:
            bound_query(config, FLATTEN_SQL, ("5",))
        errors.append((caught.value.errno, caught.value.msg))
    assert errors[0] == errors[1]


def sink_rows(count: int) -> str:
    from actors.rows import encode_rows, row_from_event
    from cluster.bench.workload import WorkloadSpec, generate

    workload = generate(WorkloadSpec(events=count, batch_size=count, invalid_share=0.0,
                                     refused_share=0.0, retry_share=0.0))
    events = [event for batch in workload.batches for event in batch]
    rows = [row_from_event(event, topic="t", partition=0, offset=offset,
                           request_id=None if offset % 3 else f"r{offset}",
                           accepted_at_ms=None if offset % 5 == 0 else 1_700_000_000_000 + offset)
            for offset, event in enumerate(events)]
    return encode_rows(rows).decode()


def write_batch_as_the_sink(config: SnowflakeConfig, rows: str, from_offset: int) -> int:
    """The sink's write transaction (actors.sink): fence, rows INSERT from FLATTEN, commit."""
    from actors.warehouse import owner_sql, warehouse_sql

    sql = warehouse_sql(config)
    owners = owner_sql(config, "t", 0)
    with snowflake.connector.connect(**config.connect_kwargs(), paramstyle="qmark",
                                     autocommit=True) as conn, conn.cursor() as cur:
        for create in (sql.create_events, sql.create_offsets, owners.create):
            cur.execute(create)
        cur.execute(owners.insert, ("t", 0, 1, "test"))
        cur.execute("BEGIN")
        cur.execute(owners.fence_write, ("token", "t", 0, 1))
        cur.execute(owners.insert_rows, (rows, from_offset, "t", 0, "token"))
        written = cur.rowcount
        cur.execute("COMMIT")
    return int(written)


@pytest.mark.timeout(180)
def test_the_sinks_insert_writes_what_fakesnow_writes(
        snowflake_config: SnowflakeConfig, stock_snowflake: LocalSnowflake) -> None:
    table = f"SPEEDUP_{uuid.uuid4().hex[:8].upper()}"
    ours = msgspec.structs.replace(snowflake_config, events_table=table,
                                   offsets_table=f"{table}_OFFSETS",
                                   owners_table=f"{table}_OWNERS")
    stock = msgspec.structs.replace(ours, port=stock_snowflake.port)
    rows = sink_rows(3000)
    stock_snowflake.ensure_database(stock.database, stock.schema)
    contents = []
    for config in (ours, stock):
        assert write_batch_as_the_sink(config, rows, from_offset=1000) == 2000
        contents.append(query(config, f"SELECT * EXCLUDE (WRITTEN_AT) FROM {table} "
                                      "ORDER BY KAFKA_OFFSET"))
    assert len(contents[0]) == 2000
    assert contents[0] == contents[1]


@pytest.mark.timeout(240)
def test_a_database_written_before_the_speedups_gets_them(
        own_emulator: LocalSnowflake, tmp_path: Path) -> None:
    stock = LocalSnowflake(own_emulator.data_dir, speedups=False)
    try:
        stock.start()
        stock.ensure_database("OLDER", "PUBLIC")
        config = stock.snowflake_config(database="OLDER")
        assert query(config, "SELECT function_name FROM duckdb_functions() "
                             "WHERE function_name LIKE '_eventray%'") == []
    finally:
        stock.stop()
    own_emulator.start()
    config = own_emulator.snowflake_config(database="OLDER")
    assert sorted(query(config, "SELECT function_name FROM duckdb_functions() "
                                "WHERE database_name = 'OLDER' AND function_name "
                                "LIKE '_eventray%'")) == [
        ("_eventray_flatten_array",), ("_eventray_flatten_array_elements",)]
    rows = sink_rows(50)
    assert write_batch_as_the_sink(config, rows, from_offset=0) == 50
