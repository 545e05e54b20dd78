"""Imports run one way: ``cluster/`` -> ``gateway/`` -> ``actors/``, and what runs on a Ray
cluster never depends on the laptop tooling (``cluster.local``, ``cluster.cli``,
``cluster.bench``, ``cluster.chaos``). Read from the source with ``ast``, so lazy imports inside
functions count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAPTOP_WINGS = ("cluster.local", "cluster.cli", "cluster.bench", "cluster.chaos")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_imported_modules_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\ndef f():\n    from cluster.local import stack\n")
    assert {"os", "cluster.local", "cluster.local.stack"} <= imported_modules(module)


@pytest.mark.parametrize("package, forbidden", [
    ("actors", ("cluster", "gateway")),
    ("gateway", ("cluster",)),
])
def test_lower_layers_never_import_upper_ones(package: str, forbidden: tuple[str, ...]) -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sources(package) for module in sorted(imported_modules(path))
        if any(under(module, upper) for upper in forbidden)
    ]
    assert not offenders, offenders


def test_cluster_runtime_never_imports_laptop_tooling() -> None:
    runtime = [path for path in sources("cluster")
               if path.parent == ROOT / "cluster"]  # settings, supervisor, job, status
    assert {path.name for path in runtime} >= {"settings.py", "supervisor.py", "job.py"}
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in runtime for module in sorted(imported_modules(path))
        if any(under(module, wing) for wing in LAPTOP_WINGS)
    ]
    assert not offenders, offenders
