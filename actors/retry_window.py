"""The retry window: event keys recently written or dead-lettered, to drop client retries,
and the dead letters recently replayed, to drop a second replay of one dead letter."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Final

DedupKey = tuple[str, str]  # (account_id, event_id)

# The "account" of a replay identity key. '#' is not an ID_CHARS character, so no event's
# (account_id, event_id) can ever equal a replay key.
REPLAY_NAMESPACE: Final = "#replay-of"


def replay_key(replay_of: str) -> DedupKey:
    """The window key of a replay of dead letter ``replay_of`` (``<partition>:<offset>``)."""
    return (REPLAY_NAMESPACE, replay_of)


class DedupWindow:
    """Event keys written or dead-lettered for this partition within the last ``window_s``
    seconds of accept time, at most ``max_keys`` of them; and the replay keys
    (``replay_key``) of dead letters replayed in that time.

    Each event key remembers whether its event was written as a row or only dead-lettered:
    a replay of a dead letter is let through unless its event is in the table already.

    Keys of one account land on one partition, so a per-partition window sees every duplicate.
    Entries are evicted approximately in accept order (a deque in insertion order). Memory is
    bounded by ``max_keys`` (~340 bytes per key measured): past it the oldest key is forgotten
    before its window ends and counted in ``evicted_early``, so the window a client retry is
    caught in shrinks, visibly, instead of the actor growing without bound.
    """

    def __init__(self, window_s: float, max_keys: int | None = None) -> None:
        self._window_ms = int(window_s * 1000)
        self._max_keys = max_keys
        # key -> True when its event was written as a row, False when only dead-lettered.
        self._written: dict[DedupKey, bool] = {}
        self._order: collections.deque[tuple[int, DedupKey]] = collections.deque()
        self.evicted_early = 0  # keys forgotten inside their window because of max_keys

    def __len__(self) -> int:
        return len(self._written)

    def load(self, keys: Iterable[Sequence[str]], at_ms: int, *, written: bool = True) -> None:
        """Keys read back from the warehouse (``written``) or the dead-letter topic (not
        ``written``); their accept time is unknown, so they count as accepted at ``at_ms``
        (kept a little longer than needed, never shorter). A key already held keeps what it
        says. Give them oldest first: when they exceed ``max_keys`` the last ones are kept."""
        for account_id, event_id in keys:
            self.first_seen((str(account_id), str(event_id)), at_ms, written)

    def seen(self, key: DedupKey) -> bool:
        return key in self._written

    def written(self, key: DedupKey) -> bool:
        """Whether ``key``'s event was written as a row (not only dead-lettered)."""
        return self._written.get(key, False)

    def add(self, key: DedupKey, at_ms: int, written: bool = True) -> None:
        self.first_seen(key, at_ms, written)

    def first_seen(self, key: DedupKey, at_ms: int, written: bool = True) -> bool:
        """Add ``key`` unless already in the window; True when it was not (not a duplicate).
        ``written``: the key's event becomes a row (False: it is dead-lettered)."""
        held = self._written
        if key in held:
            return False
        if self._max_keys is not None and len(held) >= self._max_keys:
            _, oldest = self._order.popleft()
            del held[oldest]
            self.evicted_early += 1
        held[key] = written
        self._order.append((at_ms, key))
        return True

    def mark_written(self, key: DedupKey, at_ms: int) -> None:
        """``key``'s event was written as a row (a replay of its dead letter), held or not."""
        if not self.first_seen(key, at_ms):
            self._written[key] = True

    def evict(self, now_ms: int) -> int:
        """Forget keys accepted before ``now_ms - window``; return how many."""
        cutoff = now_ms - self._window_ms
        evicted = 0
        while self._order and self._order[0][0] < cutoff:
            _, key = self._order.popleft()
            del self._written[key]
            evicted += 1
        return evicted
