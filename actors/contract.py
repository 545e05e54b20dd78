"""The event contract: the one definition of an event, used by the gateway and the consumers.

Events are a tagged union on ``type``; every variant shares the envelope fields (id, partition
key, timestamp, schema version) and carries its own typed ``body``. Unknown fields are refused
so a misspelt field never passes silently.

msgspec Decoders cannot be pickled (Ray Serve pickles the app), so they live in ``EventCodec``,
which each process builds for itself.
"""

from __future__ import annotations

import operator
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Literal, NamedTuple

import msgspec

SCHEMA_VERSION: Final = 1


class Charset:
    """Which characters a string field may hold, as a regex character class (ASCII only):
    every character from ``allowed``, the first one from ``first`` when given.

    Why not msgspec's ``pattern``: it runs ``re`` once per value, two thirds of decoding an
    event (1.9 of 2.7 us, four patterned fields). ``charset_errors`` checks a whole batch with
    one ``str.translate`` over the joined values per field instead (~0.05 us per value).
    ``pattern`` is the same rule as a regex: the JSON schema and the error messages show it.
    """

    __slots__ = ("_bad_start", "_first_chars", "_strip_allowed", "pattern")

    def __init__(self, allowed: str, *, first: str = "") -> None:
        allowed_chars = _expand_class(allowed)
        first_chars = _expand_class(first) if first else allowed_chars
        if not set(first_chars) <= set(allowed_chars):
            raise ValueError(f"first characters [{first}] must be a subset of [{allowed}]")
        if "\n" in allowed_chars:
            raise ValueError("a charset cannot allow a newline: it separates joined values")
        # translate() with this table deletes the good characters: anything left is bad.
        self._strip_allowed = str.maketrans("", "", allowed_chars)
        self._first_chars = frozenset(first_chars) if first else None
        # In newline-joined values, a value after the first that is empty or starts with a bad
        # character (a literal prefix, so re scans for the newlines fast).
        self._bad_start = re.compile(f"\n(?:[^{first}]|\\Z)") if first else None
        self.pattern = f"^[{first}][{allowed}]*$" if first else f"^[{allowed}]*$"

    def accepts(self, value: str) -> bool:
        if value.translate(self._strip_allowed):
            return False
        return self._first_chars is None or (bool(value) and value[0] in self._first_chars)

    def accepts_all(self, values: list[str]) -> bool:
        """Whether every value is accepted: two passes over the newline-joined values."""
        if not values:
            return True
        joined = "\n".join(values)
        # Only the separators may be left: then no value holds a bad character (a newline
        # in a value would make one more).
        if joined.translate(self._strip_allowed) != "\n" * (len(values) - 1):
            return False
        if self._first_chars is None or self._bad_start is None:
            return True
        return joined[:1] in self._first_chars and self._bad_start.search(joined) is None

    @property
    def reason(self) -> str:
        return f"Expected `str` matching regex {self.pattern!r}"


def _expand_class(body: str) -> str:
    """The ASCII characters a regex character class body matches. Letter escapes such as
    ``\\w`` are refused: in Python they match non-ASCII characters too."""
    if not body.isascii() or re.search(r"\\[A-Za-z]", body):
        raise ValueError(f"character class [{body}] must be ASCII literals and ranges")
    matcher = re.compile(f"[{body}]")
    return "".join(c for c in map(chr, range(128)) if matcher.fullmatch(c))


ID_CHARS: Final = Charset(r"A-Za-z0-9._:\-", first="A-Za-z0-9")
UPPER_CASE: Final = Charset("A-Z")


def _lengths(charset: Charset, min_length: int, max_length: int) -> msgspec.Meta:
    """msgspec checks the lengths; the schema also shows the charset's pattern (the charset
    itself, the next ``Annotated`` item, is checked by ``charset_errors``)."""
    return msgspec.Meta(min_length=min_length, max_length=max_length,
                        extra_json_schema={"pattern": charset.pattern})


EventId = Annotated[str, _lengths(ID_CHARS, 1, 128), ID_CHARS]
AccountId = Annotated[str, _lengths(ID_CHARS, 1, 64), ID_CHARS]
Currency = Annotated[str, _lengths(UPPER_CASE, 3, 3), UPPER_CASE]
Country = Annotated[str, _lengths(UPPER_CASE, 2, 2), UPPER_CASE]
# Minor units (cents); the bound keeps values exact in JSON doubles and Snowflake NUMBER(38,0).
AmountMinor = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
ShortText = Annotated[str, msgspec.Meta(max_length=256)]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]

