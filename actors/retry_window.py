"""The retry window: event keys recently written or dead-lettered, to drop client retries,
and the dead letters recently replayed, to drop a second replay of one dead letter.

Decisions depend on accept times only, never on when a batch is planned: a record accepted at
``t`` is a duplicate of a key accepted at ``t_k`` when ``|t - t_k| <= window``. So a batch
planned again after a crash, later, with a window rebuilt from the warehouse and the
dead-letter topic (``actors.window_rebuild``), decides exactly as it did the first time.

What a key holds is a function of the rows and dead letters with it, whatever their order: the
latest accept time of any of them, and the latest of a row. A rebuild reads only the rows and
dead letters of the last window (and slack); were a held time to depend on older ones (the
earliest of a chain of records each within the window of the one before, as when a record
breaking the contract, dead-lettered whatever the window holds, left the held time as it was),
a rebuilt window would hold other times than the live one and decide later retries otherwise.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Final

import msgspec

DedupKey = tuple[str, str]  # (account_id, event_id)

# The "account" of a replay identity key. '#' is not an ID_CHARS character, so no event's
# (account_id, event_id) can ever equal a replay key.
REPLAY_NAMESPACE: Final = "#replay-of"

# How far accept times may run backwards within a partition (the gateway stamps a request's
# accept time before producing it; a request can wait in the producer's queue up to its
# delivery deadline): keys are kept this much longer than the window, so a record accepted
# earlier than the batch before it still finds them.
DISORDER_SLACK_MS: Final = 10 * 60 * 1000


def replay_key(replay_of: str) -> DedupKey:
    """The window key of a replay of dead letter ``replay_of`` (``<partition>:<offset>``)."""
    return (REPLAY_NAMESPACE, replay_of)


class DecidedKey(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A key as the warehouse or the dead-letter topic gives it back: a row's event key
    (``written``), a dead letter's (not ``written``), or the replay key of either; with the
    source record's offset and accept time, the window's order and clock."""

    offset: int
    accepted_at_ms: int
    key: DedupKey
    written: bool = True


