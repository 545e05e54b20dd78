"""Source records: consumed confluent-kafka ``Message``s with the gateway's headers parsed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from actors.contract import HEADER_ACCEPTED_AT_MS, HEADER_REPLAY_OF, HEADER_REQUEST_ID

SourceHeaders = tuple[tuple[str, bytes | None], ...]
# What ``parse_headers`` makes of a record's headers.
ParsedHeaders = tuple[SourceHeaders, str | None, int | None, str | None]


class SourceRecord(msgspec.Struct, frozen=True, gc=False):
    """One Kafka record of the source partition, with the gateway's headers parsed.

    Not tracked by the cyclic GC (no cycles possible; see ``actors.contract._Strict``)."""

    offset: int
    key: bytes | None
    value: bytes | None
    # As the record carries them: a header may have a None value (dropped when dead-lettering).
    headers: SourceHeaders = ()
    request_id: str | None = None
    accepted_at_ms: int | None = None
    # The dead letter this record replays (``<dlq partition>:<dlq offset>``), None when the
    # record is not a replay.
    replay_of: str | None = None

    @property
    def size(self) -> int:
        return len(self.value or b"") + len(self.key or b"")


class Forward(msgspec.Struct, frozen=True, gc=False):
    """A record its partition does not decide: it goes to ``partition``, its account's
    partition under the count it was planned under (``actors.partition_moves``)."""

    record: SourceRecord
    partition: int


def parse_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> ParsedHeaders:
    """``(headers, request id, accepted-at ms, replay of)`` from a record's headers as
    confluent-kafka returns them. The headers are kept as they are (a header may have a None
    value; those are left out when dead-lettering, see ``DeadLetter``)."""
    if not headers:
        return (), None, None, None
    request_id: str | None = None
    accepted: int | None = None
    replay_of: str | None = None
    for key, value in headers:
        if value is None:
            continue
        if key == HEADER_REQUEST_ID:
            request_id = value.decode("utf-8", "replace")
        elif key == HEADER_ACCEPTED_AT_MS:
            try:
                accepted = int(value)
            except ValueError:
                accepted = None  # a foreign producer's header: fall back to processing time
        elif key == HEADER_REPLAY_OF:
            replay_of = value.decode("utf-8", "replace")
    return tuple(headers), request_id, accepted, replay_of


def record_time_ms(msg: Any) -> int | None:
    """The Kafka timestamp of ``msg`` (epoch ms), None when it has none."""
    kind, stamp = msg.timestamp()
    return None if kind == 0 or stamp < 0 else int(stamp)  # 0: TIMESTAMP_NOT_AVAILABLE


def record_from_message(msg: Any) -> SourceRecord:
    """A ``SourceRecord`` from a confluent-kafka ``Message``; without an accept-time header its
    accept time is the record's Kafka timestamp (see ``RecordReader``)."""
    headers, request_id, accepted, replay_of = parse_headers(msg.headers())
    if accepted is None:
        accepted = record_time_ms(msg)
    return SourceRecord(msg.offset(), msg.key(), msg.value(), headers, request_id, accepted,
                        replay_of)


class RecordReader:
    """Turns consumed confluent-kafka ``Message``s into ``SourceRecord``s.

    The gateway gives every record of one HTTP request the same headers, so runs of records
    carry equal headers: those are parsed once and the records share the parsed values.

    A record without the gateway's accept-time header (another producer's) is timed by its
    Kafka timestamp, which is in the log: the retry window decides on accept times, and a
    batch consumed again after a crash must see the same ones.
    """

    def __init__(self) -> None:
        self._last: Any = None
        self._parsed: ParsedHeaders = ((), None, None, None)

    def read(self, msgs: Iterable[Any]) -> tuple[list[SourceRecord], int, list[Any]]:
        """``(records, their size in bytes, the messages that carry an error)``."""
        records: list[SourceRecord] = []
        errors: list[Any] = []
        append = records.append
        nbytes = 0
        last, parsed = self._last, self._parsed
        for msg in msgs:
            if msg.error() is not None:
                errors.append(msg)
                continue
            raw = msg.headers()
            if raw != last:
                last, parsed = raw, parse_headers(raw)
            key, value = msg.key(), msg.value()
            if key is not None:
                nbytes += len(key)
            if value is not None:
                nbytes += len(value)
            if parsed[2] is None:
                append(SourceRecord(msg.offset(), key, value, parsed[0], parsed[1],
                                    record_time_ms(msg), parsed[3]))
            else:
                append(SourceRecord(msg.offset(), key, value, *parsed))
        self._last, self._parsed = last, parsed
        return records, nbytes, errors
