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


def record_from_message(msg: Any) -> SourceRecord:
    """A ``SourceRecord`` from a confluent-kafka ``Message``."""
    return SourceRecord(msg.offset(), msg.key(), msg.value(), *parse_headers(msg.headers()))


class RecordReader:
    """Turns consumed confluent-kafka ``Message``s into ``SourceRecord``s.

    The gateway gives every record of one HTTP request the same headers, so runs of records
    carry equal headers: those are parsed once and the records share the parsed values.
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
            append(SourceRecord(msg.offset(), key, value, *parsed))
        self._last, self._parsed = last, parsed
        return records, nbytes, errors