# Kafka record headers written by the gateway and read by the consumers.
HEADER_CONTENT_TYPE: Final = "content-type"
HEADER_REQUEST_ID: Final = "eventray-request-id"
HEADER_ACCEPTED_AT_MS: Final = "eventray-accepted-at-ms"
HEADER_SCHEMA_VERSION: Final = "eventray-schema-version"
RECORD_CONTENT_TYPE: Final = "application/json"
# Dead-letter headers.
HEADER_DLQ_REASON: Final = "eventray-dlq-reason"
HEADER_DLQ_SOURCE_TOPIC: Final = "eventray-dlq-source-topic"
HEADER_DLQ_SOURCE_PARTITION: Final = "eventray-dlq-source-partition"
HEADER_DLQ_SOURCE_OFFSET: Final = "eventray-dlq-source-offset"
# On a record replayed from the dead-letter topic: the dead letter it replays,
# ``<dlq partition>:<dlq offset>``. Consumers de-duplicate replays on it.
HEADER_REPLAY_OF: Final = "eventray-replay-of"
# On a record a partition handed to its account's partition after the topic grew
# (``actors.partition_moves``): where it was first, ``<partition>:<offset>``.
HEADER_FORWARDED_FROM: Final = "eventray-forwarded-from"


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False):
    """Options shared by every contract Struct.

    ``gc=False``: events hold only scalars and other contract Structs, so they can never be
    part of a reference cycle; untracked, the millions a consumer decodes do not drive the
    cyclic GC (measured: with them tracked, GC took over half of a consumer's CPU).
    """


class PaymentBody(_Strict, frozen=True):
    amount_minor: AmountMinor
    currency: Currency
    merchant_id: AccountId
    description: ShortText | None = None


class RefundBody(_Strict, frozen=True):
    payment_event_id: EventId
    amount_minor: AmountMinor
    currency: Currency
    reason: ShortText | None = None


class AccountBody(_Strict, frozen=True):
    country: Country
    email: Annotated[str, msgspec.Meta(max_length=254)] | None = None
    display_name: ShortText | None = None


class _Envelope(_Strict, frozen=True, tag_field="type", kw_only=True):
    event_id: EventId
    account_id: AccountId
    occurred_at: AwareDatetime
    schema_version: Literal[1] = SCHEMA_VERSION


class PaymentCaptured(_Envelope, frozen=True, tag="payment.captured", kw_only=True):
    body: PaymentBody


class PaymentRefunded(_Envelope, frozen=True, tag="payment.refunded", kw_only=True):
    body: RefundBody


class AccountUpdated(_Envelope, frozen=True, tag="account.updated", kw_only=True):
    body: AccountBody


Event = PaymentCaptured | PaymentRefunded | AccountUpdated
EVENT_TYPES: Final[tuple[type[_Envelope], ...]] = (PaymentCaptured, PaymentRefunded, AccountUpdated)
_EVENT_TAGS: Final[dict[type, str]] = {cls: str(cls.__struct_config__.tag) for cls in EVENT_TYPES}


def event_type(event: Event) -> str:
    """The ``type`` tag of an event (a table lookup: consumers call it once per event)."""
    return _EVENT_TAGS[type(event)]


@dataclass(frozen=True, slots=True)
class FieldError:
    """Where an event broke the contract and why; ``field`` is a JSON path such as ``$.body``."""

    field: str
    reason: str


_AT_PATH = re.compile(r"^(?P<reason>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)


def describe_error(exc: Exception) -> FieldError:
    """Split msgspec's message (``Expected `int`, got `str` - at `$.x```) into field and reason."""
    match = _AT_PATH.match(str(exc))
    if match is None:  # pragma: no cover - the pattern matches any string
        return FieldError("$", str(exc))
    return FieldError(match["path"] or "$", match["reason"])


class _CharsetField(NamedTuple):
    path: str  # JSON path, as in msgspec's messages: ``$.body.currency``
    get: Callable[[Any], Any]
    charset: Charset
    optional: bool


def _charset_fields(cls: type[msgspec.Struct], prefix: str = "$",
                    attrs: str = "") -> list[_CharsetField]:
    """The string fields of ``cls`` (and of its nested Structs) annotated with a Charset."""
    hints = typing.get_type_hints(cls, include_extras=True)
    found: list[_CharsetField] = []
    for name, encoded in zip(cls.__struct_fields__, cls.__struct_encode_fields__, strict=True):
        hint, optional = hints[name], False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(options) != 1:
                raise TypeError(f"{cls.__name__}.{name}: only `X | None` unions are supported")
            hint, optional = options[0], True
        path, attr = f"{prefix}.{encoded}", f"{attrs}{name}"
        if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
            if optional:
                raise TypeError(f"{cls.__name__}.{name}: an optional nested Struct is not "
                                "supported by the charset check")
            found += _charset_fields(hint, path, f"{attr}.")
            continue
        charsets = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Charset)]
        if charsets:
            found.append(_CharsetField(path, operator.attrgetter(attr), charsets[0], optional))
    return found


_CHARSET_FIELDS: Final = {cls: tuple(_charset_fields(cls)) for cls in EVENT_TYPES}


def charset_error(event: Event) -> FieldError | None:
    """The first field of ``event`` whose characters break its Charset, if any."""
    for field in _CHARSET_FIELDS[type(event)]:
        value = field.get(event)
        if value is not None and not field.charset.accepts(value):
            return FieldError(field.path, field.charset.reason)
    return None


