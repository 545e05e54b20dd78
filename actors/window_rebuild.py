"""Rebuilding a partition's retry window after a (re)start, so that it decides as the window of
the consumer life before did.

The live window (``actors.retry_window``) holds the key of every record written or
dead-lettered, with the record's accept time, added in offset order. What a restarted consumer
can read back is exactly that, for the records below the committed offset: the warehouse's rows
(``ACCEPTED_AT``, ``KAFKA_OFFSET``, ``REPLAY_OF``) and the dead-letter topic's records (their
event key, accept-time header, source offset and ``eventray-replay-of`` header). Duplicates
dropped leave no trace, and need none: they added nothing to the window.

Which keys: those accepted at or after ``window_since(first record to plan)``, the same bound
``plan_batch`` evicts to, so no key a replayed record could match is missing, however long the
consumer was down. Dead letters at or past the committed offset are left out: the batches that
made them are planned again, and ``plan_batch`` adds their keys in offset order as it skips them.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

from actors.retry_window import DISORDER_SLACK_MS, REPLAY_NAMESPACE, DecidedKey, DedupWindow


def window_since(first_accepted_ms: int, window_s: float) -> int:
    """The oldest accept time (epoch ms) a window needs before planning a batch whose first
    record was accepted at ``first_accepted_ms``."""
    return first_accepted_ms - int(window_s * 1000) - DISORDER_SLACK_MS


def rebuild_window(window_s: float, max_keys: int | None, *, since_ms: int,
                   committed: int | None, table: Iterable[DecidedKey],
                   dead: Iterable[DecidedKey]) -> DedupWindow:
    """The window the consumer had at offset ``committed``: the keys of the ``table``'s rows
    and of the ``dead`` letters below it accepted at or after ``since_ms``, added in offset
    order (a replay key before its record's event key, as ``plan_batch`` adds them)."""
    floor = committed if committed is not None else 0  # never written: all planned again
    keys = [k for k in chain(table, (d for d in dead if d.offset < floor))
            if k.accepted_at_ms >= since_ms]
    keys.sort(key=_window_order)
    window = DedupWindow(window_s, max_keys)
    for decided in keys:
        if decided.written:
            window.mark_written(decided.key, decided.accepted_at_ms)
        else:
            window.first_seen(decided.key, decided.accepted_at_ms, False)
    return window


def _window_order(decided: DecidedKey) -> tuple[int, bool]:
    return decided.offset, decided.key[0] != REPLAY_NAMESPACE
