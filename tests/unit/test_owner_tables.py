"""The per-partition owners tables (pure parts).

How a writer creates, takes and fences on them runs against the emulator in
tests/integration/test_fencing.py."""

from __future__ import annotations

import re

import pytest

from actors.config import SnowflakeConfig
from actors.exceptions import ConfigError
from actors.warehouse import owner_sql, owners_table_name, warehouse_sql

CONFIG = SnowflakeConfig(owners_table="OWNERS", events_table="EVS", offsets_table="OFFS")


def tables_named(sql: str) -> set[str]:
    """Every table a statement names after FROM, INTO, UPDATE or TABLE (not FLATTEN's)."""
    found = re.findall(r"\b(?:FROM|INTO|UPDATE|TABLE(?: IF NOT EXISTS)?)\s+([A-Z_][\w$.]*)", sql)
    return set(found) - {"TABLE"}


def test_each_topic_and_partition_has_a_table_of_its_own_named_the_same_every_time() -> None:
    name = owners_table_name("OWNERS", "events", 3)
    assert re.fullmatch(r"OWNERS_3_[0-9A-F]{8}", name)
    assert owners_table_name("OWNERS", "events", 3) == name
    names = {owners_table_name("OWNERS", topic, p)
             for topic in ("events", "events.v2") for p in range(4)}
    assert len(names) == 8
    assert owners_table_name("DB.SCHEMA.OWNERS", "events", 0).startswith("DB.SCHEMA.OWNERS_0_")
    with pytest.raises(ConfigError, match="too long"):
        owners_table_name("O" * 250, "events", 0)


def test_a_partitions_owner_statements_lock_and_read_only_its_own_table() -> None:
    """No statement of a take or a write of partition 0 names partition 1's owners table (nor
    the single owners table of earlier versions): Snowflake's UPDATE lock covers a table."""
    sql = {p: owner_sql(CONFIG, "events", p) for p in (0, 1)}
    for p, other in ((0, 1), (1, 0)):
        statements = [sql[p].create, sql[p].insert_if_missing, sql[p].lock, sql[p].current,
                      sql[p].delete, sql[p].insert, sql[p].fence_write]
        for statement in statements:
            assert tables_named(statement) == {sql[p].owners_table}, statement
        assert tables_named(sql[p].insert_rows) == {"EVS", sql[p].owners_table}
        assert tables_named(sql[p].insert_offset) == {"OFFS", sql[p].owners_table}
        assert sql[other].owners_table not in sql[p].fence_write
    assert sql[0].fence_write.startswith(f"UPDATE {sql[0].owners_table} ")


def test_the_single_owners_table_of_earlier_versions_is_only_read_locked_and_emptied() -> None:
    legacy = warehouse_sql(CONFIG)
    assert legacy.legacy_owners_table == "OWNERS"
    assert legacy.legacy_epoch == (
        'SELECT MAX(EPOCH) FROM OWNERS WHERE TOPIC = ? AND "PARTITION" = ?')
    assert legacy.legacy_lock.startswith("UPDATE OWNERS SET UPDATED_AT")
    assert legacy.legacy_delete == 'DELETE FROM OWNERS WHERE TOPIC = ? AND "PARTITION" = ?'
    assert not any(s.startswith("CREATE") and "OWNERS" in s
                   for s in (legacy.create_events, legacy.create_offsets))
