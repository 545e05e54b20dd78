"""The metrics contract (``actors/metric_contract.py``) and its table in ``docs/metrics.md``.

The table is rendered from the specs; after changing them, regenerate it:

    .venv/bin/python tests/unit/test_metric_contract.py --write
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from actors.metric_contract import CONTRACT, EMITTERS, markdown_table

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
BEGIN = "<!-- metrics-table:begin (generated from actors/metric_contract.py) -->\n"
END = "<!-- metrics-table:end -->"
# Labels Ray's metrics agent, Serve and Prometheus add themselves.
RESERVED_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId",
                   "application", "deployment", "replica", "le", "job", "instance"}


def with_table(doc: str, table: str) -> str:
    """``doc`` with the text between the table markers replaced by ``table``."""
    head, found, rest = doc.partition(BEGIN)
    assert found, f"{DOC.name} has no {BEGIN.strip()} marker"
    _, found, tail = rest.partition(END)
    assert found, f"{DOC.name} has no {END} marker"
    return head + BEGIN + table + END + tail


def test_the_doc_carries_the_table_of_the_specs() -> None:
    doc = DOC.read_text()
    assert doc == with_table(doc, markdown_table()), (
        "docs/metrics.md differs from actors/metric_contract.py; regenerate: "
        ".venv/bin/python tests/unit/test_metric_contract.py --write")


def test_with_table_replaces_only_between_the_markers() -> None:
    doc = f"intro\n{BEGIN}| old |\n{END}\nafter\n"
    assert with_table(doc, "| new |\n") == f"intro\n{BEGIN}| new |\n{END}\nafter\n"
    with pytest.raises(AssertionError, match="marker"):
        with_table("no table here", "| new |\n")


def test_every_spec_is_well_formed() -> None:
    names = [spec.name for spec in CONTRACT]
    assert len(names) == len(set(names))
    for spec in CONTRACT:
        assert re.fullmatch(r"eventray_[a-z0-9_]+", spec.name), spec.name
        # Prometheus adds these itself; a name ending in them would read doubled.
        assert not spec.name.endswith(("_total", "_bucket", "_sum", "_count")), spec.name
        assert spec.meaning.strip() and "|" not in spec.meaning, spec.name
        assert spec.emitted_by in EMITTERS
        assert not set(spec.labels) & RESERVED_LABELS, spec.name
        assert len(set(spec.labels)) == len(spec.labels), spec.name
        if spec.kind == "histogram":
            assert spec.buckets and list(spec.buckets) == sorted(set(spec.buckets)), spec.name
            assert spec.buckets[0] > 0, spec.name
        else:
            assert not spec.buckets, spec.name


def literal_metric_names(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every Counter/Gauge/Histogram created with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        name = node.args[0]
        if (called in METRIC_CLASSES and isinstance(name, ast.Constant)
                and isinstance(name.value, str)):
            found.append((node.lineno, name.value))
    return found


METRIC_CLASSES = {"Counter", "Gauge", "Histogram", "Summary"}


def test_literal_metric_names_are_found() -> None:
    source = ("from ray.util import metrics\n"
              "a = metrics.Counter('eventray_x', 'help')\n"
              "b = Gauge(spec.name, spec.meaning)\n"
              "c = collections.Counter('abc')\n")
    assert literal_metric_names(source) == [(2, "eventray_x"), (4, "abc")]


def test_every_metric_is_created_from_its_spec() -> None:
    """No module creates a metric from a literal name: each comes from the contract."""
    for package in ("actors", "gateway", "cluster"):
        for path in sorted((ROOT / package).rglob("*.py")):
            named = [(line, name) for line, name in literal_metric_names(path.read_text())
                     if name.startswith("eventray")]
            assert named == [], (
                f"{path.relative_to(ROOT)} creates {named}; add the metric to "
                "actors/metric_contract.py and build it from the spec")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: tests/unit/test_metric_contract.py --write")
    DOC.write_text(with_table(DOC.read_text(), markdown_table()))
    print(f"wrote the table of {DOC.relative_to(ROOT)}")
