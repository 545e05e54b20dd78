"""The retry window decides on accept times only, and a window rebuilt after a restart from the
rows and dead letters decides as the live one did (issue 12, item 3; the property test in
test_replay_property.py runs crashes at every step)."""

from __future__ import annotations

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
from actors.dead_letter import Recovered, dead_letter_headers, decided_keys, recovered_from
from actors.records import SourceRecord, parse_headers
from actors.retry_window import DecidedKey, DedupWindow, replay_key
from actors.rows import row_field_index
from actors.window_rebuild import rebuild_window, window_since

T_MS = 1_780_000_000_000
W_S = 60.0
CODEC = EventCodec()


def rec(offset: int, accepted_ms: int, event_id: str = "e-1", *, broken: bool = False
        ) -> SourceRecord:
    headers = parse_headers([(HEADER_REQUEST_ID, b"r"),
                             (HEADER_ACCEPTED_AT_MS, str(accepted_ms).encode())])
    if broken:  # breaks the contract, but carries an event key
        value = msgspec.json.encode({"type": "payment.captured", "event_id": event_id,
                                     "account_id": "acct-1"})
    else:
        occurred = datetime.fromtimestamp(accepted_ms / 1000, UTC) - timedelta(minutes=1)
        value = CODEC.encode(PaymentCaptured(
            event_id=event_id, account_id="acct-1", occurred_at=occurred,
            body=PaymentBody(amount_minor=10, currency="EUR", merchant_id="m-1")))
    return SourceRecord(offset, b"acct-1", value, *headers)


def plan(records: list[SourceRecord], window: DedupWindow, *, planned_ms: int,
         recovered: Recovered | None = None) -> BatchPlan:
    extra = {} if recovered is None else {"recovered": recovered}
    return plan_batch(records, topic="events", partition=0, next_from=records[0].offset,
                      codec=CODEC, rules=ValidationRules(),
                      now=datetime.fromtimestamp(planned_ms / 1000, UTC), window=window,
                      now_ms=planned_ms, **extra)


def table_keys(result: BatchPlan) -> list[DecidedKey]:
    """What ``SnowflakeWriter.recent_keys`` returns for the batch's rows: each row's event key
    and, for a replay, its dead letter's replay key."""
    rows = msgspec.json.decode(result.batch.rows_json, type=list[list[object]])
    replay_of = row_field_index("replay_of")
    keys = [DecidedKey(int(str(r[8])), int(str(r[10])), (str(r[1]), str(r[0]))) for r in rows]
    return keys + [DecidedKey(int(str(r[8])), int(str(r[10])), replay_key(str(r[replay_of])))
                   for r in rows if r[replay_of] is not None]


def dead_keys(result: BatchPlan) -> list[DecidedKey]:
    """What ``read_recent_keys`` returns for the batch's dead letters."""
    return [key for letter in result.dead_letters
            for key in decided_keys(letter.value, dead_letter_headers(letter, "events", 0),
                                    T_MS + 10**9)]


def rebuilt(first: SourceRecord, committed: int, table: list[DecidedKey],
            dead: list[DecidedKey]) -> DedupWindow:
    assert first.accepted_at_ms is not None
    return rebuild_window(W_S, None, since_ms=window_since(first.accepted_at_ms, W_S),
                          committed=committed, table=table, dead=dead)


def test_a_retry_is_judged_by_accept_times_not_by_when_it_is_planned() -> None:
    for planned_late in (0, 3_600_000):  # promptly, and an hour late (a consumer lagging)
        window = DedupWindow(W_S)
        plan([rec(0, T_MS)], window, planned_ms=T_MS + planned_late)
        inside = plan([rec(1, T_MS + 59_000)], window, planned_ms=T_MS + 59_000 + planned_late)
        outside = plan([rec(2, T_MS + 121_000)], window,
                       planned_ms=T_MS + 121_000 + planned_late)
        assert (inside.duplicates, outside.duplicates, outside.valid) == (1, 0, 1)


def test_a_rebuilt_window_keeps_each_key_for_its_own_window() -> None:
    # Written at T; the consumer restarts 30 s later with a retry 61 s after the original
    # next: out of the window, written again, as the live window does (not held as if
    # accepted at the restart).
    live = DedupWindow(W_S)
    first = plan([rec(0, T_MS)], live, planned_ms=T_MS)
    retry = rec(1, T_MS + 61_000)
    window = rebuilt(retry, 1, table_keys(first), [])
    assert plan([retry], window, planned_ms=T_MS + 61_000).valid == 1
    assert plan([rec(1, T_MS + 61_000)], live, planned_ms=T_MS + 61_000).valid == 1


def test_a_consumer_restarted_long_after_still_drops_a_retry_inside_the_window() -> None:
    live = DedupWindow(W_S)
    first = plan([rec(0, T_MS)], live, planned_ms=T_MS)
    retry = rec(1, T_MS + 50_000)  # committed nothing past offset 1 before the restart
    window = rebuilt(retry, 1, table_keys(first), [])
    restarted = plan([retry], window, planned_ms=T_MS + 2 * 3_600_000)
    assert (restarted.duplicates, restarted.valid) == (1, 0)


def test_a_contract_failure_with_an_event_key_holds_it_live_as_after_a_restart() -> None:
    live = DedupWindow(W_S)
    broken = plan([rec(0, T_MS, broken=True)], live, planned_ms=T_MS)
    assert broken.rejected == {"contract": 1}
    fixed = rec(1, T_MS + 1_000)  # the same event id, now well formed
    window = rebuilt(fixed, 1, [], dead_keys(broken))
    after_restart = plan([fixed], window, planned_ms=T_MS + 1_000)
    without_restart = plan([rec(1, T_MS + 1_000)], live, planned_ms=T_MS + 1_000)
    assert after_restart.duplicates == without_restart.duplicates == 1


