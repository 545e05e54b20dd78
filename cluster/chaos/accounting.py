"""What a chaos run promised and what landed, counted by event id. Pure: plain sets and counts.

The promise: every event the gateway acknowledged (202) ends up exactly once, as a row in the
events table or as a record in the dead-letter topic.

* **lost**: acknowledged, and found neither in the table nor in the dead-letter topic;
* **duplicated**: the copies beyond the first of any event of the run found more than once
  across the table and the dead-letter topic together (acknowledged or not: a copy is a copy).

An event the client gave up on (never acknowledged) is not counted as lost: nothing was promised
for it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

Key = tuple[str, str]  # (account_id, event_id)


@dataclass(frozen=True)
class Landing:
    """A run's events as found: distinct keys and total copies, in the table and the DLQ."""

    row_keys: frozenset[Key]
    rows: int
    dead_keys: frozenset[Key]
    dead_lettered: int

    @classmethod
    def from_ids(cls, rows: Iterable[Key], dead_letters: Iterable[Key]) -> Landing:
        """From the keys of every row and every dead letter, repeats included."""
        row_list, dead_list = list(rows), list(dead_letters)
        return cls(frozenset(row_list), len(row_list), frozenset(dead_list), len(dead_list))


@dataclass(frozen=True)
class Tally:
    acknowledged: int
    rows: int
    dead_lettered: int
    lost: int
    duplicated: int


def tally(acknowledged: Collection[Key], landing: Landing) -> Tally:
    """Count ``acknowledged`` against ``landing`` (see the module docstring)."""
    landed = landing.row_keys | landing.dead_keys
    duplicated = ((landing.rows - len(landing.row_keys))
                  + (landing.dead_lettered - len(landing.dead_keys))
                  + len(landing.row_keys & landing.dead_keys))
    return Tally(acknowledged=len(acknowledged), rows=landing.rows,
                 dead_lettered=landing.dead_lettered,
                 lost=sum(1 for key in acknowledged if key not in landed),
                 duplicated=duplicated)

