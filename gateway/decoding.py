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

from actors.contract import Event, EventCodec, charset_errors, describe_error
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

_DecodeFailure = (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError)


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
        except _DecodeFailure as exc:
            raise _contract([_problem(0, exc)]) from None

    def decode_batch(self, body: bytes, media: MediaType) -> list[Event]:
        """A whole batch, all or nothing; raises ``RequestRejectedError`` (400 or 413)."""
        events = self._decode_whole(body, media)
        if events is not None:
            count = len(events)
            self._check_count(count)
            problems = [Problem(at, error.field, error.reason)
                        for at, error in charset_errors(events)]
        else:
            items = self._split(body, media)
            count = len(items)
            self._check_count(count)
            events, problems = self._decode_items(items, media)
        if not problems:
            problems = _duplicates(events)
        if problems:
            raise _contract(problems, events=count)
        return events

    def _decode_whole(self, body: bytes, media: MediaType) -> list[Event] | None:
        """The fast path: a JSON or msgpack array decoded in one call (a third of the cost of
        item by item); None when anything in it is wrong, or for NDJSON."""
        try:
            if media is MediaType.JSON:
                return self._codec.json_event_list.decode(body)
            if media is MediaType.MSGPACK:
                return self._codec.msgpack_event_list.decode(body)
        except _DecodeFailure:
            pass  # decoded again item by item, to name every problem
        return None

    def _decode_items(self, items: list[msgspec.Raw] | list[bytes],
                      media: MediaType) -> tuple[list[Event], list[Problem]]:
        """Each item on its own: the events that decoded and every problem found."""
        decode = (self._codec.msgpack_unchecked.decode if media is MediaType.MSGPACK
                  else self._codec.json_unchecked.decode)
        events: list[Event] = []
        indexes: list[int] = []  # the item index of each decoded event
        problems: list[Problem] = []
        for index, item in enumerate(items):
            try:
                events.append(decode(item))
            except _DecodeFailure as exc:
                problems.append(_problem(index, exc))
            else:
                indexes.append(index)
        bad_chars = charset_errors(events)
        if bad_chars:
            problems += [Problem(indexes[at], error.field, error.reason)
                         for at, error in bad_chars]
            problems.sort(key=lambda problem: problem.index or 0)
        return events, problems

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
        except _DecodeFailure as exc:
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
