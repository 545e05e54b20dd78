"""Request bodies -> contract events, or the list of everything wrong with them.

Pure functions over bytes: no I/O, no Kafka. A batch is first split into raw items (a JSON
array of ``Raw``, NDJSON lines, or a msgpack array of ``Raw``), then each item is decoded on its
own so every bad event gets its own ``{index, field, reason}``.

Batch policy: all or nothing. If any event of a batch breaks the contract (or repeats an
``event_id`` of the same batch), the whole batch is refused with every problem listed, and
nothing of it is produced.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import msgspec

from actors.contract import DECODE_FAILURES, Event, EventCodec, Failure, describe_error
from gateway.exceptions import Problem, RequestRejectedError


class MediaType(StrEnum):
    JSON = "application/json"
    NDJSON = "application/x-ndjson"
    MSGPACK = "application/msgpack"


# Accepted Content-Type values (parameters such as charset are ignored).
MEDIA_TYPES: Final[dict[str, MediaType]] = {
    "application/json": MediaType.JSON,
    "application/x-ndjson": MediaType.NDJSON,
    "application/ndjson": MediaType.NDJSON,
    "application/jsonl": MediaType.NDJSON,
    "application/msgpack": MediaType.MSGPACK,
    "application/x-msgpack": MediaType.MSGPACK,
    "application/vnd.msgpack": MediaType.MSGPACK,
}
SINGLE_MEDIA_TYPES: Final = frozenset({MediaType.JSON, MediaType.MSGPACK})


def parse_media_type(header: str | None, *, batch: bool) -> MediaType:
    """The body's media type from a Content-Type header; 415 when missing or unsupported."""
    if not header:
        raise RequestRejectedError(
            415, "unsupported_media_type", "Content-Type is required",
            [Problem(None, "Content-Type", "missing; use one of " + _accepted(batch=batch))],
        )
    name = header.split(";", 1)[0].strip().lower()
    media = MEDIA_TYPES.get(name)
    if media is None or (not batch and media not in SINGLE_MEDIA_TYPES):
        raise RequestRejectedError(
            415, "unsupported_media_type", f"Content-Type {name!r} is not accepted here",
            [Problem(None, "Content-Type", f"{name!r} is not one of " + _accepted(batch=batch))],
        )
    return media


def _accepted(*, batch: bool) -> str:
    names = [n for n, m in MEDIA_TYPES.items() if batch or m in SINGLE_MEDIA_TYPES]
    return ", ".join(names)


def _problem(index: int | None, exc: BaseException) -> Problem:
    if isinstance(exc, msgspec.ValidationError | msgspec.DecodeError):
        error = describe_error(exc)
        reason = error.reason
        # ValidationError subclasses DecodeError: only a body that does not parse is malformed.
        malformed = not isinstance(exc, msgspec.ValidationError)
        if malformed and not reason.startswith("malformed"):
            reason = f"malformed {'body' if index is None else 'event'}: {reason}"
        return Problem(index, error.field, reason)
    if isinstance(exc, UnicodeDecodeError):
        return Problem(index, "$", f"invalid UTF-8: {exc.reason} at byte {exc.start}")
    return Problem(index, "$", "nesting too deep")


class BodyDecoder:
    """Decodes request bodies against the contract. Holds msgspec decoders: one per process."""

    def __init__(self, codec: EventCodec, max_events: int) -> None:
        self._codec = codec
        self._max_events = max_events

    def decode_one(self, body: bytes, media: MediaType) -> Event:
        """One event (JSON object or msgpack map); raises ``RequestRejectedError`` (400)."""
        if not body.strip():
            raise _contract([Problem(0, "$", "empty body")])
        try:
            if media is MediaType.MSGPACK:
                return self._codec.decode_msgpack(body)
            return self._codec.decode_json(body)
        except DECODE_FAILURES as exc:
            raise _contract([_problem(0, exc)]) from None

    def decode_batch(self, body: bytes, media: MediaType) -> list[Event]:
        """A whole batch, all or nothing; raises ``RequestRejectedError`` (400 or 413)."""
        msgpack = media is MediaType.MSGPACK
        whole = None if media is MediaType.NDJSON else self._decode_array(body, msgpack)
        if whole is not None:
            events, failures = whole
            count = len(events)
            self._check_count(count)
        else:  # something is wrong (or NDJSON): item by item, to name every problem
            items = self._split(body, media)
            count = len(items)
            self._check_count(count)
            events, _, failures = self._codec.decode_each(items, msgpack=msgpack)
        problems = [_problem(at, exc) for at, exc in failures] or _duplicates(events)
        if problems:
            raise _contract(problems, events=count)
        return events

    def _decode_array(self, body: bytes, msgpack: bool) -> tuple[list[Event], list[Failure]] | None:
        """The fast path, one call for the whole array; None when anything but a Charset is
        wrong (the item-by-item pass then reports it, per event)."""
        try:
            return self._codec.decode_array(body, msgpack=msgpack)
        except DECODE_FAILURES:
            return None

    def _check_count(self, count: int) -> None:
        if not count:
            raise _contract([Problem(None, "$", "empty batch: send at least one event")])
        if count > self._max_events:
            raise RequestRejectedError(
                413, "too_many_events",
                f"{count} events in one request, the limit is {self._max_events}",
                [Problem(None, "$", f"{count} events > limit {self._max_events}")],
                events=count,
            )

    def _split(self, body: bytes, media: MediaType) -> list[msgspec.Raw] | list[bytes]:
        if media is MediaType.NDJSON:
            return [line for line in body.split(b"\n") if line.strip()]
        if not body.strip():
            raise _contract([Problem(None, "$", "empty body")])
        try:
            if media is MediaType.MSGPACK:
                return self._codec.msgpack_raw_list.decode(body)
            return self._codec.json_raw_list.decode(body)
        except DECODE_FAILURES as exc:
            raise _contract([_problem(None, exc)]) from None


def _duplicates(events: list[Event]) -> list[Problem]:
    """An event id may appear once per batch: a repeat is a client bug, not a retry."""
    first: dict[str, int] = {}
    problems: list[Problem] = []
    for index, event in enumerate(events):
        seen = first.setdefault(event.event_id, index)
        if seen != index:
            problems.append(Problem(index, "$.event_id",
                                    f"duplicate event_id in this batch (first at index {seen})"))
    return problems


def _contract(problems: list[Problem], events: int = 1) -> RequestRejectedError:
    noun = "problem" if len(problems) == 1 else "problems"
    return RequestRejectedError(
        400, "invalid_events",
        f"{len(problems)} {noun} found; the request was refused and nothing of it was written",
        problems, events=events,
    )
