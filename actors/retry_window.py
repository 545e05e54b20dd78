"""The retry window: event keys recently written or dead-lettered, to drop client retries."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

DedupKey = tuple[str, str]  # (account_id, event_id)


class DedupWindow:
    """Event keys written or dead-lettered for this partition within the last ``window_s``
    seconds of accept time, at most ``max_keys`` of them.

    Keys of one account land on one partition, so a per-partition window sees every duplicate.
    Entries are evicted approximately in accept order (a deque in insertion order). Memory is
    bounded by ``max_keys`` (~340 bytes per key measured): past it the oldest key is forgotten
    before its window ends and counted in ``evicted_early``, so the window a client retry is
    caught in shrinks, visibly, instead of the actor growing without bound.
    """

    def __init__(self, window_s: float, max_keys: int | None = None) -> None:
        self._window_ms = int(window_s * 1000)
        self._max_keys = max_keys
        self._at: dict[DedupKey, int] = {}
        self._order: collections.deque[tuple[int, DedupKey]] = collections.deque()
        self.evicted_early = 0  # keys forgotten inside their window because of max_keys

    def __len__(self) -> int:
        return len(self._at)

    def load(self, keys: Iterable[Sequence[str]], at_ms: int) -> None:
        """Keys read back from the warehouse; their accept time is unknown, so they count as
        accepted at ``at_ms`` (kept a little longer than needed, never shorter). Give them
        oldest first: when they exceed ``max_keys`` the last ones are kept."""
        for account_id, event_id in keys:
            self.add((str(account_id), str(event_id)), at_ms)

    def seen(self, key: DedupKey) -> bool:
        return key in self._at

    def add(self, key: DedupKey, at_ms: int) -> None:
        self.first_seen(key, at_ms)

    def first_seen(self, key: DedupKey, at_ms: int) -> bool:
        """Add ``key`` unless already in the window; True when it was not (not a duplicate)."""
        at = self._at
        if key in at:
            return False
        if self._max_keys is not None and len(at) >= self._max_keys:
            _, oldest = self._order.popleft()
            del at[oldest]
            self.evicted_early += 1
        at[key] = at_ms
        self._order.append((at_ms, key))
        return True

    def evict(self, now_ms: int) -> int:
        """Forget keys accepted before ``now_ms - window``; return how many."""
        cutoff = now_ms - self._window_ms
        evicted = 0
        while self._order and self._order[0][0] < cutoff:
            _, key = self._order.popleft()
            del self._at[key]
            evicted += 1
        return evicted
