"""Cheaper rows in the Snowflake emulator (fakesnow 0.12 on DuckDB), with the same results.

Only the local emulator (``cluster.local.snowflake_emulator``) installs these; the SQL the sink
sends (``actors.warehouse``) is unchanged and Snowflake never sees any of it. Each one was
measured on the sink's batch write (20,000 rows, one bound JSON array of ~5 MB):

* **FLATTEN of a bound JSON array.** fakesnow turns ``TABLE(FLATTEN(INPUT => PARSE_JSON(?)))``
  into its table macro ``_fs_flatten(JSON(?))``, which builds a list of (key, value) structs
  with ``list_transform`` and unnests it. DuckDB folds that list into one constant of the whole
  batch at plan time and copies it for each vector it unnests: ~1.3 µs per element plus ~25 ns
  per byte of it, ~7 µs for the sink's 250-byte row. When the bound text is a JSON array
  (its first non-blank character is ``[``), the statement calls ``_eventray_flatten_array``
  instead, the same six columns from one pass of DuckDB's ``json_each`` over the array.
  Everything else (objects, scalars, NULL, a column, a literal, named binds) keeps fakesnow's
  macro. Why the results are the same, column by column: ``SEQ`` and ``THIS`` are fakesnow's
  own expressions (``hash(TO_JSON(input))::UBIGINT``, ``TO_JSON(input)``); ``KEY`` is NULL for
  an array element in both; ``INDEX`` and ``PATH`` are the element's position, which fakesnow
  numbers with ``row_number()`` over the unnest and ``json_each`` gives as its key, rows in the
  same order; ``VALUE`` is the element's JSON text (both written by DuckDB's JSON writer from
  the same parsed document), and SQL NULL for a JSON ``null`` element, as fakesnow's
  ``JSON[]`` cast gives. The macro raises if its input is not an array instead of guessing.
  It is installed with fakesnow's own macros (``macros.creation_sql``, which fakesnow runs
  every time it attaches a database file), so a database written by an older emulator gets it
  on its first attach.
* **The bindings' debug line.** fakesnow's query handler formats every request's bindings for
  a debug log line (an f-string, so even with debug off): repr of the ~5 MB text, ~0.35 µs per
  row. A bound text longer than ``QUIET_REPR_CHARS`` is handed on as ``BoundText``, a ``str``
  whose repr names its length. DuckDB and fakesnow take it as the string it is; the one
  visible difference is the text of an unhandled error (HTTP 500, and the log), which names
  such a binding by its length instead of quoting it whole.
* **The request body's JSON.** Decoded with msgspec (~3x faster than ``json.loads`` for a body
  that is mostly one long escaped string); a body msgspec refuses (``NaN``, ``1e400``, lone
  surrogates, a BOM) goes to ``json.loads`` as before, so every body decodes as it did.

fakesnow is pinned (``pyproject.toml``); ``install`` refuses any version other than 0.12.x and
a FLATTEN macro other than the one this was checked against, so an upgrade fails at the
emulator's start instead of silently serving other results.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from importlib.metadata import version
from string import Template
from typing import Any, Final

from actors.exceptions import EventrayError

FAKESNOW_SERIES: Final = "0.12."
# sha256 of fakesnow.macros.FS_FLATTEN.template in 0.12.1: the macro whose results
# _eventray_flatten_array reproduces for arrays.
STOCK_FLATTEN_SHA256: Final = "e99e40792efb072f7a1d14207d4ca0a7d10d3d5299bb045839905b84a02987b2"
STOCK_FLATTEN: Final = "_fs_flatten"
ARRAY_FLATTEN: Final = "_eventray_flatten_array"
# The same without SEQ and THIS (NULL), for statements that cannot read them.
ARRAY_ELEMENTS: Final = "_eventray_flatten_array_elements"
QUIET_REPR_CHARS: Final = 65_536
_JSON_BLANKS: Final = " \t\n\r"
# Names through which a statement could read FLATTEN's SEQ or THIS.
_ROW_COLUMNS: Final = frozenset({"SEQ", "THIS"})

_ARRAY_MACRO: Final = """
CREATE OR REPLACE MACRO ${{catalog}}.{name}(input) AS TABLE
    SELECT
        {seq} AS SEQ,
        NULL::VARCHAR AS KEY,
        '[' || e.key || ']' AS PATH,
        e.key::BIGINT AS INDEX,
        CASE WHEN e.type = 'NULL' THEN NULL ELSE e.value END AS VALUE,
        {this} AS THIS
    FROM json_each(TO_JSON(input)) AS e
    WHERE CASE WHEN starts_with(e.fullkey, '$$[') THEN true
               ELSE error('{name}: the input is not a JSON array') END"""
ARRAY_FLATTEN_MACROS: Final = Template(";\n".join((
    _ARRAY_MACRO.format(name=ARRAY_FLATTEN, seq="hash(TO_JSON(input))::UBIGINT",
                        this="TO_JSON(input)"),
    # DuckDB folds every constant expression of the macro when it plans the statement,
    # unused columns included: SEQ and THIS cost ~0.8 µs per row of a 5 MB input each.
    _ARRAY_MACRO.format(name=ARRAY_ELEMENTS, seq="NULL::UBIGINT", this="NULL::JSON"),
)))


class EmulatorSpeedupError(EventrayError):
    """The installed fakesnow is not the one the emulator's speed-ups were checked against."""


