"""Pruning superseded offset rows: the config and the statement (pure parts).

How the writer runs the prune (after COMMIT, every N writes per partition, failures logged) is
tested against the real emulator in tests/integration/test_sink.py."""

from __future__ import annotations

import msgspec
import pytest

from actors.config import SinkConfig, SnowflakeConfig
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