class DedupWindow:
    """Event keys written or dead-lettered for this partition, each with its accept time, at
    most ``max_keys`` of them; and the replay keys (``replay_key``) of dead letters replayed.

    A key held with accept time ``t_k`` (the latest of its rows and dead letters) makes a
    record accepted at ``t`` a duplicate when ``t_k >= t - window``. Each event key also
    remembers the latest accept time of a row with it (none when only dead-lettered): a replay
    of a dead letter is let through unless its event was written within the window.

    ``evict`` only frees memory: it forgets keys too old to match any record still to come.
    Memory is bounded by ``max_keys`` (~340 bytes per key measured): past it the oldest key is
    forgotten before its window ends and counted in ``evicted_early``, so the window a client
    retry is caught in shrinks, visibly, instead of the actor growing without bound.
    """

    def __init__(self, window_s: float, max_keys: int | None = None) -> None:
        self._window_ms = int(window_s * 1000)
        self._max_keys = max_keys
        # key -> the latest accept time (epoch ms) of a row or dead letter with it
        self._held: dict[DedupKey, int] = {}
        # Held keys whose latest row is not their held time (a few): the latest row's accept
        # time, None when only dead-lettered. The others' latest row is their held time.
        self._row_ms: dict[DedupKey, int | None] = {}
        # (accept time, key) in insertion order; an entry whose key holds a later time since (a
        # later row or dead letter, or an id reused after the window) is skipped when it comes
        # up.
        self._order: collections.deque[tuple[int, DedupKey]] = collections.deque()
        self.evicted_early = 0  # keys forgotten inside their window because of max_keys

    @property
    def window_ms(self) -> int:
        return self._window_ms

    @property
    def max_keys(self) -> int | None:
        return self._max_keys

    def __len__(self) -> int:
        return len(self._held)

    def load(self, keys: Iterable[Sequence[str]], at_ms: int, *, written: bool = True) -> None:
        """Keys accepted at ``at_ms`` (``written``: as rows; else dead-lettered), as ``add``."""
        for account_id, event_id in keys:
            self.add((str(account_id), str(event_id)), at_ms, written)

    def seen(self, key: DedupKey) -> bool:
        """Whether ``key`` is held at all (whatever its accept time)."""
        return key in self._held

    def written(self, key: DedupKey, at_ms: int) -> bool:
        """Whether ``key``'s event was written as a row within the window of ``at_ms``."""
        held = self._held.get(key)
        if held is None:
            return False
        row_ms = self._row_ms.get(key, held)
        return row_ms is not None and row_ms >= at_ms - self._window_ms

    def add(self, key: DedupKey, at_ms: int, written: bool = True) -> None:
        """A row (``written``) or dead letter with ``key`` accepted at ``at_ms``, whatever the
        window held (a record breaking the contract, a replay let through, a rebuild's key):
        the key holds the later of its accept times, and of its rows'."""
        held = self._held
        before = held.get(key)
        if before is None:
            if self._max_keys is not None and len(held) >= self._max_keys:
                self._forget_oldest()
            held[key] = at_ms
            if not written:
                self._row_ms[key] = None
            self._order.append((at_ms, key))
            return
        row_ms = self._row_ms.get(key, before)
        if written and (row_ms is None or at_ms > row_ms):
            row_ms = at_ms
        if at_ms > before:
            held[key] = before = at_ms
            self._order.append((at_ms, key))
        if row_ms == before:
            self._row_ms.pop(key, None)
        else:
            self._row_ms[key] = row_ms

    def first_seen(self, key: DedupKey, at_ms: int, written: bool = True) -> bool:
        """Add ``key`` unless a record accepted within the window of ``at_ms`` holds it; True
        when added (not a duplicate). ``written``: the key's event becomes a row (False: it is
        dead-lettered)."""
        held = self._held
        before = held.get(key)
        if before is not None:
            if before >= at_ms - self._window_ms:
                return False
            self.add(key, at_ms, written)  # an id reused after the window
            return True
        # Once per event: add's new key inlined.
        if self._max_keys is not None and len(held) >= self._max_keys:
            self._forget_oldest()
        held[key] = at_ms
        if not written:
            self._row_ms[key] = None
        self._order.append((at_ms, key))
        return True

    def mark_written(self, key: DedupKey, at_ms: int) -> None:
        """``key``'s event was written as a row accepted at ``at_ms`` (a replay of its dead
        letter), held or not."""
        self.add(key, at_ms, True)

    def discard(self, key: DedupKey) -> None:
        """Forget ``key`` (a replay key added for a replay that was then dropped)."""
        self._held.pop(key, None)
        self._row_ms.pop(key, None)

    def evict(self, now_ms: int) -> int:
        """Forget keys accepted before ``now_ms - window``; return how many."""
        cutoff = now_ms - self._window_ms
        held, order = self._held, self._order
        evicted = 0
        while order and order[0][0] < cutoff:
            at_ms, key = order.popleft()
            if held.get(key) == at_ms:
                del held[key]
                self._row_ms.pop(key, None)
                evicted += 1
        return evicted

    # The batch rhythm: a window on disk (``actors.window_store``) writes what a planned batch
    # changed once its write committed; the memory window has nothing to write.

    def seal(self, to_offset: int) -> None:
        """The changes since the last seal belong to the batch ending at ``to_offset``."""

    def persist(self, committed: int, epoch: int | None) -> int:
        """The batches up to ``committed`` were written in the warehouse; returns how many
        batches' changes were written (none here)."""
        return 0

    def close(self) -> None:
        """Release what the window holds outside the process's memory (nothing here)."""

    def _forget_oldest(self) -> None:
        held, order = self._held, self._order
        while order:
            at_ms, key = order.popleft()
            if held.get(key) == at_ms:
                del held[key]
                self._row_ms.pop(key, None)
                self.evicted_early += 1
                return
