"""A chaos run's result, the table printed at the end, and the ``--json`` document."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec

RECOVERY_DEFINITION: Final = (
    "recovery: seconds from the fault's injection until (a) on every partition of the events "
    "topic the warehouse has committed an event the gateway acknowledged after the injection "
    "(a partition the load no longer reached: until its lag is 0) and (b) the scenario's own "
    "check passes (the service answers, the actor runs again, elsewhere for node faults; the "
    "new pool or partitions run), polled every 0.5 s. '-': not within the bound."
)
ACCOUNTING_DEFINITION: Final = (
    "lost: acknowledged (202) and found neither in the table nor in the dead-letter topic. "
    "duplicated: copies beyond the first of an event of the run, across table and "
    "dead-letter topic."
)


class RunResult(msgspec.Struct, frozen=True):
    """One run of one scenario. The first eight fields are the ``--json`` contract; the
    rest explain a run."""

    scenario: str
    run: int
    acknowledged: int       # distinct events the gateway answered 202 for
    rows: int               # rows of the run in the events table
    dead_lettered: int      # records of the run in the dead-letter topic
    lost: int
    duplicated: int
    recovery_s: float | None
    unacknowledged: int = 0  # events sent that the client gave up on or were refused
    drained: bool = True     # the warehouse caught up with Kafka within the bound
    fault: str = ""          # what was injected
    error: str | None = None  # why the run could not do what it should

    @property
    def passed(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.error is None


def to_json(results: Sequence[RunResult]) -> bytes:
    return msgspec.json.format(msgspec.json.encode({"runs": list(results)}))


def exit_code(results: Sequence[RunResult]) -> int:
    """0 when every run kept the promise (nothing lost, nothing duplicated, no error)."""
    return 0 if results and all(r.passed for r in results) else 1


_COLUMNS: Final = ("SCENARIO", "RUN", "ACKNOWLEDGED", "ROWS", "DEAD LETTERS", "LOST",
                   "DUPLICATED", "RECOVERY", "RESULT")


def _row(result: RunResult) -> tuple[str, ...]:
    recovery = "-" if result.recovery_s is None else f"{result.recovery_s:.1f}s"
    outcome = "ok" if result.passed else "FAIL"
    return (result.scenario, str(result.run), f"{result.acknowledged:,}", f"{result.rows:,}",
            f"{result.dead_lettered:,}", f"{result.lost:,}", f"{result.duplicated:,}",
            recovery, outcome)


def format_table(results: Sequence[RunResult]) -> str:
    """The runs as a fixed-width table, then one line per run on what was done and seen."""
    rows = [_COLUMNS, *(_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             .rstrip() for row in rows]
    lines.append("")
    for result in results:
        extra = []
        if result.unacknowledged:
            extra.append(f"{result.unacknowledged:,} sent but never acknowledged")
        if not result.drained:
            extra.append("NOT DRAINED within the bound")
        if result.error:
            extra.append(f"ERROR: {result.error.splitlines()[0]}")
        detail = "; ".join([result.fault or "no fault injected", *extra])
        lines.append(f"{result.scenario} run {result.run}: {detail}")
    return "\n".join(lines)
