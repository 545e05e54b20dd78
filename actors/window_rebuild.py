"""Rebuilding a partition's retry window after a (re)start, so that it decides as the window of
the consumer life before did.

The live window (``actors.retry_window``) holds the key of every record written or
dead-lettered, with the latest accept time of those records (and of its rows), added in offset
order. What a restarted consumer
can read back is exactly that, for the records below the committed offset: the warehouse's rows
(``ACCEPTED_AT``, ``KAFKA_OFFSET``, ``REPLAY_OF``) and the dead-letter topic's records (their
event key, accept-time header, source offset and ``eventray-replay-of`` header). Duplicates
dropped leave no trace, and need none: they added nothing to the window.

Which keys: those accepted at or after ``window_since(first record to plan)``, the same bound
``plan_batch`` evicts to, so no key a replayed record could match is missing, however long the
consumer was down. Dead letters at or past the committed offset are left out: the batches that
made them are planned again, and ``plan_batch`` adds their keys in offset order as it skips them.

At a consumer's start the keys come as two streams, each already in the window's order: the
warehouse's rows in pages ordered by offset (``actors.window_keys``) and the dead-letter tail,
whose source offsets only grow (the dead-letter producer skips what its watermark covers).
``stream_window`` merges them as they arrive, so a rebuild holds the window and one page, never
every key read (up to ``dedup_max_keys`` rows and a day of dead letters) in a list beside it.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Iterator

from actors.retry_window import DISORDER_SLACK_MS, REPLAY_NAMESPACE, DecidedKey, DedupWindow

log = logging.getLogger(__name__)


def window_since(first_accepted_ms: int, window_s: float) -> int:
    """The oldest accept time (epoch ms) a window needs before planning a batch whose first
    record was accepted at ``first_accepted_ms``."""
    return first_accepted_ms - int(window_s * 1000) - DISORDER_SLACK_MS


def rebuild_window(window_s: float, max_keys: int | None, *, since_ms: int,
                   committed: int | None, table: Iterable[DecidedKey],
                   dead: Iterable[DecidedKey], into: DedupWindow | None = None) -> DedupWindow:
    """The window the consumer had at offset ``committed``: the keys of the ``table``'s rows
    and of the ``dead`` letters below it accepted at or after ``since_ms``, added in offset
    order (a replay key before its record's event key, as ``plan_batch`` adds them). Either
    may come in any order; ``stream_window`` takes them already in order, without a list."""
    return stream_window(window_s, max_keys, since_ms=since_ms, committed=committed,
                         table=sorted(table, key=window_order),
                         dead=sorted(dead, key=window_order), into=into)


def stream_window(window_s: float, max_keys: int | None, *, since_ms: int,
                  committed: int | None, table: Iterable[DecidedKey],
                  dead: Iterable[DecidedKey], into: DedupWindow | None = None) -> DedupWindow:
    """``rebuild_window`` from two streams each in ``window_order`` (the table's rows by
    offset, the dead-letter tail as read), merged as they come: memory holds the window and
    what each stream buffers, never all the keys read. A key holds the latest accept time of its
    rows and dead letters whatever their order (``DedupWindow.add``); the order decides only
    which keys ``max_keys`` forgets first, as a stable sort of both would. ``into``: an empty
    window to fill (a fresh window on disk) instead of a new memory one."""
    floor = committed if committed is not None else 0  # never written: all planned again
    window = into if into is not None else DedupWindow(window_s, max_keys)
    rows = _in_order(table, "rows")
    below = (d for d in _in_order(dead, "dead letters") if d.offset < floor)
    for decided in heapq.merge(rows, below, key=window_order):
        if decided.accepted_at_ms < since_ms:
            continue
        window.add(decided.key, decided.accepted_at_ms, decided.written)
    return window


def window_order(decided: DecidedKey) -> tuple[int, bool]:
    """The order keys enter the window in: by offset, a replay key before its event key."""
    return decided.offset, decided.key[0] != REPLAY_NAMESPACE


def _in_order(keys: Iterable[DecidedKey], what: str) -> Iterator[DecidedKey]:
    """``keys``, with a warning should they go back in ``window_order`` (a merge takes each
    stream as sorted: a key out of order enters the window later than a sort would put it)."""
    last: tuple[int, bool] | None = None
    warned = False
    for decided in keys:
        order = window_order(decided)
        if last is not None and order < last and not warned:
            warned = True
            log.warning("retry window keys out of order source=%s offset=%d after=%d: "
                        "dedup_max_keys may forget other keys first than the live window did",
                        what, decided.offset, last[0])
        last = order
        yield decided
