"""Which sink each partition writes through: the assignment the supervisor owns (pure).

A partition's writes go through one sink at a time (its consumer has one batch in flight), and
the warehouse fences them by the consumer life's owner epoch (``actors.sink``), not by the
sink: any sink may write any partition, and a partition may move from one sink to another
while both run. So the assignment is free to change; what it must be is balanced (each sink
serves ``partitions // sinks`` or one more) and stable (a resize moves as few partitions as
it can, each move costing the partition one batch's pause at most).

``rebalance`` is that function: from where the partitions are now, to a balanced assignment
over the sinks that may take partitions (those that answer: a sink still waiting for a node
gets none, or its partitions would wait with it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec


class SinkAssignment(msgspec.Struct, frozen=True):
    """Partition -> the index of the sink it writes through (``sink:<index>``)."""

    sinks: dict[int, int]

    def sink_of(self, partition: int) -> int | None:
        return self.sinks.get(partition)

    def partitions_of(self, index: int) -> list[int]:
        return sorted(p for p, s in self.sinks.items() if s == index)


def initial(partitions: int, pool_size: int) -> SinkAssignment:
    """A fresh pool's assignment: partition p -> sink ``p % pool_size`` (as before the
    assignment was the supervisor's)."""
    return SinkAssignment({p: p % pool_size for p in range(partitions)})


def rebalance(current: Mapping[int, int], partitions: int,
              usable: Iterable[int]) -> SinkAssignment:
    """A balanced assignment of partitions ``0 .. partitions - 1`` over the ``usable`` sink
    indices that moves the fewest partitions away from ``current``.

    Each usable sink gets ``partitions // n`` partitions, and the sinks holding the most now
    one more while ``partitions % n`` lasts. A sink keeps its lowest-numbered partitions up to
    its share; the others (over a share, on a sink that is not usable, or new) go to the sinks
    below their share, lowest index first. No usable sink: ``current`` as it is (nothing can
    move anywhere)."""
    sinks = sorted(set(usable))
    if not sinks:
        return SinkAssignment({p: s for p, s in current.items() if p < partitions})
    held: dict[int, list[int]] = {s: [] for s in sinks}
    homeless: list[int] = []
    for p in range(partitions):
        s = current.get(p)
        if s in held:
            held[s].append(p)
        else:
            homeless.append(p)
    base, extra = divmod(partitions, len(sinks))
    by_load = sorted(sinks, key=lambda s: (-len(held[s]), s))
    share = {s: base + (1 if rank < extra else 0) for rank, s in enumerate(by_load)}
    result: dict[int, int] = {}
    for s in sinks:
        result.update(dict.fromkeys(held[s][:share[s]], s))
        homeless += held[s][share[s]:]
    room = [s for s in sinks for _ in range(share[s] - min(len(held[s]), share[s]))]
    for p, s in zip(sorted(homeless), room, strict=True):
        result[p] = s
    return SinkAssignment(dict(sorted(result.items())))


def moves(before: Mapping[int, int], after: SinkAssignment) -> list[tuple[int, int | None, int]]:
    """(partition, sink before or None, sink after) for each partition whose sink changes."""
    return [(p, before.get(p), s) for p, s in sorted(after.sinks.items())
            if before.get(p) != s]


def retirable(pool_size: int, existing: Iterable[int], in_use: Iterable[int | None],
              everyone_answered: bool) -> list[int]:
    """The sinks at or past ``pool_size`` that may be stopped now: no consumer writes through
    them (``in_use``: each consumer's current sink, as it reports it), and every consumer
    answered (one that did not may have a batch in flight on any sink; stopping that sink
    mid-transaction would hold its partition's lock until the warehouse aborts it)."""
    if not everyone_answered:
        return []
    used = {s for s in in_use if s is not None}
    return sorted(s for s in set(existing) if s >= pool_size and s not in used)