def charset_errors(events: Sequence[Event]) -> list[tuple[int, FieldError]]:
    """``(position, first bad field)`` of each event in ``events`` whose characters break a
    Charset, by position. One ``str.translate`` per field and event type over the whole
    batch; the values are looked at one by one only when that pass found a bad one."""
    kinds = set(map(type, events))
    if len(kinds) == 1:
        groups: list[tuple[type, Sequence[Event], Sequence[int]]] = [
            (kinds.pop(), events, range(len(events)))]
    else:
        positions: dict[type, list[int]] = {}
        for position, event in enumerate(events):
            positions.setdefault(type(event), []).append(position)
        groups = [(kind, [events[p] for p in at], at) for kind, at in positions.items()]
    errors: dict[int, FieldError] = {}
    for kind, members, at in groups:
        for field in _CHARSET_FIELDS[kind]:
            values = list(map(field.get, members))
            present = [v for v in values if v is not None] if field.optional else values
            if field.charset.accepts_all(present):
                continue
            for position, value in zip(at, values, strict=True):
                if value is not None and not field.charset.accepts(value):
                    errors.setdefault(position, FieldError(field.path, field.charset.reason))
    return sorted(errors.items())


# What decoding one item can raise (msgspec's ValidationError is a DecodeError; msgpack strings
# can be bad UTF-8; very deep nesting can exhaust the stack).
DECODE_FAILURES: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
# An item that failed: its position and why (a Charset failure is a ValidationError too).
Failure = tuple[int, Exception]


class EventCodec:
    """Decoders and encoder for the contract. Not picklable: build one per process.

    Every decode method checks the whole contract, Charsets included: one event
    (``decode_json``, ``decode_msgpack``), items one by one (``decode_each``) or a whole array
    (``decode_array``); the last two check the Charsets once for the batch."""

    def __init__(self) -> None:
        # Everything but the Charsets, which the methods check.
        self._json_event: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
        self._msgpack_event: msgspec.msgpack.Decoder[Event] = msgspec.msgpack.Decoder(Event)
        # Whole arrays in one call: a third of the cost of item by item.
        self._json_event_list = msgspec.json.Decoder(list[Event])
        self._msgpack_event_list = msgspec.msgpack.Decoder(list[Event])
        self.json_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
        self.msgpack_raw_list = msgspec.msgpack.Decoder(list[msgspec.Raw])
        self.json_encoder = msgspec.json.Encoder()

    def decode_json(self, data: bytes | msgspec.Raw) -> Event:
        """Decode one JSON event; raises ``msgspec.ValidationError``/``DecodeError``."""
        return _whole(self._json_event.decode(data))

    def decode_msgpack(self, data: bytes | msgspec.Raw) -> Event:
        """Decode one msgpack event; raises ``msgspec.ValidationError``/``DecodeError``."""
        return _whole(self._msgpack_event.decode(data))

    def decode_each(self, items: Sequence[bytes | msgspec.Raw], *, msgpack: bool = False,
                    ) -> tuple[list[Event], list[int], list[Failure]]:
        """Each item on its own: the events that meet the contract, their positions in
        ``items``, and the ``(position, error)`` of the others, by position."""
        decode = self._msgpack_event.decode if msgpack else self._json_event.decode
        events: list[Event] = []
        positions: list[int] = []
        failures: list[Failure] = []
        try:  # every item at once first (a consumer's batch almost always decodes whole)
            events = list(map(decode, items))
            positions = list(range(len(events)))
        except DECODE_FAILURES:
            events = []
            for position, item in enumerate(items):
                try:
                    events.append(decode(item))
                except DECODE_FAILURES as exc:
                    failures.append((position, exc))
                else:
                    positions.append(position)
        bad = charset_errors(events)
        if not bad:
            return events, positions, failures
        failures += [(positions[at], _charset_failure(error)) for at, error in bad]
        failures.sort(key=lambda failure: failure[0])
        drop = {at for at, _ in bad}
        kept = [at for at in range(len(events)) if at not in drop]
        return [events[at] for at in kept], [positions[at] for at in kept], failures

    def decode_array(self, body: bytes, *, msgpack: bool = False,
                     ) -> tuple[list[Event], list[Failure]]:
        """A JSON or msgpack array of events in one call: the events and the ``(position,
        error)`` of those that break a Charset. Raises one of ``DECODE_FAILURES`` when
        anything else is wrong (``decode_each`` then names every problem)."""
        decoder = self._msgpack_event_list if msgpack else self._json_event_list
        events = decoder.decode(body)
        return events, [(at, _charset_failure(error)) for at, error in charset_errors(events)]

    def encode(self, event: Event) -> bytes:
        """The canonical JSON bytes of an event, as written to Kafka."""
        return self.json_encoder.encode(event)


def _charset_failure(error: FieldError) -> msgspec.ValidationError:
    """A Charset failure worded as msgspec words the others (``describe_error`` splits it)."""
    return msgspec.ValidationError(f"{error.reason} - at `{error.field}`")


def _whole(event: Event) -> Event:
    error = charset_error(event)
    if error is not None:
        raise _charset_failure(error)
    return event
