"""Retries across added partitions, in memory: the partition-count history, the moved records
of a batch, the wait for the partition they came from, and what is loaded into the window
(issue 12, item 2). The real broker's partitioner and the whole pipeline are tested in
tests/integration/test_partition_moves.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec

from actors.batch_plan import BatchPlan, plan_batch
from actors.config import ValidationRules
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_REQUEST_ID,
    EventCodec,
    PaymentBody,
    PaymentCaptured,
)
from actors.murmur2 import murmur2, partition_of
from actors.partition_moves import NOTHING_BEFORE, MoveGuard, PartitionHistory, PartitionMark
from actors.records import SourceRecord, parse_headers
from actors.retry_window import DecidedKey, DedupKey, DedupWindow

T_MS = 1_780_000_000_000
W_S = 3600.0
CODEC = EventCodec()


def account_moving(old: tuple[int, int], new: tuple[int, int]) -> str:
    """An account on partition ``old[0]`` of ``old[1]`` and ``new[0]`` of ``new[1]``."""
    return next(a for a in (f"acct-{i}" for i in range(10_000))
                if partition_of(a.encode(), old[1]) == old[0]
                and partition_of(a.encode(), new[1]) == new[0])


def rec(offset: int, account: str, event_id: str, accepted_ms: int) -> SourceRecord:
    value = CODEC.encode(PaymentCaptured(
        event_id=event_id, account_id=account,
        occurred_at=datetime.fromtimestamp(accepted_ms / 1000, UTC) - timedelta(minutes=1),
        body=PaymentBody(amount_minor=10, currency="EUR", merchant_id="m-1")))
    headers = parse_headers([(HEADER_REQUEST_ID, b"r"),
                             (HEADER_ACCEPTED_AT_MS, str(accepted_ms).encode())])
    return SourceRecord(offset, account.encode(), value, *headers)


def plan(records: list[SourceRecord], window: DedupWindow, partition: int) -> BatchPlan:
    return plan_batch(records, topic="t", partition=partition, next_from=records[0].offset,
                      codec=CODEC, rules=ValidationRules(),
                      now=datetime.fromtimestamp(T_MS / 1000 + 7200, UTC), window=window)


class FakeIO:
    """Kafka and the warehouse as a guard sees them; counts what it is asked."""

    def __init__(self, count: int, marks: list[PartitionMark]) -> None:
        self.count = count
        self.mark_rows = list(marks)
        self.committed_offsets: dict[int, int | None] = {}
        self.rows: dict[DedupKey, DecidedKey] = {}  # written on other partitions
        self.dead: dict[int, list[DecidedKey]] = {}
        self.asked: list[str] = []
        self.on_committed: Callable[[int], None] = lambda _p: None

    def partition_count(self) -> int:
        return self.count

    def marks(self) -> list[PartitionMark]:
        self.asked.append("marks")
        return list(self.mark_rows)

    def record_mark(self, partitions: int, mark: int) -> None:
        self.asked.append(f"record_mark {partitions} {mark}")
        self.mark_rows.append(PartitionMark(partitions, 2, mark, T_MS + 5_000))

    def committed(self, partition: int) -> int | None:
        self.asked.append(f"committed {partition}")
        self.on_committed(partition)
        return self.committed_offsets.get(partition)

    def dead_keys(self, partition: int, since_ms: int) -> list[DecidedKey]:
        self.asked.append(f"dead_keys {partition}")
        return [k for k in self.dead.get(partition, []) if k.accepted_at_ms >= since_ms]

    def written_elsewhere(self, keys: list[DedupKey], since_ms: int) -> list[DecidedKey]:
        self.asked.append(f"written_elsewhere {len(keys)}")
        return [self.rows[k] for k in keys if k in self.rows
                and self.rows[k].accepted_at_ms >= since_ms]


def grown_io() -> FakeIO:
    """Partitions 0 and 1 since T, grown to 3 at T + 1 h; partition 0 marked the new count at
    offset 10 and committed it."""
    marks = [PartitionMark(2, 0, NOTHING_BEFORE, T_MS), PartitionMark(2, 1, NOTHING_BEFORE, T_MS),
             PartitionMark(3, 0, 10, T_MS + 3_600_000), PartitionMark(3, 1, 7, T_MS + 3_600_000)]
    io = FakeIO(3, marks)
    io.committed_offsets = {0: 10, 1: 7}
    return io


def never_stop(_seconds: float) -> bool:
    return False


def test_murmur2_is_kafkas() -> None:
    # Kafka's UtilsTest: murmur2("21") == -973932308 as a Java int; the integration test
    # holds partition_of to librdkafka's murmur2_random on the real broker.
    assert murmur2(b"21") == -973932308 & 0xFFFFFFFF
    assert [partition_of(k, 7) for k in (b"", b"a", b"acct-00001", b"kafka")] == [2, 5, 2, 3]


def test_history_keeps_a_count_while_the_window_can_reach_back_to_it() -> None:
    history = PartitionHistory([PartitionMark(2, 0, -1, T_MS), PartitionMark(2, 1, 5, T_MS + 9),
                                PartitionMark(3, 1, 40, T_MS + 100),
                                PartitionMark(3, 1, 42, T_MS + 200)])
    assert history.counts(3, since_ms=T_MS + 100) == (2, 3)
    assert history.counts(3, since_ms=T_MS + 101) == (3,)
    assert history.mark(3, 1) == 42 and history.mark(3, 0) is None  # the highest mark wins
    assert PartitionHistory([]).counts(4, since_ms=0) == (4,)


def test_without_a_grown_count_a_batch_asks_nothing_more() -> None:
    io = FakeIO(2, [PartitionMark(2, 2, NOTHING_BEFORE, T_MS)])
    guard = MoveGuard("t", 2, W_S, io)
    guard.observe(next_from=0)
    asked = list(io.asked)
    assert guard.prepare([rec(0, "acct-1", "e-1", T_MS)], DedupWindow(W_S), never_stop,
                         lambda: None) == 0
    assert io.asked == asked == ["marks"]


def test_a_count_seen_first_is_marked_where_the_next_batch_starts() -> None:
    io = grown_io()
    io.mark_rows = io.mark_rows[:2]
    guard = MoveGuard("t", 2, W_S, io)
    guard.observe(next_from=None)  # nothing planned before: the new partition
    assert "record_mark 3 -1" in io.asked and guard.partition_count == 3
    guard.observe(next_from=5)  # the same count: nothing more
    assert [a for a in io.asked if a.startswith("record_mark")] == ["record_mark 3 -1"]


def test_a_retry_on_the_new_partition_of_an_event_written_on_the_old_one_is_a_duplicate(
) -> None:
    account = account_moving((0, 2), (2, 3))
    io = grown_io()
    io.rows[(account, "e-1")] = DecidedKey(3, T_MS + 3_500_000, (account, "e-1"))
    guard = MoveGuard("t", 2, W_S, io)
    guard.observe(next_from=None)
    window = DedupWindow(W_S)
    retry = rec(0, account, "e-1", T_MS + 3_700_000)
    fresh = rec(1, account, "e-2", T_MS + 3_700_000)
    assert guard.prepare([retry, fresh], window, never_stop, lambda: None) == 2
    result = plan([retry, fresh], window, partition=2)
    assert (result.duplicates, result.valid) == (1, 1)
    assert "committed 0" in io.asked and "written_elsewhere 2" in io.asked


def test_a_retry_of_an_event_dead_lettered_on_the_old_partition_is_a_duplicate() -> None:
    account = account_moving((0, 2), (2, 3))
    other = account_moving((0, 2), (0, 3))  # stays on 0: its dead letter is not ours
    io = grown_io()
    io.dead[0] = [DecidedKey(4, T_MS + 3_500_000, (account, "e-bad"), written=False),
                  DecidedKey(5, T_MS + 3_500_000, (other, "e-bad"), written=False)]
    guard = MoveGuard("t", 2, W_S, io)
    guard.observe(next_from=None)
    window = DedupWindow(W_S)
    retry = rec(0, account, "e-bad", T_MS + 3_700_000)
    guard.prepare([retry], window, never_stop, lambda: None)
    assert plan([retry], window, partition=2).duplicates == 1
    assert window.seen((account, "e-bad")) and not window.seen((other, "e-bad"))
    guard.prepare([rec(1, account, "e-3", T_MS + 3_700_001)], window, never_stop,
                  lambda: None)
    assert io.asked.count("dead_keys 0") == 1  # once per count and partition


def test_moved_records_wait_until_the_old_partition_decided_what_it_planned_before(
) -> None:
    account = account_moving((0, 2), (2, 3))
    io = grown_io()
    io.committed_offsets[0] = 6  # partition 0 still writes what it planned before its mark
    io.on_committed = lambda p: io.committed_offsets.update(
        {0: min(10, (io.committed_offsets[0] or 0) + 1)}) if p == 0 else None
    finished: list[int] = []
    guard = MoveGuard("t", 2, W_S, io)
    guard.observe(next_from=None)
    waits: list[float] = []

    def stopping(seconds: float) -> bool:
        waits.append(seconds)
        return False

    moved = guard.prepare([rec(0, account, "e-1", T_MS + 3_700_000)], DedupWindow(W_S),
                          stopping, lambda: finished.append(1))
    assert moved == 1 and finished == [1] and len(waits) == 3
    assert io.committed_offsets[0] == 10


def test_waiting_ends_when_the_consumer_stops() -> None:
    account = account_moving((0, 2), (2, 3))
    io = grown_io()
    io.mark_rows = [m for m in io.mark_rows if (m.partitions, m.partition) != (3, 0)]
    guard = MoveGuard("t", 2, W_S, io)
    guard.observe(next_from=None)
    assert guard.prepare([rec(0, account, "e-1", T_MS + 3_700_000)], DedupWindow(W_S),
                         lambda _s: True, lambda: None) == -1


def test_a_growth_older_than_the_window_moves_nothing() -> None:
    account = account_moving((0, 2), (2, 3))
    io = grown_io()
    guard = MoveGuard("t", 2, 600.0, io)  # a 10 min window: the growth was 1 h before
    guard.observe(next_from=None)
    late = rec(0, account, "e-1", T_MS + 3_600_000 + 2 * 3_600_000)
    assert guard.prepare([late], DedupWindow(600.0), never_stop, lambda: None) == 0


def test_records_routed_by_the_old_count_after_the_mark_go_to_their_accounts_partition(
) -> None:
    moving = account_moving((0, 2), (2, 3))
    staying = account_moving((0, 2), (0, 3))
    io = grown_io()  # partition 0 marked count 3 at offset 10, at T + 1 h
    guard = MoveGuard("t", 0, W_S, io)
    guard.observe(next_from=12)
    soon = T_MS + 3_700_000
    before_mark = rec(9, moving, "e-0", soon)  # planned under 2 partitions: decided here
    handed_on = rec(10, moving, "e-1", soon)
    stays = rec(11, staying, "e-2", soon)
    replayed = msgspec.structs.replace(rec(12, moving, "e-3", soon), replay_of="0:4")
    broken = SourceRecord(13, moving.encode(), b"{not json", (), None, soon)
    long_after = rec(14, moving, "e-4", T_MS + 3_600_000 + int(W_S * 1000) + 11 * 60_000)
    forwards = guard.forward_targets(
        [before_mark, handed_on, stays, replayed, broken, long_after])
    assert [(f.record.offset, f.partition) for f in forwards] == [(10, 2)]


def test_a_topic_that_never_grew_hands_nothing_on() -> None:
    io = FakeIO(2, [PartitionMark(2, 0, NOTHING_BEFORE, T_MS)])
    guard = MoveGuard("t", 0, W_S, io)
    guard.observe(next_from=0)
    foreign = next(a for a in (f"acct-{i}" for i in range(100))
                   if partition_of(a.encode(), 2) == 1)  # another partitioner's choice
    assert guard.forward_targets([rec(0, foreign, "e-1", T_MS)]) == []


def test_a_batch_plans_around_what_it_hands_on() -> None:
    moving = account_moving((0, 2), (2, 3))
    io = grown_io()
    guard = MoveGuard("t", 0, W_S, io)
    guard.observe(next_from=10)
    records = [rec(10, "acct-stays", "e-1", T_MS + 3_700_000),
               rec(11, moving, "e-2", T_MS + 3_700_000)]
    window = DedupWindow(W_S)
    forwards = guard.forward_targets(records)
    result = plan_batch(records, topic="t", partition=0, next_from=10, codec=CODEC,
                        rules=ValidationRules(),
                        now=datetime.fromtimestamp(T_MS / 1000 + 7200, UTC), window=window,
                        forwards=forwards)
    stays_home = partition_of(b"acct-stays", 3) == 0
    assert (result.batch.from_offset, result.batch.to_offset) == (10, 12)
    assert result.consumed == 2 and result.forwards == forwards
    assert result.valid == (1 if stays_home else 0) and not window.seen((moving, "e-2"))


def test_a_batch_of_only_handed_on_records_still_advances_the_offset() -> None:
    moving = account_moving((0, 2), (2, 3))
    io = grown_io()
    guard = MoveGuard("t", 0, W_S, io)
    guard.observe(next_from=10)
    records = [rec(10, moving, "e-1", T_MS + 3_700_000)]
    result = plan_batch(records, topic="t", partition=0, next_from=10, codec=CODEC,
                        rules=ValidationRules(),
                        now=datetime.fromtimestamp(T_MS / 1000 + 7200, UTC),
                        window=DedupWindow(W_S), forwards=guard.forward_targets(records))
    assert (result.batch.to_offset, result.batch.row_count, len(result.forwards)) == (11, 0, 1)


def test_a_record_no_earlier_count_routed_here_is_decided_here() -> None:
    # Partition 2 exists only since the growth: a producer naming it explicitly put the
    # record there, not one routing by the old count, whatever the account.
    elsewhere = account_moving((0, 2), (0, 3))
    io = grown_io()
    io.mark_rows.append(PartitionMark(3, 2, NOTHING_BEFORE, T_MS + 3_600_000))
    guard = MoveGuard("t", 2, W_S, io)
    guard.observe(next_from=0)
    assert guard.forward_targets([rec(0, elsewhere, "e-1", T_MS + 3_700_000)]) == []
