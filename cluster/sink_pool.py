"""The sink pool as the supervisor keeps it: its size, which sinks answer, which partition
writes through which sink, and the sinks it retires. Used under the supervisor's reconcile lock.

A resize is applied online, one reconciliation round at a time, without stopping anything:

* **grow**: the new sinks (``sink:<n>``...) are created; each gets partitions once it answers a
  ping (a sink waiting for a node, e.g. for the Ray autoscaler to start one, gets none, or
  its partitions would wait with it). The partitions it takes are told so (``use_sink``);
* **shrink**: the partitions of the sinks past the new size are moved to the others, and a
  retired sink is killed once every consumer answered and none reports it as its sink.

A consumer takes a new sink only with no batch in flight (``PartitionConsumer.use_sink``), so
a partition's writes never overlap, and once it reports the new sink nothing of it is left on
the old one. A batch retried on another sink, or written by a life Ray replaced, is the
warehouse's to fence (one owner epoch per consumer life, the committed offset re-read under
the partition's lock: ``actors.sink``): a partition may write through any sink.

Everything here is found again by name after a supervisor restart: the consumers say which
sink they write through, and the live sinks say how large the pool is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from actors.config import PipelineConfig
from actors.consumer import ConsumerStatus, consumer_name, sink_name
from cluster.pipeline_actors import pipeline_actors
from cluster.sink_assignment import SinkAssignment, initial, moves, rebalance, retirable

log = logging.getLogger(__name__)

# How long a round waits for new sinks to answer their first ping.
_PING_WAIT_S: Final = 1.0


def sink_number(name: str) -> int | None:
    """``sink:3`` -> 3; None for a name that is not a sink's."""
    head, _, number = name.rpartition(":")
    return int(number) if head + ":" == sink_name(0)[:-1] and number.isdigit() else None


class SinkPool:
    """Size, readiness, assignment and retirement of the sinks (see the module docstring)."""

    def __init__(self, config: PipelineConfig, create_sink: Callable[[int], Any],
                 find: Callable[[str], Any]) -> None:
        self._config = config
        self._create = create_sink
        self._find = find
        self.size: int | None = None       # adopted at the first round
        self.wanted: int | None = None     # asked for (policy or start); applied next round
        self.changed_at: float | None = None  # monotonic time of the last size change
        self._from_start = False           # start() asked before the first round
        self._ready: set[int] = set()      # sinks that answered a ping
        self._pings: dict[int, Any] = {}   # pending first pings, kept across rounds
        self._assignment = SinkAssignment({})
        self._told: dict[int, int] = {}    # partition -> the sink it was last told to use

    # -- what the supervisor asks -----------------------------------------------------

    def requested_by_start(self) -> None:
        """``start_pipeline`` started this supervisor with its config: a pool adopted from
        here on takes the config's ``pool_size``, also when autoscaling is on."""
        if self.size is None:
            self._from_start = True

    def current_size(self) -> int:
        return self.size if self.size is not None else self._config.sink.pool_size

    def assignment(self) -> SinkAssignment:
        return self._assignment

    def assigned_sinks(self) -> list[int]:
        return sorted(set(self._assignment.sinks.values()))

    def pending(self) -> int:
        """Sinks of the pool that have not answered a ping yet (e.g. waiting for a node)."""
        return len(set(range(self.current_size())) - self._ready)

    # -- one round ----------------------------------------------------------------------

    def reconcile(self, partitions: int, consumers: Sequence[ConsumerStatus | None]) -> None:
        """Size, create, assign, retire: one round (see the module docstring).
        ``consumers[p]`` is partition p's status, None when it did not answer."""
        existing = self._existing()
        self._adopt(existing)
        size = self.current_size()
        for index in range(size):
            if index not in existing:
                self._create(index)
        writing = {p: n for p, c in enumerate(consumers)
                   if c is not None and (n := sink_number(c.sink)) is not None}
        # Readiness decides where partitions move; with no consumer writing yet (a fresh
        # pipeline) nothing moves, so the round does not wait for new sinks to answer.
        self._check_ready(size, _PING_WAIT_S if writing else 0.0)
        # A partition nobody reported yet starts where a fresh pool puts it (p % size).
        current = {p: s for p, s in {**initial(partitions, size).sinks,
                                     **self._assignment.sinks, **writing}.items()
                   if p < partitions}
        usable = sorted(self._ready & set(range(size)))
        if usable and writing:
            target = rebalance(current, partitions, usable)
        else:  # no consumer runs yet (a fresh pipeline): create them where a fresh pool would
            target = SinkAssignment({p: s if s < size else p % size
                                     for p, s in current.items()})
        for p, before, after in moves(writing, target):
            if before is None or p >= len(consumers) or consumers[p] is None:
                continue  # a new consumer is created on its sink; one not answering, later
            handle = self._find(consumer_name(self._config.topics.events, p))
            if handle is not None:
                if self._told.get(p) != after:  # asked again each round until it moved
                    log.info("moving partition=%d sink=%s->%s", p, sink_name(before),
                             sink_name(after))
                    self._told[p] = after
                handle.use_sink.remote(after)
        self._assignment = target
        answered = len(consumers) >= partitions and all(c is not None for c in consumers)
        for index in retirable(size, existing, writing.values(), answered):
            self._retire(index)

    def _existing(self) -> set[int]:
        names = pipeline_actors(self._config.namespace).sinks
        return {n for n in map(sink_number, names) if n is not None}

    def _adopt(self, existing: set[int]) -> None:
        """The size at the first round, then whatever was asked for since."""
        cfg = self._config
        if self.size is None:
            if cfg.autoscale.enabled and existing and not self._from_start:
                # A restarted supervisor: the policy's size is what runs.
                self.size = max(existing) + 1
            else:
                self.size = cfg.sink.pool_size
            log.info("sink pool size=%d (autoscale=%s, live sinks=%s)", self.size,
                     "on" if cfg.autoscale.enabled else "off", sorted(existing) or "none")
        if self.wanted is not None and self.wanted != self.size:
            log.info("sink pool resize %d->%d", self.size, self.wanted)
            self.size = self.wanted
            self.changed_at = time.monotonic()
        self.wanted = None

    def _check_ready(self, size: int, wait_s: float) -> None:
        """Ping the sinks not known to answer yet (each ping kept until it answers), waiting
        up to ``wait_s`` for them."""
        import ray

        self._ready &= set(range(size))
        for index in range(size):
            if index in self._ready or index in self._pings:
                continue
            handle = self._find(sink_name(index))
            if handle is not None:
                self._pings[index] = handle.ping.remote()
        if not self._pings:
            return
        refs = list(self._pings.values())
        ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        for index, ref in list(self._pings.items()):
            done, _ = ray.wait([ref], timeout=0)
            if not done:
                continue
            del self._pings[index]
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:  # asked again next round
                log.warning("sink did not answer its ping name=%s: %s", sink_name(index), exc)
                continue
            if index < size:
                self._ready.add(index)
                log.info("sink answers name=%s: it takes partitions", sink_name(index))

    def _retire(self, index: int) -> None:
        import ray

        handle = self._find(sink_name(index))
        self._pings.pop(index, None)
        if handle is None:
            return
        log.info("retiring sink name=%s: no partition writes through it", sink_name(index))
        ray.kill(handle, no_restart=True)