def test_a_chain_of_contract_failures_holds_its_key_at_the_latest_after_a_restart_too(
) -> None:
    # A record breaking the contract is dead-lettered whatever the window holds: fifteen with
    # one event key, 45 s apart (each within the window of the one before), then a retry 45 s
    # after the last. A key holds the latest accept time of its dead letters, live and rebuilt.
    # Before, it kept the earliest of such a chain, which a rebuild reading from window_since
    # does not see (offset 0 here): the live window dropped the retry, the rebuilt one wrote
    # it (found by the property test with the window on disk).
    broken = [rec(n, T_MS + n * 45_000, broken=True) for n in range(15)]
    retry = rec(15, T_MS + 15 * 45_000)
    live = DedupWindow(W_S)
    first = plan(broken, live, planned_ms=T_MS + 14 * 45_000)
    assert len(first.dead_letters) == 15
    window = rebuilt(retry, 15, [], dead_keys(first))
    after_restart = plan([retry], window, planned_ms=T_MS + 15 * 45_000)
    without_restart = plan([retry], live, planned_ms=T_MS + 15 * 45_000)
    assert after_restart.duplicates == without_restart.duplicates == 1


def test_a_replay_dropped_for_its_written_event_keeps_the_earlier_replay_of_its_dead_letter(
) -> None:
    # Dead letter 0:1 is replayed (a row, e-1), e-0 is written, then 0:1 is replayed again 61 s
    # after its first replay carrying e-0: dropped, e-0 is in the table. A last replay of 0:1,
    # accepted 50 s after the first (accept times a little out of order), is a second replay
    # within the window: dropped, live as after a restart. Before, the dropped replay added
    # 0:1's key and then discarded it, the first replay's entry with it: live, the last replay
    # was written; the rebuilt window, which reads the first replay's row back, dropped it.
    def replay(offset: int, accepted_ms: int, event_id: str) -> SourceRecord:
        return msgspec.structs.replace(rec(offset, accepted_ms, event_id), replay_of="0:1")

    first = [replay(0, T_MS, "e-1"), rec(1, T_MS + 40_000, "e-0"),
             replay(2, T_MS + 61_000, "e-0")]
    last = replay(3, T_MS + 50_000, "e-2")
    live = DedupWindow(W_S)
    before = plan(first, live, planned_ms=T_MS + 61_000)
    assert (before.valid, before.duplicates) == (2, 1)
    window = rebuilt(last, 3, table_keys(before), [])
    after_restart = plan([last], window, planned_ms=T_MS + 61_000)
    without_restart = plan([last], live, planned_ms=T_MS + 61_000)
    assert after_restart.duplicates == without_restart.duplicates == 1


def test_a_crash_between_dead_letter_and_write_keeps_the_row_before_a_contract_failure(
) -> None:
    # One batch: e-1 is valid, then a record breaking the contract carries e-1's key. Its dead
    # letter is committed, then the consumer dies before the batch's rows are written.
    batch = [rec(0, T_MS), rec(1, T_MS + 1, broken=True)]
    first = plan(batch, DedupWindow(W_S), planned_ms=T_MS)
    assert first.valid == 1 and [d.source_offset for d in first.dead_letters] == [1]
    recovered = recovered_from([1], 0)
    window = rebuilt(batch[0], 0, [], dead_keys(first))  # dead letters past committed: not yet
    again = plan(batch, window, planned_ms=T_MS + 30_000, recovered=recovered)
    assert (again.valid, again.already_dead_lettered, again.duplicates) == (1, 1, 0)
    assert again.batch.rows_json == first.batch.rows_json


def test_keys_skipped_as_dead_lettered_enter_the_window_in_offset_order() -> None:
    # Below the watermark: offset 0 was written, offset 1 (same key, more than the window
    # later) dead-lettered; a retry at offset 2 is a duplicate of offset 1 only.
    batch = [rec(0, T_MS), rec(1, T_MS + 61_000, broken=True), rec(2, T_MS + 62_000)]
    first = plan(batch, DedupWindow(W_S), planned_ms=T_MS + 62_000)
    assert (first.valid, len(first.dead_letters), first.duplicates) == (1, 1, 1)
    again = plan(batch, rebuilt(batch[0], 0, [], []), planned_ms=T_MS + 90_000,
                 recovered=recovered_from([1], 0))
    assert (again.valid, again.already_dead_lettered, again.duplicates) == (1, 1, 1)


def test_how_records_fall_into_batches_changes_no_decision() -> None:
    # e-1 is written; a replay of dead letter 0:0 carrying e-1 is dropped (its event is in the
    # table) and leaves no trace; a later replay of 0:0 carrying e-2 goes through, whether the
    # two replays share a batch or not (found by the property test).
    def replay(offset: int, event_id: str) -> SourceRecord:
        record = rec(offset, T_MS + offset, event_id)
        return msgspec.structs.replace(record, replay_of="0:0")

    records = [rec(0, T_MS), replay(1, "e-1"), rec(2, T_MS + 2), replay(3, "e-2")]
    together = plan(records, DedupWindow(W_S), planned_ms=T_MS)
    window = DedupWindow(W_S)
    apart = [plan([r], window, planned_ms=T_MS) for r in records]
    assert together.duplicates == sum(p.duplicates for p in apart) == 2
    assert together.valid == sum(p.valid for p in apart) == 2
