"""The accumulator's flush rule for a caught-up partition: a short read flushes when the
partition's previous batch is written (``idle``), and only then."""

from __future__ import annotations

from actors.batching import Accumulator
from actors.config import ConsumerConfig
from actors.records import SourceRecord


def records(first: int, count: int) -> list[SourceRecord]:
    return [SourceRecord(offset=n, key=b"acct-1", value=b"{}", headers=(), request_id=None,
                         accepted_at_ms=None) for n in range(first, first + count)]


def test_a_short_read_flushes_only_when_no_batch_is_being_written() -> None:
    acc = Accumulator(ConsumerConfig(batch_max_events=100, batch_max_wait_s=1.0))
    acc.add(records(0, 40), now=0.0)  # asked for 100, got 40: caught up
    assert acc.caught_up
    assert not acc.full(0.2)  # today's rule: wait (a batch is in flight, or no idle given)
    assert acc.full(0.2, idle=True)
    acc.add(records(40, 60), now=0.4)  # asked for the 60 left, got them: not caught up
    assert not acc.caught_up
    assert acc.full(0.4)  # full by count anyway
    assert [r.offset for r in acc.take()][-1] == 99
    assert not acc.caught_up  # a new batch starts knowing nothing


def test_a_full_read_keeps_gathering_even_when_idle() -> None:
    acc = Accumulator(ConsumerConfig(batch_max_events=100, batch_max_wait_s=1.0))
    acc.add(records(0, 100), now=0.0)
    assert not acc.caught_up and acc.full(0.0)  # by count
    acc.take()
    acc.add(records(100, 30), now=1.0)
    acc.add(records(130, 70), now=1.2)  # the read asked for 70 and got 70: more may wait
    assert not acc.caught_up
    assert acc.full(1.2, idle=True)  # by count (100)
    acc.take()
    acc.add(records(200, 10), now=2.0)
    acc.add([], now=2.2)  # an empty read leaves the flag and is ``drained`` to the consumer
    assert acc.caught_up and acc.full(2.2, drained=True)
    assert not acc.full(2.2, idle=False)
    assert acc.full(3.0)  # the age bound still holds
