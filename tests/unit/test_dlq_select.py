"""Dead letters as the operator commands see them: ids, header parsing, filters, the headers of
a replay, and the fate of replays."""

from __future__ import annotations

import pytest

from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_CONTENT_TYPE,
    HEADER_REPLAY_OF,
    HEADER_REQUEST_ID,
)
from actors.dead_letter import DeadLetter, dead_letter_headers
from actors.dlq_replay import Replayed, classify_outcomes
from actors.dlq_select import (
    DeadLetterFilter,
    DeadLetterId,
    DeadLetterRecord,
    dead_letter_record,
    parse_dead_letter_id,
    replay_headers,
    replay_problem,
)
from actors.records import parse_headers

T0 = 1_772_366_400_000


def letter(partition: int, offset: int, *, reason: str = "unknown_currency: XYZ",
           account: str = "acct-1", accepted: int | None = T0, dead_at: int | None = T0 + 500,
           source_offset: int | None = None, replay_of: str | None = None,
           value: bytes | None = None) -> DeadLetterRecord:
    """A dead letter as the consumer's producer writes it (``dead_letter_headers``)."""
    source: list[tuple[str, bytes]] = [(HEADER_CONTENT_TYPE, b"application/json"),
                                       (HEADER_REQUEST_ID, b"req-9")]
    if accepted is not None:
        source.append((HEADER_ACCEPTED_AT_MS, str(accepted).encode()))
    if replay_of is not None:
        source.append((HEADER_REPLAY_OF, replay_of.encode()))
    body = value if value is not None else (
        f'{{"type":"payment.captured","account_id":"{account}","event_id":"e-{offset}"}}'
        .encode())
    dead = DeadLetter(source_offset=offset * 10 if source_offset is None else source_offset,
                      key=account.encode(), value=body, reason=reason, headers=tuple(source))
    return dead_letter_record(partition, offset, timestamp_ms=dead_at, key=dead.key,
                              value=dead.value,
                              headers=dead_letter_headers(dead, "events", partition))


def test_dead_letter_ids_parse_and_print() -> None:
    assert parse_dead_letter_id("3:17") == DeadLetterId(3, 17)
    assert str(DeadLetterId(3, 17)) == "3:17"
    for bad in ("3", "3:", ":1", "a:1", "1:-2", "1:2:3"):
        with pytest.raises(ValueError, match="not a dead letter id"):
            parse_dead_letter_id(bad)


def test_a_dead_letter_reads_its_headers_and_identity() -> None:
    record = letter(2, 7, source_offset=41, replay_of="2:3")
    assert record.id == DeadLetterId(2, 7) and record.reason_code == "unknown_currency"
    assert (record.source_topic, record.source_partition, record.source_offset) == (
        "events", 2, 41)
    assert (record.accepted_at_ms, record.dead_lettered_at_ms) == (T0, T0 + 500)
    assert (record.request_id, record.replay_of) == ("req-9", "2:3")
    assert (record.account_id, record.event_id) == ("acct-1", "e-7")
    garbage = letter(0, 1, reason="contract: $: malformed", value=b"not json")
    assert garbage.account_id is None and garbage.reason_code == "contract"
    bare = dead_letter_record(1, 0, timestamp_ms=None, key=None, value=None,
                              headers=[("x", None)])
    assert (bare.reason, bare.source_offset, bare.replay_partition, bare.value) == (
        "", None, 1, b"")


def test_filters_by_reason_partition_and_account() -> None:
    records = [letter(0, 1), letter(1, 2, reason="amount_above_max: 5 > 1"),
               letter(1, 3, account="acct-2"), letter(2, 4, reason="contract: $: x")]
    ids = [str(r.id) for r in records]

    def selected(selection: DeadLetterFilter) -> list[str]:
        return [i for i, r in zip(ids, records, strict=True) if selection.matches(r)]

    assert selected(DeadLetterFilter()) == ids and DeadLetterFilter().is_empty
    assert selected(DeadLetterFilter(reasons=frozenset({"amount_above_max", "contract"}))) == [
        "1:2", "2:4"]
    assert selected(DeadLetterFilter(partitions=frozenset({1}))) == ["1:2", "1:3"]
    assert selected(DeadLetterFilter(accounts=frozenset({"acct-2"}))) == ["1:3"]
    assert selected(DeadLetterFilter(partitions=frozenset({1}),
                                     accounts=frozenset({"acct-1"}))) == ["1:2"]
    assert not DeadLetterFilter(partitions=frozenset({1})).is_empty
    assert DeadLetterFilter(partitions=frozenset({1})).selects_partition(1)
    assert not DeadLetterFilter(partitions=frozenset({1})).selects_partition(0)


def test_time_ranges_on_dead_letter_or_accept_time() -> None:
    early = letter(0, 1, accepted=T0, dead_at=T0 + 60_000)
    late = letter(0, 2, accepted=T0 + 120_000, dead_at=T0 + 121_000)
    no_accept = letter(0, 3, accepted=None, dead_at=T0 + 60_000)
    by_dead = DeadLetterFilter(since_ms=T0 + 60_000, until_ms=T0 + 121_000)
    assert [by_dead.matches(r) for r in (early, late, no_accept)] == [True, False, True]
    assert by_dead.seek_ms == T0 + 60_000
    by_accept = DeadLetterFilter(since_ms=T0 + 1, time_field="accepted")
    assert [by_accept.matches(r) for r in (early, late, no_accept)] == [False, True, False]
    assert by_accept.seek_ms is None  # accept times bound nothing in the topic's time index
    until = DeadLetterFilter(until_ms=T0 + 1, time_field="accepted")
    assert [until.matches(r) for r in (early, late, no_accept)] == [True, False, False]


def test_a_replay_is_accepted_anew_and_names_its_dead_letter() -> None:
    record = letter(2, 7)
    headers = replay_headers(record, replayed_at_ms=T0 + 999)
    names = [k for k, _ in headers]
    assert not any(k.startswith("eventray-dlq-") for k in names)
    assert names.count(HEADER_ACCEPTED_AT_MS) == 1 and names.count(HEADER_REPLAY_OF) == 1
    _, request_id, accepted, replay_of = parse_headers(headers)
    assert (request_id, accepted, replay_of) == ("req-9", T0 + 999, "2:7")
    assert dict(headers)[HEADER_CONTENT_TYPE] == b"application/json"
    # A dead letter of a replay, replayed: it names the newer dead letter only.
    again = replay_headers(letter(2, 9, replay_of="2:7"), replayed_at_ms=T0)
    assert [v for k, v in again if k == HEADER_REPLAY_OF] == [b"2:9"]


def test_a_dead_letter_of_another_topic_is_not_replayed_here() -> None:
    record = letter(0, 1)
    assert replay_problem(record, "events") is None
    assert "came from topic 'events'" in (replay_problem(record, "orders") or "")


def test_replay_fates() -> None:
    replayed = [Replayed("0:1", 0, 100), Replayed("0:2", 0, 101), Replayed("1:5", 1, 50)]
    back = letter(0, 9, source_offset=101, reason="unknown_country: QQ", replay_of="0:2")
    outcomes = classify_outcomes(replayed, rows={(0, 100), (1, 49)}, dead_letters=[back])
    assert [(o.dead_letter, o.fate) for o in outcomes] == [
        ("0:1", "written"), ("0:2", "dead-lettered"), ("1:5", "dropped")]
    assert (outcomes[1].new_dead_letter, outcomes[1].reason) == ("0:9", "unknown_country: QQ")
