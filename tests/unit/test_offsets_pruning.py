"""Pruning superseded offset rows: the config, the statement, and where the writer runs it.

The writer talks to a recording fake connection here (the emulator tests are in
tests/integration/test_sink.py); what only this can see is the ORDER of the statements: the
prune must run after the write transaction's COMMIT, on the autocommit connection.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest
from snowflake.connector import errors as sf_errors

from actors import sink as sink_module
from actors.config import SinkConfig, SnowflakeConfig
from actors.rows import EMPTY_ROWS, SinkBatch
from actors.sink import SnowflakeWriter
from actors.warehouse import warehouse_sql

CONFIG = SnowflakeConfig(offsets_table="OFFS", events_table="EVS")
SQL = warehouse_sql(CONFIG)


def test_prune_statement_deletes_only_the_partitions_rows_below_the_bound() -> None:
    assert SQL.prune_offsets == (
        'DELETE FROM OFFS WHERE TOPIC = ? AND "PARTITION" = ? AND NEXT_OFFSET < ?')


def test_prune_interval_defaults_to_100_and_zero_disables() -> None:
    assert SinkConfig().prune_offsets_every == 100
    assert msgspec.convert({"prune_offsets_every": 0}, SinkConfig).prune_offsets_every == 0
    with pytest.raises(msgspec.ValidationError, match="prune_offsets_every"):
        msgspec.convert({"prune_offsets_every": -1}, SinkConfig)


class FakeConnection:
    """Records every statement; offset rows per (topic, partition), so MAX() and the prune
    answer like the warehouse."""

    def __init__(self, log: list[tuple[int, str]], conn_id: int,
                 prune_error: sf_errors.Error | None) -> None:
        self.log, self.conn_id, self.prune_error = log, conn_id, prune_error
        self.offsets: dict[tuple[str, int], list[int]] = {}
        self.closed = False

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def close(self) -> None:
        self.closed = True


class FakeCursor:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.rowcount = -1
        self._row: tuple[Any, ...] | None = None

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        conn = self.conn
        verb = "MAX" if sql == SQL.committed_offset else sql.split(maxsplit=1)[0]
        conn.log.append((conn.conn_id, verb))
        if sql == SQL.committed_offset:
            rows = conn.offsets.get((params[0], params[1]), [])
            self._row = (max(rows) if rows else None,)
        elif sql == SQL.insert_offset:
            conn.offsets.setdefault((params[0], params[1]), []).append(params[2])
        elif sql == SQL.prune_offsets:
            if conn.prune_error is not None:
                raise conn.prune_error
            rows = conn.offsets[params[0], params[1]]
            kept = [o for o in rows if o >= params[2]]
            self.rowcount = len(rows) - len(kept)
            conn.offsets[params[0], params[1]] = kept

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._row

    def close(self) -> None:
        pass


class Harness:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, every: int,
                 prune_error: sf_errors.Error | None = None) -> None:
        self.log: list[tuple[int, str]] = []
        self.connections: list[FakeConnection] = []

        def connect(**kwargs: Any) -> FakeConnection:
            assert kwargs["autocommit"] is True  # the prune is its own transaction
            conn = FakeConnection(self.log, len(self.connections), prune_error)
            if self.connections:
                conn.offsets = self.connections[-1].offsets  # same warehouse
            self.connections.append(conn)
            return conn

        monkeypatch.setattr(sink_module.snowflake.connector, "connect", connect)
        self.writer = SnowflakeWriter(CONFIG, SinkConfig(prune_offsets_every=every,
                                                         retry_backoff_s=0.01))

    def write(self, partition: int, start: int, end: int) -> int:
        batch = SinkBatch(topic="t", partition=partition, from_offset=start, to_offset=end,
                          rows_json=EMPTY_ROWS, row_count=0)
        return self.writer.write(batch).committed_offset

    def statements(self) -> list[str]:
        return [statement for _, statement in self.log]


def test_the_prune_runs_after_commit_every_n_writes_of_the_partition(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, every=2)
    h.write(0, 0, 1)
    h.write(1, 0, 1)  # another partition: its own counter
    assert "DELETE" not in h.statements()
    h.write(0, 1, 2)
    write = ["BEGIN", "MAX", "INSERT", "COMMIT"]
    assert h.statements() == write * 3 + ["DELETE"]
    assert h.connections[0].offsets == {("t", 0): [2], ("t", 1): [1]}
    h.write(1, 1, 2)
    h.write(0, 2, 3)
    assert h.statements() == write * 3 + ["DELETE"] + write + ["DELETE"] + write
    assert h.connections[0].offsets == {("t", 0): [2, 3], ("t", 1): [2]}


def test_disabled_never_prunes(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, every=0)
    for start in range(5):
        h.write(0, start, start + 1)
    assert "DELETE" not in h.statements()


@pytest.mark.parametrize(("error", "reconnects"), [
    (sf_errors.ProgrammingError("no such table", errno=2003), False),
    (sf_errors.OperationalError("connection reset"), True),
])
def test_a_failed_prune_is_logged_and_retried_at_the_next_interval(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        error: sf_errors.Error, reconnects: bool) -> None:
    h = Harness(monkeypatch, every=2, prune_error=error)
    with caplog.at_level(logging.WARNING, logger="actors.sink"):
        assert [h.write(3, s, s + 1) for s in range(5)] == [1, 2, 3, 4, 5]
    failures = [r.getMessage() for r in caplog.records]
    assert len(failures) == 2  # writes 2 and 4, once each: no retry loop around the prune
    assert failures[0].startswith("pruning offset rows failed, retrying at the next interval "
                                  "topic=t partition=3 committed_offset=2 error=")
    assert str(error) in failures[0]
    assert h.statements().count("DELETE") == 2
    # A transient error drops the session so the next write reconnects; a statement error
    # keeps it. Either way no write was retried.
    assert len(h.connections) == (3 if reconnects else 1)
    assert h.statements().count("BEGIN") == 5