class BoundText(str):
    """A long bound text; its repr names its length instead of copying it whole."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<bound text of {len(self):,} characters>"


@functools.cache  # once per process: each step wraps what it finds
def install() -> None:
    """Install every speed-up in this process; raise ``EmulatorSpeedupError`` for a fakesnow
    they were not checked against."""
    check_fakesnow()
    _install_array_flatten()
    _install_quiet_bindings()
    _install_fast_json()


def check_fakesnow() -> None:
    from fakesnow import macros

    installed = version("fakesnow")
    if not installed.startswith(FAKESNOW_SERIES):
        raise EmulatorSpeedupError(
            f"fakesnow {installed}: the emulator's speed-ups (cluster/local/emulator_speedups.py) "
            f"were checked against {FAKESNOW_SERIES}x; check them against this version first")
    digest = hashlib.sha256(macros.FS_FLATTEN.template.encode()).hexdigest()
    if digest != STOCK_FLATTEN_SHA256:
        raise EmulatorSpeedupError(
            f"fakesnow {installed} has another FLATTEN macro than the one "
            f"{ARRAY_FLATTEN} reproduces (sha256 {digest}); check it first")


def array_flatten_sql(catalog: str) -> str:
    return ARRAY_FLATTEN_MACROS.substitute(catalog=catalog)


def _install_array_flatten() -> None:
    from fakesnow import macros
    from fakesnow.cursor import FakeSnowflakeCursor

    creation_sql = macros.creation_sql

    def with_array_flatten(catalog: str) -> str:
        return f"{creation_sql(catalog)}\n{array_flatten_sql(catalog)};"

    # fakesnow.conn and fakesnow.cursor call it as macros.creation_sql at each attach.
    macros.creation_sql = with_array_flatten

    transform = FakeSnowflakeCursor._transform

    def transform_then_route(self: Any, expression: Any, params: Any) -> Any:
        transformed = transform(self, expression, params)
        if isinstance(params, list):
            route_array_flattens(transformed, params)
        return transformed

    FakeSnowflakeCursor._transform = transform_then_route  # type: ignore[method-assign]


def route_array_flattens(transformed: Any, params: list[Any]) -> list[str]:
    """Point each ``_fs_flatten(JSON(?))`` whose bound text is a JSON array at an array macro
    (``ARRAY_ELEMENTS`` when the statement cannot read SEQ or THIS); the macros chosen.
    ``params`` are the statement's positional binds, in the order fakesnow itself counts
    placeholders (``fakesnow.params``)."""
    from fakesnow.params import index_of_placeholder
    from sqlglot import exp

    routed = []
    for call in list(transformed.find_all(exp.Anonymous)):
        if str(call.name).lower() != STOCK_FLATTEN or len(call.expressions) != 1:
            continue
        parsed = call.expressions[0]
        if not isinstance(parsed, exp.ParseJSON) or not isinstance(parsed.this, exp.Placeholder):
            continue
        placeholder = parsed.this
        if placeholder.this:  # a named or numbered bind: not a plain '?'
            continue
        index = index_of_placeholder(transformed, placeholder)
        if 0 <= index < len(params) and is_json_array_text(params[index]):
            macro = ARRAY_FLATTEN if may_read_seq_or_this(transformed, call) else ARRAY_ELEMENTS
            call.set("this", macro)
            routed.append(macro)
    return routed


def may_read_seq_or_this(statement: Any, call: Any) -> bool:
    """Whether ``statement`` could read the SEQ or THIS column of the FLATTEN ``call``: it
    names SEQ or THIS anywhere (a column, a qualifier, an alias, USING), has a ``*``, or names
    the FLATTEN itself as a column (DuckDB reads a table's name as its whole row)."""
    from sqlglot import exp

    table = call.parent
    whole_rows = {STOCK_FLATTEN.upper(), ARRAY_FLATTEN.upper(), ARRAY_ELEMENTS.upper()}
    if isinstance(table, exp.Table) and table.alias:
        whole_rows.add(table.alias.upper())
    for node in statement.walk():
        if isinstance(node, exp.Star):
            return True
        if isinstance(node, (exp.Identifier, exp.Var)) and node.name.upper() in _ROW_COLUMNS:
            return True
        if isinstance(node, exp.Column) and not node.table and node.name.upper() in whole_rows:
            return True
    return False


def is_json_array_text(value: object) -> bool:
    """Whether ``value`` is text whose first non-blank character opens a JSON array (if it
    parses at all, it is an array)."""
    if not isinstance(value, str):
        return False
    for char in value:
        if char not in _JSON_BLANKS:
            return char == "["
    return False


def _install_quiet_bindings() -> None:
    server: Any = importlib.import_module("fakesnow.server")
    from_binding = server.from_binding

    def quiet_from_binding(binding: dict[str, str]) -> object:
        value = from_binding(binding)
        if type(value) is str and len(value) > QUIET_REPR_CHARS:
            return BoundText(value)
        return value

    server.from_binding = quiet_from_binding


class _FastJson:
    """The one attribute of ``json`` that fakesnow's server uses: ``loads``."""

    @staticmethod
    def loads(body: bytes | str) -> Any:
        import msgspec

        try:
            return msgspec.json.decode(body)
        except msgspec.MsgspecError:
            return json.loads(body)


def _install_fast_json() -> None:
    server: Any = importlib.import_module("fakesnow.server")
    if server.json is not json:
        raise EmulatorSpeedupError("fakesnow.server.json is not the json module")
    server.json = _FastJson
