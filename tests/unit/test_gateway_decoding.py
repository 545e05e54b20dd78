from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.contract import EventCodec, PaymentCaptured
from gateway.decoding import BodyDecoder, MediaType, _problem, parse_media_type
from gateway.exceptions import Problem, RequestRejectedError

GOOD: dict[str, Any] = {
    "type": "payment.captured",
    "event_id": "e-1",
    "account_id": "acct-1",
    "occurred_at": "2026-11-28T12:00:00Z",
    "body": {"amount_minor": 1250, "currency": "EUR", "merchant_id": "m-1"},
}


def event(n: int, **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    doc["event_id"] = f"e-{n}"
    doc.update(changes)
    return doc


def rejected(call: Any, *args: Any) -> RequestRejectedError:
    with pytest.raises(RequestRejectedError) as info:
        call(*args)
    return info.value


@pytest.fixture
def decoder() -> BodyDecoder:
    return BodyDecoder(EventCodec(), max_events=3)


@pytest.mark.parametrize(("header", "batch", "expected"), [
    ("application/json", False, MediaType.JSON),
    ("Application/JSON; charset=utf-8", True, MediaType.JSON),
    ("application/x-ndjson", True, MediaType.NDJSON),
    ("application/msgpack", False, MediaType.MSGPACK),
    ("application/vnd.msgpack", True, MediaType.MSGPACK),
])
def test_accepted_content_types(header: str, batch: bool, expected: MediaType) -> None:
    assert parse_media_type(header, batch=batch) is expected


@pytest.mark.parametrize(("header", "batch"), [
    (None, False), ("", True), ("text/plain", True), ("application/xml", False),
    ("application/x-ndjson", False),  # NDJSON is a batch format only
])
def test_other_content_types_are_415_naming_the_header(header: str | None, batch: bool) -> None:
    exc = rejected(lambda: parse_media_type(header, batch=batch))
    assert exc.status == 415
    assert exc.problems[0].field == "Content-Type"


def test_a_json_batch_decodes_every_event_in_order(decoder: BodyDecoder) -> None:
    body = msgspec.json.encode([event(1), event(2)])
    events = decoder.decode_batch(body, MediaType.JSON)
    assert [e.event_id for e in events] == ["e-1", "e-2"]
    assert all(isinstance(e, PaymentCaptured) for e in events)


def test_ndjson_skips_blank_lines_and_msgpack_decodes_the_same(decoder: BodyDecoder) -> None:
    ndjson = b"\n".join(msgspec.json.encode(event(n)) for n in (1, 2)) + b"\n\r\n"
    msgpack = msgspec.msgpack.encode([event(1), event(2)])
    assert decoder.decode_batch(ndjson, MediaType.NDJSON) == decoder.decode_batch(
        msgpack, MediaType.MSGPACK)


def test_one_bad_event_refuses_the_whole_batch_listing_each_problem(
        decoder: BodyDecoder) -> None:
    bad_currency = event(2, body={**GOOD["body"], "currency": "euro"})
    unknown_field = {**event(3), "colour": "red"}
    body = msgspec.json.encode([event(1), bad_currency, unknown_field])
    exc = rejected(decoder.decode_batch, body, MediaType.JSON)
    assert exc.status == 400
    assert exc.events == 3
    assert [(p.index, p.field) for p in exc.problems] == [(1, "$.body.currency"), (2, "$")]
    assert "colour" in exc.problems[1].reason


def test_bad_characters_are_listed_with_decode_errors_in_index_order(
        decoder: BodyDecoder) -> None:
    # Decode errors are found per event, character errors for the whole batch afterwards:
    # the answer still lists them all, by index, with the pattern that was broken.
    wrong_type = event(1, account_id=7)
    bad_id = event(2, account_id="acct 2")
    body = msgspec.json.encode([bad_id, wrong_type, event(3, event_id="-3")])
    exc = rejected(decoder.decode_batch, body, MediaType.JSON)
    assert [(p.index, p.field) for p in exc.problems] == [
        (0, "$.account_id"), (1, "$.account_id"), (2, "$.event_id")]
    assert exc.problems[0].reason.startswith("Expected `str` matching regex '^[A-Za-z0-9][")
    assert "Expected `str`, got `int`" in exc.problems[1].reason


def test_a_single_msgpack_event_gets_its_characters_checked(decoder: BodyDecoder) -> None:
    body = msgspec.msgpack.encode(event(1, account_id="acct/1"))
    exc = rejected(decoder.decode_one, body, MediaType.MSGPACK)
    assert [(p.index, p.field) for p in exc.problems] == [(0, "$.account_id")]


def test_a_repeated_event_id_in_one_batch_is_refused(decoder: BodyDecoder) -> None:
    body = msgspec.json.encode([event(1), event(2), event(1)])
    exc = rejected(decoder.decode_batch, body, MediaType.JSON)
    assert exc.problems == [
        Problem(2, "$.event_id", "duplicate event_id in this batch (first at index 0)")]


def test_too_many_events_is_413(decoder: BodyDecoder) -> None:
    body = msgspec.json.encode([event(n) for n in range(4)])
    exc = rejected(decoder.decode_batch, body, MediaType.JSON)
    assert (exc.status, exc.error) == (413, "too_many_events")


@pytest.mark.parametrize(("body", "field", "reason_part"), [
    (b"", "$", "empty body"),
    (b"   ", "$", "empty body"),
    (b'{"type": "payment.captured", ', "$", "malformed"),
    (msgspec.json.encode({k: v for k, v in GOOD.items() if k != "account_id"}), "$",
     "missing required field `account_id`"),
    (msgspec.json.encode({**GOOD, "event_id": 7}), "$.event_id", "Expected `str`"),
    (msgspec.json.encode({**GOOD, "body": {**GOOD["body"], "amount_minor": 10**30}}),
     "$.body.amount_minor", "<= 9007199254740992"),
    (msgspec.json.encode(GOOD).replace(b'"m-1"', b'"m-\xff"'), "$", "invalid UTF-8"),
    (msgspec.json.encode({**GOOD, "type": "payment.voided"}), "$.type", "Invalid value"),
])
def test_single_event_problems_name_field_and_reason(
        decoder: BodyDecoder, body: bytes, field: str, reason_part: str) -> None:
    exc = rejected(decoder.decode_one, body, MediaType.JSON)
    assert exc.status == 400
    assert exc.problems[0].index == 0
    assert exc.problems[0].field == field
    assert reason_part in exc.problems[0].reason


@pytest.mark.parametrize(("body", "reason_part"), [
    (b"[" * 100_000 + b"]" * 100_000, "nesting too deep"),
    (b"[]", "empty batch"),
    (b'{"not": "an array"}', "Expected `array`"),
    (b"[{]", "malformed"),
])
def test_batch_level_problems_have_no_index(
        decoder: BodyDecoder, body: bytes, reason_part: str) -> None:
    exc = rejected(decoder.decode_batch, body, MediaType.JSON)
    assert exc.status == 400
    assert exc.problems[0].index is None
    assert reason_part in exc.problems[0].reason


_MUTATIONS: dict[str, Any] = {
    "valid": lambda doc: doc,
    "space_in_id": lambda doc: {**doc, "account_id": "acct 1"},
    "bad_first_char": lambda doc: {**doc, "event_id": "-" + doc["event_id"]},
    "newline_in_id": lambda doc: {**doc, "event_id": doc["event_id"] + "\n"},
    "lower_currency": lambda doc: {**doc, "body": {**doc["body"], "currency": "eur"}},
    "wrong_type": lambda doc: {**doc, "body": {**doc["body"], "amount_minor": "1"}},
    "unknown_field": lambda doc: {**doc, "colour": "red"},
    "missing_field": lambda doc: {k: v for k, v in doc.items() if k != "occurred_at"},
}


@given(kinds=st.lists(st.sampled_from(sorted(_MUTATIONS)), min_size=1, max_size=5),
       media=st.sampled_from([MediaType.JSON, MediaType.NDJSON, MediaType.MSGPACK]),
       repeat_first=st.booleans())
def test_a_batch_is_judged_exactly_like_its_events_one_by_one(
        kinds: list[str], media: MediaType, repeat_first: bool) -> None:
    # The batch path decodes the whole body at once and checks charsets for all events
    # together; whatever it decides must be what decoding each event alone decides.
    codec = EventCodec()
    docs = [_MUTATIONS[kind](event(n)) for n, kind in enumerate(kinds)]
    if repeat_first:
        docs.append(docs[0])
    items = [msgspec.msgpack.encode(d) if media is MediaType.MSGPACK else msgspec.json.encode(d)
             for d in docs]
    body = (msgspec.msgpack.encode(docs) if media is MediaType.MSGPACK
            else b"\n".join(items) if media is MediaType.NDJSON else msgspec.json.encode(docs))
    one = codec.decode_msgpack if media is MediaType.MSGPACK else codec.decode_json
    expected_events, expected_problems = [], []
    for index, item in enumerate(items):
        try:
            expected_events.append(one(item))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            expected_problems.append(_problem(index, exc))
    decoder = BodyDecoder(codec, max_events=10)
    if expected_problems:
        assert rejected(decoder.decode_batch, body, media).problems == expected_problems
    elif repeat_first:
        problems = rejected(decoder.decode_batch, body, media).problems
        assert [(p.index, p.field) for p in problems] == [(len(docs) - 1, "$.event_id")]
    else:
        assert decoder.decode_batch(body, media) == expected_events


def test_only_unparseable_events_are_called_malformed(decoder: BodyDecoder) -> None:
    body = b'[' + msgspec.json.encode(event(1, event_id=7)) + b', {"type": ]'
    assert rejected(decoder.decode_batch, body, MediaType.JSON).problems[0].reason.startswith(
        "malformed body")
    ndjson = msgspec.json.encode(event(1, event_id=7)) + b'\n{"type": \n'
    problems = rejected(decoder.decode_batch, ndjson, MediaType.NDJSON).problems
    assert problems[0].reason == "Expected `str`, got `int`"
    assert problems[1].reason.startswith("malformed event: ")
