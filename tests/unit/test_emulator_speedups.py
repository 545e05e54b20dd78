"""Which FLATTEN calls the emulator's speed-ups send to the array macros (plain data: fakesnow's
own parse and FLATTEN transform, no server). The rows those macros return are compared with
fakesnow's own through the real emulator in tests/integration/test_local_snowflake.py."""

from __future__ import annotations

from typing import Any

import pytest
from fakesnow import transforms
from fakesnow.dialect import parse_one

from actors.config import SnowflakeConfig
from actors.warehouse import owner_sql
from cluster.local.emulator_speedups import (
    ARRAY_ELEMENTS,
    ARRAY_FLATTEN,
    BoundText,
    check_fakesnow,
    is_json_array_text,
    route_array_flattens,
)

ROWS = '[["e1","a1"],["e2","a2"]]'


def routed(sql: str, params: list[Any]) -> tuple[list[str], str]:
    statement = parse_one(sql).transform(transforms.flatten)
    chosen = route_array_flattens(statement, params)
    return chosen, statement.sql(dialect="duckdb")


def test_the_sinks_insert_uses_the_macro_without_seq_and_this() -> None:
    insert = owner_sql(SnowflakeConfig(), "t", 0).insert_rows
    chosen, sql = routed(insert, [ROWS, 0, "t", 0, "token"])
    assert chosen == [ARRAY_ELEMENTS]
    assert f"{ARRAY_ELEMENTS.upper()}(JSON(?))" in sql.upper()


@pytest.mark.parametrize("select", [
    "SELECT *", "SELECT f.*", "SELECT seq, value", "SELECT f.this", 'SELECT "THIS"',
    "SELECT f", "SELECT COUNT(*)", "SELECT value AS seq",
])
def test_a_statement_that_may_read_seq_or_this_gets_the_whole_macro(select: str) -> None:
    sql = f"{select} FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?))) f"
    assert routed(sql, [ROWS])[0] == [ARRAY_FLATTEN]


def test_only_a_bound_json_array_is_routed() -> None:
    sql = "SELECT value FROM TABLE(FLATTEN(INPUT => PARSE_JSON(?)))"
    for not_an_array in ('{"a": [1]}', "5", "null", "", "  ", None, 5, b"[1]"):
        assert routed(sql, [not_an_array]) == ([], "SELECT value FROM _FS_FLATTEN(JSON(?))")
    assert routed(sql, [" \n\t[1]"])[0] == [ARRAY_ELEMENTS]
    assert routed(sql, [BoundText(ROWS)])[0] == [ARRAY_ELEMENTS]


def test_the_bind_is_found_by_position() -> None:
    # The FLATTEN's bind is the second '?': an array bound first does not route it.
    sql = ("SELECT f.value FROM (SELECT ? AS a) t, TABLE(FLATTEN(INPUT => PARSE_JSON(?))) f "
           "WHERE t.a IS NOT NULL")
    assert routed(sql, ["[1]", '{"a": 1}'])[0] == []
    assert routed(sql, ['{"a": 1}', "[1]"])[0] == [ARRAY_ELEMENTS]


def test_flatten_of_anything_but_a_plain_bind_keeps_fakesnows_macro() -> None:
    for sql in ("SELECT value FROM TABLE(FLATTEN(INPUT => PARSE_JSON('[1]')))",
                "SELECT f.value FROM t, LATERAL FLATTEN(INPUT => t.v) f",
                "SELECT value FROM TABLE(FLATTEN(INPUT => PARSE_JSON(:1)))"):
        assert routed(sql, [ROWS])[0] == []


def test_json_array_text() -> None:
    assert is_json_array_text("[") and is_json_array_text("\r\n [1]")
    assert not is_json_array_text('"[1]"') and not is_json_array_text("\ufeff[1]")


def test_a_long_bound_text_is_a_str_with_a_short_repr() -> None:
    text = BoundText("x" * 100_000)
    assert text == "x" * 100_000 and isinstance(text, str)
    assert repr((text,)) == "(<bound text of 100,000 characters>,)"


def test_the_installed_fakesnow_is_the_one_checked() -> None:
    check_fakesnow()
