from __future__ import annotations

import pickle
import re
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.contract import (
    EVENT_TYPES,
    ID_CHARS,
    UPPER_CASE,
    AccountBody,
    AccountUpdated,
    Charset,
    EventCodec,
    FieldError,
    PaymentBody,
    PaymentCaptured,
    charset_errors,
    describe_error,
    event_type,
)
from actors.secret import Secret

GOOD = {
    "type": "payment.captured",
    "event_id": "e-1",
    "account_id": "acct-1",
    "occurred_at": "2026-11-28T12:00:00Z",
    "body": {"amount_minor": 1250, "currency": "EUR", "merchant_id": "m-1"},
}


def _decode(doc: object) -> object:
    return EventCodec().decode_json(msgspec.json.encode(doc))


def test_a_valid_event_decodes_to_its_typed_variant_and_round_trips() -> None:
    codec = EventCodec()
    event = codec.decode_json(msgspec.json.encode(GOOD))
    assert isinstance(event, PaymentCaptured)
    assert event_type(event) == "payment.captured"
    assert event.occurred_at == datetime(2026, 11, 28, 12, tzinfo=UTC)
    assert event.schema_version == 1
    assert codec.decode_json(codec.encode(event)) == event


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"type": "payment.lost"}, "$.type", "Invalid value 'payment.lost'"),
        ({"event_id": ""}, "$.event_id", "Expected `str` of length >= 1"),
        ({"occurred_at": "2026-11-28T12:00:00"}, "$.occurred_at", "timezone"),
        ({"schema_version": 2}, "$.schema_version", "Invalid enum value 2"),
        ({"extra": 1}, "$", "unknown field `extra`"),
        ({"body": {"amount_minor": -1, "currency": "EUR", "merchant_id": "m"}},
         "$.body.amount_minor", ">= 0"),
        ({"body": {"amount_minor": 10**30, "currency": "EUR", "merchant_id": "m"}},
         "$.body.amount_minor", "<= 9007199254740992"),
        ({"body": {"amount_minor": 1, "currency": "eur", "merchant_id": "m"}},
         "$.body.currency", "matching regex"),
        ({"body": {"currency": "EUR", "merchant_id": "m"}}, "$.body",
         "missing required field `amount_minor`"),
        ({"body": {"country": "DE"}}, "$.body", "unknown field `country`"),
    ],
)
def test_contract_errors_name_the_field_and_the_reason(
    change: dict[str, object], field: str, reason: str
) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        _decode({**GOOD, **change})
    error = describe_error(info.value)
    assert error.field == field
    assert reason in error.reason


def test_malformed_json_is_a_decode_error_at_the_root() -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        EventCodec().decode_json(b'{"type": ')
    assert describe_error(info.value).field == "$"


def test_every_variant_has_a_distinct_tag() -> None:
    tags = [cls.__struct_config__.tag for cls in EVENT_TYPES]
    assert len(set(tags)) == len(tags) == 3
    assert AccountUpdated.__struct_config__.tag == "account.updated"


def test_secrets_are_masked_but_survive_pickling() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert pickle.loads(pickle.dumps(secret)).reveal() == "hunter2"


def test_decoded_events_are_not_tracked_by_the_cyclic_gc() -> None:
    # A consumer holds tens of thousands of events per batch; tracked, they made the cyclic
    # GC take over half of its CPU. Events cannot form cycles, so they opt out (gc=False).
    import gc

    event = EventCodec().decode_json(msgspec.json.encode(GOOD))
    assert isinstance(event, PaymentCaptured)
    assert not gc.is_tracked(event)
    assert not gc.is_tracked(event.body)


# Characters near every edge of the charsets, plus separators and non-ASCII look-alikes.
_TRICKY = st.text(alphabet=st.sampled_from(
    "aZz09AM._:-/ \n\x00\u00e9\u0130\u212a\uff21\u0660" + "".join(map(chr, range(32, 127)))),
    max_size=8)


@pytest.mark.parametrize("charset", [ID_CHARS, UPPER_CASE])
@given(values=st.lists(_TRICKY, max_size=6))
def test_charsets_accept_exactly_what_their_pattern_matches(
        charset: Charset, values: list[str]) -> None:
    # The pattern is what the schema and errors show; the translate-based check must agree.
    pattern = re.compile(charset.pattern)
    expected = [pattern.fullmatch(v) is not None for v in values]
    assert [charset.accepts(v) for v in values] == expected
    assert charset.accepts_all(values) == all(expected)


def test_a_charset_refuses_unicode_class_escapes_and_a_first_set_outside_it() -> None:
    with pytest.raises(ValueError, match="ASCII literals"):
        Charset(r"\w")
    with pytest.raises(ValueError, match="subset"):
        Charset("a-z", first="A-Z")


def test_charset_errors_name_the_first_bad_field_of_each_event_of_every_type() -> None:
    def payment(event_id: str, currency: str = "EUR") -> PaymentCaptured:
        return PaymentCaptured(event_id=event_id, account_id="a-1", occurred_at=datetime.now(UTC),
                               body=PaymentBody(amount_minor=1, currency=currency,
                                                merchant_id="m-1"))

    account = AccountUpdated(event_id="e-9", account_id="a-1", occurred_at=datetime.now(UTC),
                             body=AccountBody(country="d\u00e9"))
    events = [payment("e-1"), payment("e 2", currency="eur"), account, payment("e-4", "US$")]
    assert charset_errors(events) == [
        (1, FieldError("$.event_id", ID_CHARS.reason)),
        (2, FieldError("$.body.country", UPPER_CASE.reason)),
        (3, FieldError("$.body.currency", UPPER_CASE.reason)),
    ]
    assert charset_errors([payment("e-1"), account]) == [
        (1, FieldError("$.body.country", UPPER_CASE.reason))]
    assert charset_errors([]) == []


def test_the_schema_still_shows_each_pattern() -> None:
    schema = msgspec.json.schema(PaymentCaptured)
    body = schema["$defs"]["PaymentBody"]["properties"]
    assert body["currency"] == {"type": "string", "minLength": 3, "maxLength": 3,
                                "pattern": "^[A-Z]*$"}
    envelope = schema["$defs"]["PaymentCaptured"]["properties"]
    assert envelope["event_id"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._:\\-]*$"
