"""Pure parts of the partition consumer: batching, dedup window, offset bookkeeping, planning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from actors.batch_plan import batch_range, plan_batch
from actors.batching import Accumulator
from actors.config import ConsumerConfig, ValidationRules
from actors.consumer import consumer_name, sink_index
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_DLQ_SOURCE_OFFSET,
    HEADER_REQUEST_ID,
    AccountBody,
    AccountUpdated,
    EventCodec,
    PaymentBody,
    PaymentCaptured,
)
from actors.dead_letter import Recovered, dead_letter_headers, source_offset_of
from actors.exceptions import EventrayError
from actors.rate_meter import RateMeter
from actors.records import RecordReader, SourceRecord, record_from_message
from actors.retry_window import DedupWindow
from actors.rows import encode_rows, row_field_index, row_from_event

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
CODEC = EventCodec()
RULES = ValidationRules()


def payment(event_id: str, account: str = "acct-1", amount: int = 100,
            currency: str = "EUR") -> PaymentCaptured:
    return PaymentCaptured(event_id=event_id, account_id=account,
                           occurred_at=NOW - timedelta(minutes=5),
                           body=PaymentBody(amount_minor=amount, currency=currency,
                                            merchant_id="merchant-1"))


def record(offset: int, value: bytes | None, accepted_at_ms: int | None = None) -> SourceRecord:
    headers = [(HEADER_REQUEST_ID, b"req-1")]
    if accepted_at_ms is not None:
        headers.append((HEADER_ACCEPTED_AT_MS, str(accepted_at_ms).encode()))
    return SourceRecord(offset=offset, key=b"acct-1", value=value, headers=headers,
                        request_id="req-1", accepted_at_ms=accepted_at_ms)


def rec(offset: int, event: PaymentCaptured | AccountUpdated) -> SourceRecord:
    return record(offset, CODEC.encode(event), accepted_at_ms=NOW_MS)


def plan(records: list[SourceRecord], *, next_from: int | None = 0,
         window: DedupWindow | None = None, recovered: Recovered | None = None):  # type: ignore[no-untyped-def]
    kwargs = {} if recovered is None else {"recovered": recovered}
    return plan_batch(records, topic="events", partition=3, next_from=next_from, codec=CODEC,
                      rules=RULES, now=NOW,
                      window=window if window is not None else DedupWindow(3600), now_ms=NOW_MS,
                      **kwargs)


def written_offsets(rows_json: bytes) -> list[int]:
    offset = row_field_index("kafka_offset")
    return [row[offset] for row in msgspec.json.decode(rows_json, type=list[list[object]])]


def test_names_and_routing() -> None:
    assert consumer_name("events", 7) == "consumer:events:7"
    assert [sink_index(p, 3) for p in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_accumulator_flushes_by_count_bytes_and_age() -> None:
    cfg = ConsumerConfig(batch_max_events=3, batch_max_bytes=100, batch_max_wait_s=1.0)
    acc = Accumulator(cfg)
    assert not acc.full(0.0)
    acc.add([record(0, b"x" * 10), record(1, b"x" * 10)], now=10.0)
    assert acc.room == 1 and not acc.full(10.5)
    assert acc.full(11.0)  # age
    acc.add([record(2, b"x")], now=10.6)
    assert acc.full(10.6)  # count
    assert [r.offset for r in acc.take()] == [0, 1, 2]
    assert acc.records == [] and acc.bytes == 0 and acc.started is None
    acc.add([record(3, b"x" * 120)], now=20.0)
    assert acc.full(20.0)  # bytes
    acc.take()
    assert not acc.full(30.0, drained=True)  # nothing to flush
    acc.add([record(4, b"x")], now=30.0)
    assert not acc.full(30.1) and acc.full(30.1, drained=True)  # caught up: no need to wait


def test_dedup_window_evicts_by_accept_time() -> None:
    window = DedupWindow(window_s=10)
    window.add(("a", "1"), at_ms=1_000)
    window.add(("a", "2"), at_ms=5_000)
    window.load([("b", "9")], at_ms=8_000)
    assert window.seen(("a", "1")) and window.seen(("b", "9"))
    assert window.evict(now_ms=11_500) == 1
    assert not window.seen(("a", "1")) and window.seen(("a", "2"))
    assert window.evict(now_ms=100_000) == 2 and len(window) == 0


def test_dedup_window_past_max_keys_forgets_the_oldest_and_counts_it() -> None:
    window = DedupWindow(window_s=3600, max_keys=2)
    window.load([("a", "1"), ("a", "2"), ("a", "3")], at_ms=1_000)  # oldest first
    assert len(window) == 2 and window.evicted_early == 1
    assert not window.seen(("a", "1")) and window.seen(("a", "2")) and window.seen(("a", "3"))
    assert not window.first_seen(("a", "3"), at_ms=2_000)  # a duplicate evicts nothing
    assert window.first_seen(("b", "1"), at_ms=2_000)
    assert window.evicted_early == 2 and not window.seen(("a", "2"))


def test_plan_batch_with_a_full_window_still_drops_duplicates_it_holds() -> None:
    window = DedupWindow(window_s=3600, max_keys=3)
    first = plan([rec(0, payment("e1")), rec(1, payment("e2"))], window=window)
    again = plan([rec(2, payment("e2")), rec(3, payment("e3")), rec(4, payment("e4"))],
                 next_from=first.batch.to_offset, window=window)
    assert again.duplicates == 1 and again.valid == 2
    assert window.evicted_early == 1  # e1 made room for e4: a retry of e1 would be written


def test_batch_range_continues_from_the_committed_offset() -> None:
    records = [record(5, b"{}"), record(6, b"{}"), record(9, b"{}")]
    assert batch_range(5, records) == (5, 10)
    assert batch_range(None, records) == (5, 10)  # never written: starts at the first record
    assert batch_range(2, records) == (2, 10)     # a gap (retention, markers) is inside the range
    with pytest.raises(EventrayError):
        batch_range(6, records)                   # a record below the position
    with pytest.raises(EventrayError):
        batch_range(0, [record(3, b"{}"), record(3, b"{}")])


def test_plan_splits_valid_invalid_contract_and_duplicates() -> None:
    account = AccountUpdated(event_id="e-acc", account_id="acct-1",
                             occurred_at=NOW, body=AccountBody(country="QQ"))
    records = [
        rec(10, payment("e-1")),
        rec(11, payment("e-2", currency="XYZ")),       # rule: unknown currency
        record(12, b'{"type": "payment.captured"}'),    # contract
        rec(13, payment("e-1")),                        # duplicate inside the batch
        rec(14, account),                               # rule: unknown country
        record(15, None),                               # tombstone: contract
        rec(16, payment("e-3")),
    ]
    result = plan(records, next_from=10)
    assert (result.batch.from_offset, result.batch.to_offset) == (10, 17)
    assert result.batch.row_count == 2 and written_offsets(result.batch.rows_json) == [10, 16]
    assert result.duplicates == 1 and result.valid == 2 and result.consumed == 7
    assert [d.source_offset for d in result.dead_letters] == [11, 12, 14, 15]
    reasons = {d.source_offset: d.reason for d in result.dead_letters}
    assert reasons[11].startswith("unknown_currency")
    assert reasons[12].startswith("contract: $")
    assert reasons[14].startswith("unknown_country")
    assert result.rejected == {"unknown_currency": 1, "contract": 2, "unknown_country": 1}
    row = msgspec.json.decode(result.batch.rows_json, type=list[list[object]])[0]
    lineage = [row[row_field_index(f)] for f in ("kafka_topic", "kafka_partition", "request_id")]
    assert lineage == ["events", 3, "req-1"]


def test_plan_drops_events_written_before_and_remembers_new_ones() -> None:
    window = DedupWindow(3600)
    window.load([("acct-1", "e-old")], at_ms=NOW_MS)
    first = plan([rec(0, payment("e-old")), rec(1, payment("e-new"))], window=window)
    assert first.duplicates == 1 and written_offsets(first.batch.rows_json) == [1]
    # A client retry of e-new in a later batch is dropped: not written, not dead-lettered.
    second = plan([rec(2, payment("e-new"))], next_from=2, window=window)
    assert second.batch.row_count == 0 and second.dead_letters == [] and second.duplicates == 1
    assert (second.batch.from_offset, second.batch.to_offset) == (2, 3)
    # The same event id for ANOTHER account is a different event.
    other = plan([rec(3, payment("e-new", account="acct-2"))], next_from=3, window=window)
    assert other.batch.row_count == 1


def test_replay_below_the_dlq_watermark_keeps_the_first_verdict() -> None:
    # A predecessor dead-lettered offsets 21 and 23 (committed), then died before the sink write.
    recovered = Recovered(watermark=23, offsets=frozenset({21, 23}))
    far_future = PaymentCaptured(event_id="e-f", account_id="acct-1",
                                 occurred_at=NOW + timedelta(days=2),
                                 body=PaymentBody(amount_minor=5, currency="EUR",
                                                  merchant_id="m-1"))
    records = [
        rec(20, payment("e-20")),
        rec(21, payment("e-21", currency="XYZ")),  # already dead-lettered: skipped
        rec(22, far_future),                       # judged valid the first time: stays valid
        record(23, b"not json"),                   # already dead-lettered: skipped
        rec(24, payment("e-24", currency="XYZ")),  # beyond the watermark: dead-lettered now
    ]
    result = plan(records, next_from=20, recovered=recovered)
    assert written_offsets(result.batch.rows_json) == [20, 22]
    assert [d.source_offset for d in result.dead_letters] == [24]
    assert result.already_dead_lettered == 2


def test_replay_refuses_an_invalid_record_missing_from_the_dlq() -> None:
    with pytest.raises(EventrayError, match="not in the dead-letter topic"):
        plan([record(5, b"garbage")], next_from=5,
             recovered=Recovered(watermark=9, offsets=frozenset({9})))


def test_dead_letter_headers_round_trip_the_source_offset() -> None:
    result = plan([record(42, b"{}")], next_from=42)
    headers = dead_letter_headers(result.dead_letters[0], "events", 3)
    assert source_offset_of(headers) == 42
    assert dict(headers)[HEADER_REQUEST_ID] == b"req-1"  # the source headers are carried over
    assert source_offset_of([("other", b"1")]) is None
    assert HEADER_DLQ_SOURCE_OFFSET in dict(headers)


def test_rate_meter() -> None:
    meter = RateMeter(window_s=10)
    assert meter.rate(0.0) == 0.0
    meter.add(100, now=0.0)
    meter.add(300, now=2.0)
    assert meter.total == 400
    assert meter.rate(4.0) == pytest.approx(300 / 4.0)


def test_an_invalid_event_posted_twice_is_dead_lettered_once() -> None:
    window = DedupWindow(3600)
    bad = payment("e-bad", currency="XYZ")
    first = plan([rec(0, bad), rec(1, bad)], window=window)
    assert [d.source_offset for d in first.dead_letters] == [0] and first.duplicates == 1
    later = plan([rec(2, bad)], next_from=2, window=window)
    assert later.dead_letters == [] and later.duplicates == 1 and later.batch.row_count == 0


def test_a_replayed_dead_letter_still_marks_its_key() -> None:
    window = DedupWindow(3600)
    bad = payment("e-bad", currency="XYZ")
    result = plan([rec(5, bad), rec(6, bad)], next_from=5, window=window,
                  recovered=Recovered(watermark=5, offsets=frozenset({5})))
    assert result.already_dead_lettered == 1 and result.duplicates == 1
    assert result.dead_letters == []


class FakeMessage:
    """The parts of a confluent-kafka ``Message`` the consumer reads."""

    def __init__(self, offset: int, value: bytes | None,
                 headers: list[tuple[str, bytes | None]] | None, key: bytes | None = b"acct-1",
                 error: object = None, timestamp_ms: int | None = None) -> None:
        self._offset, self._value, self._headers, self._key = offset, value, headers, key
        self._error = error
        # (TIMESTAMP_CREATE_TIME, ms) or (TIMESTAMP_NOT_AVAILABLE, -1), as confluent-kafka
        self._timestamp = (0, -1) if timestamp_ms is None else (1, timestamp_ms)

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return None if self._headers is None else list(self._headers)  # a new list per call

    def error(self) -> object:
        return self._error


def gateway_headers(request_id: str, accepted_ms: int) -> list[tuple[str, bytes | None]]:
    return [("content-type", b"application/json"), (HEADER_REQUEST_ID, request_id.encode()),
            (HEADER_ACCEPTED_AT_MS, str(accepted_ms).encode()),
            ("eventray-schema-version", b"1")]


def test_record_from_message_parses_the_gateway_headers() -> None:
    msg = FakeMessage(7, b"{}", [("x-null", None), *gateway_headers("req-9", 1234)])
    rec_ = record_from_message(msg)
    assert (rec_.offset, rec_.key, rec_.value) == (7, b"acct-1", b"{}")
    assert (rec_.request_id, rec_.accepted_at_ms) == ("req-9", 1234)
    assert rec_.headers == (("x-null", None), *gateway_headers("req-9", 1234))
    foreign = record_from_message(FakeMessage(8, b"{}", [(HEADER_ACCEPTED_AT_MS, b"soon"),
                                                         (HEADER_REQUEST_ID, None)]))
    assert (foreign.request_id, foreign.accepted_at_ms) == (None, None)
    bare = record_from_message(FakeMessage(9, None, None, key=None))
    assert (bare.headers, bare.request_id, bare.accepted_at_ms, bare.size) == ((), None, None, 0)
    # Without the gateway's header a record is timed by its Kafka timestamp, which is in the
    # log: planned again after a crash, it gets the same accept time.
    timed = record_from_message(FakeMessage(10, b"{}", None, timestamp_ms=4321))
    assert timed.accepted_at_ms == 4321


def test_record_reader_parses_each_run_of_equal_headers_once() -> None:
    reader = RecordReader()
    error = object()
    msgs = [
        FakeMessage(0, b"a" * 10, gateway_headers("req-1", 100)),
        FakeMessage(1, b"b" * 20, gateway_headers("req-1", 100)),
        FakeMessage(2, None, None, error=error),
        FakeMessage(3, b"c", gateway_headers("req-2", 200), key=None),
        FakeMessage(4, b"d", None),
    ]
    records, nbytes, errors = reader.read(msgs)
    assert [r.offset for r in records] == [0, 1, 3, 4]
    assert errors == [msgs[2]]
    assert nbytes == sum(r.size for r in records) == 10 + 20 + 1 + 1 + 3 * len(b"acct-1")
    assert [(r.request_id, r.accepted_at_ms) for r in records] == [
        ("req-1", 100), ("req-1", 100), ("req-2", 200), (None, None)]
    assert records[0].headers is records[1].headers  # parsed once, shared
    assert records[3].headers == ()
    # The reader remembers the last headers across calls, and still sees them change.
    more, _, _ = reader.read([FakeMessage(5, b"e", None),
                              FakeMessage(6, b"f", gateway_headers("req-3", 300)),
                              FakeMessage(7, b"g", None, timestamp_ms=350)])
    assert [(r.request_id, r.accepted_at_ms) for r in more] == [
        (None, None), ("req-3", 300), (None, 350)]
    assert records == [record_from_message(m) for m in msgs[:2] + msgs[3:]]


def test_accumulator_takes_a_precomputed_size() -> None:
    acc = Accumulator(ConsumerConfig(batch_max_events=10, batch_max_bytes=100))
    acc.add([], now=1.0, nbytes=0)
    assert acc.started is None and not acc.full(1.0)
    records = [record(0, b"x" * 44), record(1, b"x" * 44)]  # + 6-byte keys
    acc.add(records, now=2.0, nbytes=sum(r.size for r in records))
    assert acc.bytes == 100 and acc.started == 2.0 and acc.full(2.0)


def test_batch_range_detects_any_disorder() -> None:
    assert batch_range(0, [record(0, b"{}")]) == (0, 1)
    for offsets in ([0, 2, 1], [0, 1, 1], [3, 2, 5], [0, 1, 2, 3, 3]):
        with pytest.raises(EventrayError):
            batch_range(0, [record(o, b"{}") for o in offsets])


def test_dedup_window_first_seen() -> None:
    window = DedupWindow(10)
    assert window.first_seen(("a", "1"), 1_000)
    assert not window.first_seen(("a", "1"), 9_000)  # keeps the first accept time
    assert window.evict(now_ms=11_001) == 1 and len(window) == 0


def test_dead_letters_leave_out_headers_without_a_value() -> None:
    headers = [("x-null", None), *gateway_headers("req-5", NOW_MS)]
    bad = SourceRecord(offset=3, key=b"acct-1", value=b"not json", headers=tuple(headers),
                       request_id="req-5", accepted_at_ms=NOW_MS)
    letter = plan([bad], next_from=3).dead_letters[0]
    assert letter.headers == tuple(gateway_headers("req-5", NOW_MS))
    assert dict(dead_letter_headers(letter, "events", 3))[HEADER_REQUEST_ID] == b"req-5"


def test_rows_carry_the_tag_and_lineage_of_each_event_type() -> None:
    account = AccountUpdated(event_id="e-acc", account_id="acct-1", occurred_at=NOW,
                             body=AccountBody(country="DE"))
    result = plan([rec(0, payment("e-1")), rec(1, account)])
    rows = msgspec.json.decode(result.batch.rows_json, type=list[list[object]])
    assert [row[row_field_index("event_type")] for row in rows] == [
        "payment.captured", "account.updated"]
    expected = [row_from_event(CODEC.decode_json(CODEC.encode(e)), topic="events", partition=3,
                               offset=o, request_id="req-1", accepted_at_ms=NOW_MS)
                for o, e in ((0, payment("e-1")), (1, account))]
    assert result.batch.rows_json == encode_rows(expected)


def test_a_bad_character_in_an_id_is_a_contract_dead_letter_naming_the_field() -> None:
    # Charsets are checked for the whole batch after decoding: the bad record goes to the
    # dead-letter topic with its field, the good ones around it are written.
    bad_id = rec(31, payment("e bad"))  # a space: not in the id charset
    bad_currency = record(32, CODEC.encode(payment("e-32")).replace(b'"EUR"', b'"eu1"'),
                          accepted_at_ms=NOW_MS)
    result = plan([rec(30, payment("e-30")), bad_id, bad_currency, rec(33, payment("e-33"))],
                  next_from=30)
    assert written_offsets(result.batch.rows_json) == [30, 33]
    reasons = {d.source_offset: d.reason for d in result.dead_letters}
    assert reasons[31].startswith("contract: $.event_id: Expected `str` matching regex")
    assert reasons[32].startswith("contract: $.body.currency: Expected `str` matching regex")
    assert result.rejected == {"contract": 2}


def test_replay_refuses_a_bad_charset_record_missing_from_the_dlq() -> None:
    with pytest.raises(EventrayError, match=r"\$\.event_id.*not in the dead-letter topic"):
        plan([rec(5, payment("e bad"))], next_from=5,
             recovered=Recovered(watermark=9, offsets=frozenset({9})))
