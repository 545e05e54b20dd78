"""Row building and batch encoding: lineage carried, one JSON array, exact round-trip."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec

from actors.contract import (
    AccountBody,
    AccountUpdated,
    PaymentBody,
    PaymentCaptured,
    PaymentRefunded,
    RefundBody,
)
from actors.rows import (
    EventRow,
    FlushResult,
    SinkBatch,
    encode_rows,
    row_field_index,
    row_from_event,
)

WHEN = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


class RowRecord(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """What a reader of the JSON array sees: positional fields, the body as a plain object."""

    event_id: str
    account_id: str
    event_type: str
    occurred_at: datetime
    schema_version: int
    body: dict[str, Any]
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int
    request_id: str | None
    accepted_at_ms: int | None
    replay_of: str | None


def payment(n: int = 1) -> PaymentCaptured:
    return PaymentCaptured(event_id=f"pay-{n}", account_id="acct-7", occurred_at=WHEN,
                           body=PaymentBody(amount_minor=1250 + n, currency="EUR",
                                            merchant_id="m-1", description="coffee"))


def test_row_carries_the_event_and_its_lineage() -> None:
    row = row_from_event(payment(), topic="events", partition=3, offset=17,
                         request_id="req-1", accepted_at_ms=1_772_366_400_123)
    assert row == EventRow(
        event_id="pay-1", account_id="acct-7", event_type="payment.captured",
        occurred_at=WHEN, schema_version=1, body=payment().body, kafka_topic="events",
        kafka_partition=3, kafka_offset=17, request_id="req-1",
        accepted_at_ms=1_772_366_400_123, replay_of=None)


def test_a_replayed_row_names_its_dead_letter() -> None:
    row = row_from_event(payment(), topic="events", partition=3, offset=18, request_id="req-1",
                         accepted_at_ms=1, replay_of="3:41")
    (record,) = msgspec.json.decode(encode_rows([row]), type=list[RowRecord])
    assert record.replay_of == "3:41" and record.kafka_offset == 18


def test_event_type_is_the_contract_tag_for_every_variant() -> None:
    refund = PaymentRefunded(event_id="r-1", account_id="a", occurred_at=WHEN,
                             body=RefundBody(payment_event_id="p-1", amount_minor=5,
                                             currency="USD"))
    account = AccountUpdated(event_id="u-1", account_id="a", occurred_at=WHEN,
                             body=AccountBody(country="FR"))
    types = [row_from_event(e, topic="t", partition=0, offset=0, request_id=None,
                            accepted_at_ms=None).event_type for e in (payment(), refund, account)]
    assert types == ["payment.captured", "payment.refunded", "account.updated"]


def test_encode_rows_is_one_json_array_that_round_trips() -> None:
    rows = [row_from_event(payment(n), topic="events", partition=1, offset=100 + n,
                           request_id=None if n % 2 else f"req-{n}",
                           accepted_at_ms=None if n % 2 else 1_772_366_400_000 + n)
            for n in range(5)]
    data = encode_rows(rows)
    assert data.startswith(b"[") and data.endswith(b"]")
    records = msgspec.json.decode(data, type=list[RowRecord])
    assert [r.kafka_offset for r in records] == [100, 101, 102, 103, 104]
    for row, record in zip(rows, records, strict=True):
        assert record.event_id == row.event_id
        assert record.occurred_at == row.occurred_at  # microseconds and zone kept
        assert record.request_id == row.request_id
        assert record.accepted_at_ms == row.accepted_at_ms
        assert record.replay_of is None
        assert record.body == msgspec.to_builtins(row.body)
    # A null optional is written as JSON null (the warehouse casts it to NULL).
    assert records[1].request_id is None
    assert msgspec.json.decode(data)[1][row_field_index("request_id")] is None


def test_body_is_written_as_an_object_not_a_string() -> None:
    row = row_from_event(payment(), topic="t", partition=0, offset=0, request_id=None,
                         accepted_at_ms=None)
    (decoded,) = msgspec.json.decode(encode_rows([row]))
    assert decoded[row_field_index("body")] == {
        "amount_minor": 1251, "currency": "EUR", "merchant_id": "m-1", "description": "coffee"}


def test_non_utc_timestamps_keep_their_instant() -> None:
    tz = timezone(timedelta(hours=-5))
    event = PaymentCaptured(event_id="p", account_id="a", occurred_at=WHEN.astimezone(tz),
                            body=PaymentBody(amount_minor=1, currency="EUR", merchant_id="m"))
    row = row_from_event(event, topic="t", partition=0, offset=0, request_id=None,
                         accepted_at_ms=None)
    (record,) = msgspec.json.decode(encode_rows([row]), type=list[RowRecord])
    assert record.occurred_at == WHEN


def test_empty_batch_encodes_as_an_empty_array() -> None:
    assert encode_rows([]) == b"[]"


def test_batch_structs_pickle_for_ray() -> None:
    rows = [row_from_event(payment(), topic="t", partition=2, offset=9, request_id="r",
                           accepted_at_ms=1)]
    batch = SinkBatch(topic="t", partition=2, from_offset=9, to_offset=11,
                      rows_json=encode_rows(rows), row_count=1)
    result = FlushResult(rows_written=1, rows_skipped=0, committed_offset=11, seconds=0.01)
    assert pickle.loads(pickle.dumps(batch)) == batch
    assert pickle.loads(pickle.dumps(result)) == result
    assert pickle.loads(pickle.dumps(rows[0])) == rows[0]
