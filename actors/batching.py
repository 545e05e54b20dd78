"""The batch accumulator: when a partition's records make a batch worth writing."""

from __future__ import annotations

from collections.abc import Sequence

from actors.config import ConsumerConfig
from actors.records import SourceRecord


class Accumulator:
    """Collects records until a batch is full by count or bytes, or old enough, or the
    partition has nothing more for now.

    A read that returns fewer records than it asked for (``room``) emptied what the broker had
    for the partition: it is caught up. A caught-up partition whose previous batch is written
    (``idle``) flushes at once; while one is still being written it goes on gathering, so a
    batch grows with the sink's write time (large under load, where the warehouse's cost per
    row falls with the batch size) instead of queueing small batches behind it."""

    def __init__(self, config: ConsumerConfig) -> None:
        self._max_events = config.batch_max_events
        self._max_bytes = config.batch_max_bytes
        self._max_wait_s = config.batch_max_wait_s
        self.records: list[SourceRecord] = []
        self.bytes = 0
        self.started: float | None = None
        self.caught_up = False  # the last read returned fewer records than asked for

    @property
    def room(self) -> int:
        """How many more records fit by count."""
        return max(self._max_events - len(self.records), 0)

    def add(self, records: Sequence[SourceRecord], now: float, nbytes: int | None = None) -> None:
        """Add ``records``; ``nbytes``, when given, is their total ``size``."""
        if not records:
            return
        # The read asked for ``room`` records (the consumer's ``consume(num_messages=room)``).
        self.caught_up = len(records) < self.room
        if self.started is None:
            self.started = now
        self.records.extend(records)
        self.bytes += sum(record.size for record in records) if nbytes is None else nbytes

    def full(self, now: float, *, drained: bool = False, idle: bool = False) -> bool:
        """Whether to flush now. ``drained``: the last read found no new record (the partition
        is caught up), so waiting longer would only add latency. ``idle``: no batch of this
        partition is being written, so a caught-up one (a short last read) flushes too."""
        if not self.records:
            return False
        return (drained or (idle and self.caught_up) or len(self.records) >= self._max_events
                or self.bytes >= self._max_bytes
                or (self.started is not None and now - self.started >= self._max_wait_s))

    def take(self) -> list[SourceRecord]:
        records, self.records, self.bytes, self.started = self.records, [], 0, None
        self.caught_up = False
        return records
