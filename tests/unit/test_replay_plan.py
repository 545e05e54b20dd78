"""Replays in batch planning: a replayed dead letter is identified by its dead letter, so the
retry window lets it through once, drops a second replay of it, and keeps dropping retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from actors.batch_plan import BatchPlan, plan_batch
from actors.config import ValidationRules
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_REPLAY_OF,
    HEADER_REQUEST_ID,
    EventCodec,
    PaymentBody,
    PaymentCaptured,
)
from actors.dead_letter import Recovered, dead_letter_headers, event_key, replay_of_header
from actors.records import SourceRecord, parse_headers
from actors.retry_window import DedupWindow, replay_key
from actors.rows import row_field_index

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
CODEC = EventCodec()
STRICT = ValidationRules(max_amount_minor=1_000)  # the rule before the fix
FIXED = ValidationRules(max_amount_minor=1_000_000)  # and after


def payment(event_id: str, amount: int = 5_000, currency: str = "EUR") -> PaymentCaptured:
    return PaymentCaptured(event_id=event_id, account_id="acct-1",
                           occurred_at=NOW - timedelta(minutes=5),
                           body=PaymentBody(amount_minor=amount, currency=currency,
                                            merchant_id="merchant-1"))


def record(offset: int, value: bytes, replay_of: str | None = None) -> SourceRecord:
    raw: list[tuple[str, bytes | None]] = [(HEADER_REQUEST_ID, b"req-1"),
                                           (HEADER_ACCEPTED_AT_MS, str(NOW_MS).encode())]
    if replay_of is not None:
        raw.append((HEADER_REPLAY_OF, replay_of.encode()))
    return SourceRecord(offset, b"acct-1", value, *parse_headers(raw))


def rec(offset: int, event: PaymentCaptured, replay_of: str | None = None) -> SourceRecord:
    return record(offset, CODEC.encode(event), replay_of)


def plan(records: list[SourceRecord], window: DedupWindow, *, rules: ValidationRules = FIXED,
         recovered: Recovered | None = None) -> BatchPlan:
    kwargs = {} if recovered is None else {"recovered": recovered}
    return plan_batch(records, topic="events", partition=2, next_from=records[0].offset,
                      codec=CODEC, rules=rules, now=NOW, window=window, now_ms=NOW_MS,
                      **kwargs)


def rows_of(result: BatchPlan) -> list[tuple[str, int, str | None]]:
    """(event id, offset, replay of) of each row."""
    fields = [row_field_index(f) for f in ("event_id", "kafka_offset", "replay_of")]
    rows = msgspec.json.decode(result.batch.rows_json, type=list[list[object]])
    return [tuple(row[i] for i in fields) for row in rows]  # type: ignore[misc]


def dead_lettered_window() -> DedupWindow:
    """A window after e-1 was dead-lettered under the strict rule (at offset 0)."""
    window = DedupWindow(3600)
    first = plan([rec(0, payment("e-1"))], window, rules=STRICT)
    assert [d.source_offset for d in first.dead_letters] == [0]
    assert first.rejected == {"amount_above_max": 1}
    return window


def test_a_client_retry_of_a_dead_letter_is_still_dropped() -> None:
    window = dead_lettered_window()
    retry = plan([rec(1, payment("e-1"))], window)
    assert retry.duplicates == 1 and retry.batch.row_count == 0 and retry.dead_letters == []


def test_a_replay_after_the_rule_fix_becomes_one_row_naming_its_dead_letter() -> None:
    window = dead_lettered_window()
    result = plan([rec(5, payment("e-1"), replay_of="2:0")], window)
    assert rows_of(result) == [("e-1", 5, "2:0")] and result.duplicates == 0
    assert window.written(("acct-1", "e-1"), NOW_MS) and window.seen(replay_key("2:0"))


def test_a_dead_letter_replayed_twice_lands_once() -> None:
    window = dead_lettered_window()
    same_batch = plan([rec(5, payment("e-1"), replay_of="2:0"),
                       rec(6, payment("e-1"), replay_of="2:0")], window)
    assert rows_of(same_batch) == [("e-1", 5, "2:0")] and same_batch.duplicates == 1
    later = plan([rec(7, payment("e-1"), replay_of="2:0")], window)
    assert later.batch.row_count == 0 and later.dead_letters == [] and later.duplicates == 1


def test_after_a_replay_is_written_client_retries_and_other_replays_are_dropped() -> None:
    window = dead_lettered_window()
    plan([rec(5, payment("e-1"), replay_of="2:0")], window)
    retry = plan([rec(6, payment("e-1"))], window)
    # Another dead letter of the same event (e.g. dead-lettered again a day later): its
    # event is in the table now.
    other = plan([rec(7, payment("e-1"), replay_of="2:9")], window)
    assert retry.duplicates == 1 and other.duplicates == 1
    assert retry.batch.row_count == other.batch.row_count == 0


def test_a_replay_of_an_event_a_client_retry_wrote_is_dropped() -> None:
    # The window forgot the dead letter; a client retry wrote the event; then the replay.
    window = DedupWindow(3600)
    window.load([("acct-1", "e-1")], NOW_MS)  # from the table: written
    result = plan([rec(9, payment("e-1"), replay_of="2:0")], window)
    assert result.duplicates == 1 and result.batch.row_count == 0


def test_a_replay_that_fails_again_goes_back_with_its_new_reason_and_replay_of() -> None:
    window = dead_lettered_window()
    again = plan([rec(5, payment("e-1", currency="XYZ"), replay_of="2:0")], window)
    assert again.batch.row_count == 0 and again.rejected == {"unknown_currency": 1}
    (letter,) = again.dead_letters
    assert letter.reason.startswith("unknown_currency") and letter.source_offset == 5
    headers = dead_letter_headers(letter, "events", 2)
    assert replay_of_header(headers) == "2:0"
    # The same dead letter replayed again is dropped; the new dead letter may be replayed.
    twice = plan([rec(6, payment("e-1", currency="XYZ"), replay_of="2:0")], window)
    assert twice.duplicates == 1 and twice.dead_letters == []
    fixed = plan([rec(7, payment("e-1"), replay_of="2:3")], window)
    assert rows_of(fixed) == [("e-1", 7, "2:3")]


def test_a_replay_that_breaks_the_contract_goes_back_once() -> None:
    window = DedupWindow(3600)
    broken = record(5, b'{"type": "payment.captured"}', replay_of="2:1")
    first = plan([broken], window)
    assert [d.reason.split(":")[0] for d in first.dead_letters] == ["contract"]
    assert replay_of_header(dead_letter_headers(first.dead_letters[0], "events", 2)) == "2:1"
    second = plan([record(6, broken.value or b"", replay_of="2:1")], window)
    assert second.dead_letters == [] and second.duplicates == 1


def test_the_window_rebuilt_from_table_and_dlq_decides_like_the_live_one() -> None:
    # What a restarted consumer loads: the table's keys (written) with the replay keys of
    # replayed rows, then the dead-letter topic's keys (not written) with the replay keys of
    # replays that failed again.
    rebuilt = DedupWindow(3600)
    rebuilt.load([("acct-1", "e-2"), replay_key("2:4")], NOW_MS)
    rebuilt.load([("acct-1", "e-1"), ("acct-1", "e-2"), ("acct-1", "e-3"), replay_key("2:7")],
                 NOW_MS, written=False)
    assert not rebuilt.written(("acct-1", "e-1"), NOW_MS)
    assert rebuilt.written(("acct-1", "e-2"), NOW_MS)
    result = plan([
        rec(20, payment("e-1"), replay_of="2:0"),   # dead-lettered only: goes through
        rec(21, payment("e-2"), replay_of="2:4"),   # replayed and written before: dropped
        rec(22, payment("e-3"), replay_of="2:7"),   # replayed before, failed again: dropped
        rec(23, payment("e-3"), replay_of="2:8"),   # its new dead letter: goes through
        rec(24, payment("e-1")),                    # a client retry: dropped
    ], rebuilt)
    assert rows_of(result) == [("e-1", 20, "2:0"), ("e-3", 23, "2:8")]
    assert result.duplicates == 3


def test_a_replay_dead_lettered_before_a_restart_is_skipped_and_remembered() -> None:
    window = DedupWindow(3600)
    bad = rec(30, payment("e-1", currency="XYZ"), replay_of="2:0")
    result = plan([bad], window, recovered=Recovered(watermark=30, offsets=frozenset({30})))
    assert result.already_dead_lettered == 1 and result.dead_letters == []
    assert window.seen(replay_key("2:0")) and not window.written(("acct-1", "e-1"), NOW_MS)
    assert event_key(bad.value) == ("acct-1", "e-1")
    again = plan([rec(31, payment("e-1"), replay_of="2:0")], window)
    assert again.duplicates == 1 and again.batch.row_count == 0


def test_replay_keys_never_collide_with_event_keys() -> None:
    window = DedupWindow(3600)
    # An account may be called "replay-of"; the replay namespace is not a valid account id.
    result = plan([rec(0, payment("2:0")), rec(1, payment("e-1"), replay_of="2:0")], window)
    assert [r[0] for r in rows_of(result)] == ["2:0", "e-1"]


def test_window_kinds_survive_loading_and_eviction() -> None:
    window = DedupWindow(60)
    window.load([("a", "1")], NOW_MS)
    window.load([("a", "1"), ("a", "2")], NOW_MS, written=False)
    # never downgraded
    assert window.written(("a", "1"), NOW_MS) and not window.written(("a", "2"), NOW_MS)
    window.mark_written(("a", "2"), NOW_MS)
    later = NOW_MS + 120_000
    window.mark_written(("a", "3"), later)
    assert window.written(("a", "2"), NOW_MS) and window.written(("a", "3"), later)
    assert not window.written(("a", "2"), later)  # out of the window of a later record
    assert window.evict(NOW_MS + 90_000) == 2
    assert not window.seen(("a", "1")) and window.written(("a", "3"), later) and len(window) == 1
