"""The Snowflake emulator as a service, through the real connector: rows written are read
back, and survive a restart (graceful and kill -9) on the same data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
