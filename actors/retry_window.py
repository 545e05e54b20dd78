"""The retry window: event keys recently written or dead-lettered, to drop client retries,
and the dead letters recently replayed, to drop a second replay of one dead letter.

Decisions depend on accept times only, never on when a batch is planned: a record accepted at
``t`` is a duplicate of a key accepted at ``t_k`` when ``|t - t_k| <= window``. So a batch
planned again after a crash, later, with a window rebuilt from the warehouse and the
dead-letter topic (``actors.window_rebuild``), decides exactly as it did the first time.
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

    A key held with accept time ``t_k`` makes a record accepted at ``t`` a duplicate when
    ``t_k >= t - window``. Each event key remembers whether its event was written as a row or
    only dead-lettered: a replay of a dead letter is let through unless its event is in the
    table already.

    ``evict`` only frees memory: it forgets keys too old to match any record still to come.
    Memory is bounded by ``max_keys`` (~340 bytes per key measured): past it the oldest key is
    forgotten before its window ends and counted in ``evicted_early``, so the window a client
    retry is caught in shrinks, visibly, instead of the actor growing without bound.
    """

    def __init__(self, window_s: float, max_keys: int | None = None) -> None:
        self._window_ms = int(window_s * 1000)
        self._max_keys = max_keys
        self._held: dict[DedupKey, int] = {}  # key -> accept time (epoch ms)
        # Held keys whose event was only dead-lettered (a few): the others were written.
        self._dead: set[DedupKey] = set()
        # (accept time, key) in insertion order; an entry whose key was re-added later (a new
        # event with an id reused after the window) is skipped when it comes up.
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
        """Keys accepted at ``at_ms`` (``written``: as rows; else dead-lettered). A written key
        marks a held one written; a dead-lettered one leaves it as it is."""
        for account_id, event_id in keys:
            key = (str(account_id), str(event_id))
            if written:
                self.mark_written(key, at_ms)
            else:
                self.first_seen(key, at_ms, False)

    def seen(self, key: DedupKey) -> bool:
        """Whether ``key`` is held at all (whatever its accept time)."""
        return key in self._held

    def written(self, key: DedupKey, at_ms: int) -> bool:
        """Whether ``key``'s event was written as a row within the window of ``at_ms``."""
        held = self._held.get(key)
        return (held is not None and held >= at_ms - self._window_ms
                and key not in self._dead)

    def add(self, key: DedupKey, at_ms: int, written: bool = True) -> None:
        self.first_seen(key, at_ms, written)

    def first_seen(self, key: DedupKey, at_ms: int, written: bool = True) -> bool:
        """Add ``key`` unless a record accepted within the window of ``at_ms`` holds it; True
        when added (not a duplicate). ``written``: the key's event becomes a row (False: it is
        dead-lettered)."""
        held = self._held
        if key in held:
            if held[key] >= at_ms - self._window_ms:
                return False
            self._dead.discard(key)  # an id reused after the window: a new event
        elif self._max_keys is not None and len(held) >= self._max_keys:
            self._forget_oldest()
        held[key] = at_ms
        if not written:
            self._dead.add(key)
        self._order.append((at_ms, key))
        return True

    def mark_written(self, key: DedupKey, at_ms: int) -> None:
        """``key``'s event was written as a row (a replay of its dead letter), held or not; a
        held key keeps its accept time."""
        if not self.first_seen(key, at_ms):
            self._dead.discard(key)

    def discard(self, key: DedupKey) -> None:
        """Forget ``key`` (a replay key added for a replay that was then dropped)."""
        self._held.pop(key, None)
        self._dead.discard(key)

    def evict(self, now_ms: int) -> int:
        """Forget keys accepted before ``now_ms - window``; return how many."""
        cutoff = now_ms - self._window_ms
        held, order = self._held, self._order
        evicted = 0
        while order and order[0][0] < cutoff:
            at_ms, key = order.popleft()
            if held.get(key) == at_ms:
                del held[key]
                self._dead.discard(key)
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
                self._dead.discard(key)
                self.evicted_early += 1
                return
