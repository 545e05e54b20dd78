"""Retries caught whichever partition they land on, also after partitions were added.

The gateway keys records by account, so an account's records go to ``partition_of(account,
count)``. Adding partitions changes ``count`` and moves most accounts: a client's retry can
land on a partition whose retry window never saw the original. The consumer of each partition
therefore keeps the topic's partition-count history and, for a record whose account went to
another partition under a count in effect within the retry window, looks there too.

The history is a small warehouse table of marks (``PartitionMark``): the first time a consumer
plans a batch under a partition count it has not planned under before, it records the offset
that batch starts at. Below its mark a partition's records were planned under the older count,
without looking at other partitions; from the mark on, with. The counts a record may have been
routed by are the current one and every earlier one superseded less than the retry window (plus
the disorder slack) before the record's batch.

For a batch holding records of moved accounts, on every other partition ``r`` such an account
went to (``MoveGuard.prepare``):

1. wait until ``r`` recorded its mark for the current count and committed up to it: every record
   ``r`` planned without looking elsewhere (the original of any retry sent after the count grew
   is among them) is decided, as a row or a dead letter. Waiting never goes round in a circle:
   ``r`` reaches its mark without waiting for anyone (those batches were planned before it knew
   of the growth);
2. once per count and partition, load ``r``'s dead letters of the window whose account also went
   to this partition;
3. ask the warehouse, for this batch's moved records only, which of their keys another partition
   wrote within the window (one query per batch).

What was found enters the retry window with its own accept time before ``plan_batch`` runs, so
the batch is planned as usual. A batch without moved records costs one partition-count lookup.

One partition decides each event accepted after a growth: its account's partition under the
count. While some producers still route by the old count (librdkafka refreshes a topic's
metadata every ``topic.metadata.refresh.interval.ms``), a partition past its mark receives
records whose account now goes elsewhere; it does not decide them but hands them on
(``MoveGuard.forward_targets``): produced to their account's partition, with their headers and
accept time, in the transaction of the batch's dead letters, before the batch's rows. So an
event and its retry, one routed by each count, are decided by one partition, whatever their
timing. Which records are handed on depends only on the marks (which count a record's offset
was planned under) and the record's accept time, so a batch planned again after a crash hands
on the same ones; a record handed on twice (a crash between the transaction and the rows) is
a duplicate of itself at its new partition and dropped there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Protocol

import msgspec

from actors.config import KafkaConnection
from actors.dead_letter import event_key, read_recent_keys
from actors.exceptions import KafkaDeliveryError
from actors.murmur2 import partition_of
from actors.records import Forward, SourceRecord
from actors.retry_window import REPLAY_NAMESPACE, DecidedKey, DedupKey, DedupWindow
from actors.window_rebuild import window_since

log = logging.getLogger(__name__)

NOTHING_BEFORE: Final = -1  # a mark when the partition had planned nothing before it
_WAIT_S: Final = 0.25  # between looks at another partition's progress
_WAIT_LOG_S: Final = 10.0
_HOMES_CACHE_MAX: Final = 1_000_000
_METADATA_TIMEOUT_S: Final = 10.0


class PartitionMark(msgspec.Struct, frozen=True, array_like=True):
    """``partition`` planned its first batch under ``partitions`` from offset ``mark``
    (``NOTHING_BEFORE``: it had planned nothing before), first recorded at ``marked_at_ms``."""

    partitions: int
    partition: int
    mark: int
    marked_at_ms: int


class PartitionHistory:
    """A topic's partition counts over time, from its marks: a count took effect when the
    first partition marked it."""

    def __init__(self, marks: Sequence[PartitionMark]) -> None:
        since: dict[int, int] = {}
        self._marks: dict[tuple[int, int], int] = {}
        for m in marks:
            since[m.partitions] = min(since.get(m.partitions, m.marked_at_ms), m.marked_at_ms)
            key = (m.partitions, m.partition)
            self._marks[key] = max(self._marks.get(key, m.mark), m.mark)
        self._counts = sorted(since.items())  # partitions only grow: in order of time too
        self._since = since

    def mark(self, partitions: int, partition: int) -> int | None:
        return self._marks.get((partitions, partition))

    def grown(self) -> bool:
        """Whether the topic ever had more than one count."""
        return len(self._counts) > 1

    def marks_of(self, partition: int) -> list[tuple[int, int]]:
        """``(mark, count)`` of ``partition``, ascending: offsets from a mark on were planned
        under its count (a partition marks each count once, at a higher offset than before)."""
        return sorted((mark, count) for (count, p), mark in self._marks.items()
                      if p == partition)

    def counts(self, current: int, since_ms: int) -> tuple[int, ...]:
        """``current`` and the counts in effect at some time from ``since_ms`` on: those a
        record still compared with keys accepted since then may have been routed by."""
        counts = [current]
        for (count, _), (_, superseded_ms) in zip(self._counts, self._counts[1:],
                                                   strict=False):
            if count < current and superseded_ms >= since_ms:
                counts.append(count)
        return tuple(sorted(counts))


class MovesIO(Protocol):
    """What ``MoveGuard`` asks Kafka and the warehouse (the consumer supplies it)."""

    def partition_count(self) -> int: ...
    def marks(self) -> list[PartitionMark]: ...
    def record_mark(self, partitions: int, mark: int) -> None: ...
    def committed(self, partition: int) -> int | None: ...
    def dead_keys(self, partition: int, since_ms: int) -> Iterable[DecidedKey]: ...
    def written_elsewhere(self, keys: list[DedupKey], since_ms: int) -> list[DecidedKey]: ...


StopCheck = Callable[[float], bool]  # waits up to the seconds given; True when stopping
SinkCall = Callable[[Callable[[Any], Any]], Any]  # ray.get(call(sink)), retried


class SinkMovesIO:
    """``MovesIO`` of a partition consumer: the partition count from its Kafka consumer's
    metadata, marks and rows through its sink, dead letters from the dead-letter topic."""

    def __init__(self, topic: str, partition: int, *, call_sink: SinkCall, consumer: Any,
                 kafka: KafkaConnection, dead_letter_topic: str) -> None:
        self._topic = topic
        self._partition = partition
        self._call_sink = call_sink
        self._consumer = consumer
        self._kafka = kafka
        self._dead_letter_topic = dead_letter_topic

    def partition_count(self) -> int:
        from confluent_kafka import KafkaException

        try:
            metadata = self._consumer.list_topics(self._topic, timeout=_METADATA_TIMEOUT_S)
        except KafkaException as exc:
            err = exc.args[0]
            raise KafkaDeliveryError(f"reading the partition count of {self._topic}: "
                                     f"{err.str()}", code=err.code()) from exc
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None:
            raise KafkaDeliveryError(f"topic {self._topic} has no metadata: "
                                     f"{None if topic is None else topic.error}")
        return len(topic.partitions)

    def marks(self) -> list[PartitionMark]:
        topic = self._topic
        marks: list[PartitionMark] = self._call_sink(
            lambda s: s.partition_marks.remote(topic))
        return marks

    def record_mark(self, partitions: int, mark: int) -> None:
        topic, partition = self._topic, self._partition
        self._call_sink(
            lambda s: s.record_partition_mark.remote(topic, partitions, partition, mark))

    def committed(self, partition: int) -> int | None:
        topic = self._topic
        committed: int | None = self._call_sink(
            lambda s: s.committed_offset.remote(topic, partition))
        return committed

    def dead_keys(self, partition: int, since_ms: int) -> Iterable[DecidedKey]:
        return read_recent_keys(self._kafka, self._dead_letter_topic, partition, since_ms)

    def written_elsewhere(self, keys: list[DedupKey], since_ms: int) -> list[DecidedKey]:
        topic, partition = self._topic, self._partition
        found: list[DecidedKey] = self._call_sink(
            lambda s: s.written_elsewhere.remote(topic, partition, keys, since_ms))
        return found


class MoveGuard:
    """One consumer session's view of the partition-count history (see the module)."""

    def __init__(self, topic: str, partition: int, window_s: float, io: MovesIO) -> None:
        self._topic = topic
        self._partition = partition
        self._window_s = window_s
        self._io = io
        self._count: int | None = None
        self._history = PartitionHistory([])
        self._loaded: set[tuple[int, int]] = set()  # (count, partition) dead letters loaded
        self._homes: dict[tuple[bytes, tuple[int, ...]], tuple[int, ...]] = {}
        self._own_marks: list[tuple[int, int]] = []  # (mark, count) of this partition

    @property
    def partition_count(self) -> int | None:
        return self._count

    def observe(self, next_from: int | None) -> None:
        """Look up the partition count; under a count not planned under before, record this
        partition's mark: ``next_from``, the offset the next batch starts at (None: nothing
        was planned before)."""
        count = self._io.partition_count()
        if count == self._count:
            return
        history = PartitionHistory(self._io.marks())
        if history.mark(count, self._partition) is None:
            mark = NOTHING_BEFORE if next_from is None else next_from
            self._io.record_mark(count, mark)
            history = PartitionHistory(self._io.marks())
            log.info("partition count marked topic=%s partition=%d partitions=%d mark=%d "
                     "previous=%s", self._topic, self._partition, count, mark, self._count)
        self._count, self._history = count, history
        self._own_marks = history.marks_of(self._partition)
        self._homes.clear()

    def forward_targets(self, records: Sequence[SourceRecord]) -> list[Forward]:
        """The records of ``records`` this partition does not decide, each with the partition
        that does (see the module): planned under a count whose account's partition is
        another, while an earlier count that routed the account here can still reach the
        record's window (it took effect less than the retry window plus the disorder slack
        before the record's accept time); with an event identity and not a replay. A record
        no known count routed here (a producer naming partitions) is decided here. Call
        ``observe`` first. Empty on a topic that never grew (the common case)."""
        if not self._history.grown():
            return []
        forwards: list[Forward] = []
        for record in records:
            key = record.key
            if key is None or record.replay_of is not None or record.accepted_at_ms is None:
                continue
            count = self._count_at(record.offset)
            if count is None:
                continue
            counts = self._history.counts(count, window_since(record.accepted_at_ms,
                                                              self._window_s))
            if len(counts) == 1:
                continue  # no earlier count can reach its window
            (home,) = self._homes_of(key, (count,))
            if (home != self._partition
                    and self._partition in self._homes_of(key, counts[:-1])
                    and event_key(record.value) is not None):
                forwards.append(Forward(record, home))
        if forwards:
            log.info("records handed to their account's partition topic=%s partition=%d "
                     "count=%d first_offset=%d", self._topic, self._partition, len(forwards),
                     forwards[0].record.offset)
        return forwards

    def _count_at(self, offset: int) -> int | None:
        """The count this partition planned ``offset`` under (None: before its first mark)."""
        found: int | None = None
        for mark, count in self._own_marks:
            if mark > offset:
                break
            found = count
        return found

    def prepare(self, records: Sequence[SourceRecord], window: DedupWindow,
                stopping: StopCheck, before_waiting: Callable[[], None]) -> int:
        """Before ``plan_batch``: put into ``window`` what other partitions decided about the
        moved accounts' events in ``records``; return how many records were moved (0: the
        common case, nothing asked). Call ``observe`` first. Before it waits for another
        partition it calls ``before_waiting`` (the consumer finishes its write in flight: the
        other partition may be waiting for it). Returns -1 when ``stopping`` said so while
        waiting."""
        count = self._count
        if count is None:
            raise RuntimeError("observe() the partition count before prepare()")
        since_ms = window_since(records[0].accepted_at_ms or int(time.time() * 1000),
                                self._window_s)
        counts = self._history.counts(count, since_ms)
        if len(counts) == 1:
            return 0
        moved: list[SourceRecord] = []
        others: set[int] = set()
        for record in records:
            if record.key is None:
                continue  # not routed by key
            homes = self._homes_of(record.key, counts)
            if homes != (self._partition,):
                moved.append(record)
                others.update(homes)
        if not moved:
            return 0
        others.discard(self._partition)
        for other in sorted(others):
            if not self._wait_for(other, count, stopping, before_waiting):
                return -1
            self._load_dead_letters(other, count, counts, since_ms, window)
        keys = [key for key in map(event_key, (r.value for r in moved)) if key is not None]
        found = self._io.written_elsewhere(keys, since_ms) if keys else []
        for decided in found:
            window.mark_written(decided.key, decided.accepted_at_ms)
        log.debug("moved records checked topic=%s partition=%d moved=%d found_elsewhere=%d",
                  self._topic, self._partition, len(moved), len(found))
        return len(moved)

    def _homes_of(self, key: bytes, counts: tuple[int, ...]) -> tuple[int, ...]:
        cached = self._homes.get((key, counts))
        if cached is None:
            if len(self._homes) >= _HOMES_CACHE_MAX:
                self._homes.clear()
            cached = tuple(sorted({partition_of(key, n) for n in counts}))
            self._homes[(key, counts)] = cached
        return cached

    def _wait_for(self, other: int, count: int, stopping: StopCheck,
                  before_waiting: Callable[[], None]) -> bool:
        """Until ``other`` marked ``count`` and committed up to its mark; False when stopping."""
        started = logged = time.monotonic()
        first = True
        while True:
            mark = self._history.mark(count, other)
            if mark is not None:
                committed = self._io.committed(other)
                if mark == NOTHING_BEFORE or (committed is not None and committed >= mark):
                    return True
            if first:
                first = False
                before_waiting()
            now = time.monotonic()
            if now - logged >= _WAIT_LOG_S:
                logged = now
                log.warning("waiting for another partition to decide what it planned before "
                            "the partition count grew topic=%s partition=%d other=%d "
                            "partitions=%d mark=%s waited_s=%.0f", self._topic,
                            self._partition, other, count, mark, now - started)
            if stopping(_WAIT_S):
                return False
            self._history = PartitionHistory(self._io.marks())

    def _load_dead_letters(self, other: int, count: int, counts: tuple[int, ...],
                           since_ms: int, window: DedupWindow) -> None:
        """Once per count: ``other``'s dead letters whose account also goes to this partition,
        as dead-lettered keys with their accept times."""
        if (count, other) in self._loaded:
            return
        loaded = 0
        for decided in self._io.dead_keys(other, since_ms):
            account = decided.key[0]
            if account == REPLAY_NAMESPACE:
                continue  # a replay goes back to its own partition
            if self._partition in self._homes_of(account.encode(), counts):
                window.add(decided.key, decided.accepted_at_ms, False)
                loaded += 1
        self._loaded.add((count, other))
        log.info("dead letters of a partition loaded topic=%s partition=%d other=%d "
                 "partitions=%d keys=%d", self._topic, self._partition, other, count, loaded)
