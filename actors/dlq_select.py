"""Dead letters as an operator sees them, which of them a command selects, and the headers a
replay carries (pure: no Kafka here; ``actors.dlq_reader`` and ``actors.dlq_replay`` do I/O).

A dead letter is named by its place in the dead-letter topic, ``<partition>:<offset>``
(``DeadLetterId``). Source partition p dead-letters to partition p, so a dead letter's partition
is also its source partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal, NamedTuple

import msgspec

from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_DLQ_REASON,
    HEADER_DLQ_SOURCE_OFFSET,
    HEADER_DLQ_SOURCE_PARTITION,
    HEADER_DLQ_SOURCE_TOPIC,
    HEADER_REPLAY_OF,
    HEADER_REQUEST_ID,
)
from actors.dead_letter import event_key
from actors.validation import reason_code

TimeField = Literal["dead-lettered", "accepted"]
TIME_FIELDS: Final[tuple[TimeField, ...]] = ("dead-lettered", "accepted")

# Headers the dead-letter producer adds; a replay leaves them (and the old accept time and
# replay-of) behind and sets its own.
_NOT_REPLAYED: Final = frozenset({
    HEADER_DLQ_REASON, HEADER_DLQ_SOURCE_TOPIC, HEADER_DLQ_SOURCE_PARTITION,
    HEADER_DLQ_SOURCE_OFFSET, HEADER_REPLAY_OF, HEADER_ACCEPTED_AT_MS,
})


class DeadLetterId(NamedTuple):
    """Where a dead letter is in the dead-letter topic."""

    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.partition}:{self.offset}"


def parse_dead_letter_id(text: str) -> DeadLetterId:
    """``"3:17"`` -> ``DeadLetterId(3, 17)``; ``ValueError`` for anything else."""
    partition, sep, offset = text.strip().partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{text!r} is not a dead letter id <partition>:<offset>, e.g. 0:17")
    return DeadLetterId(int(partition), int(offset))


class DeadLetterRecord(msgspec.Struct, frozen=True):
    """One committed record of the dead-letter topic with its headers read."""

    partition: int
    offset: int
    dead_lettered_at_ms: int | None  # the record's timestamp
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    reason: str
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    accepted_at_ms: int | None  # the gateway's (or the replay's) accept time
    request_id: str | None
    replay_of: str | None  # the dead letter this one's record replayed
    account_id: str | None  # None when the value has no readable identity (a contract failure)
    event_id: str | None

    @property
    def id(self) -> DeadLetterId:
        return DeadLetterId(self.partition, self.offset)

    @property
    def reason_code(self) -> str:
        return reason_code(self.reason)

    @property
    def replay_partition(self) -> int:
        """The events-topic partition a replay goes to: the record's source partition, where
        the consumer whose window holds the event's key runs."""
        return self.partition if self.source_partition is None else self.source_partition


def dead_letter_record(partition: int, offset: int, *, timestamp_ms: int | None,
                       key: bytes | None, value: bytes | None,
                       headers: Sequence[tuple[str, bytes | None]] | None) -> DeadLetterRecord:
    """A ``DeadLetterRecord`` from a consumed record's parts."""
    kept = tuple((k, v) for k, v in headers or () if v is not None)
    found = dict(kept)  # the last of a repeated header wins, as the readers of each do

    def text(name: str) -> str | None:
        raw = found.get(name)
        return None if raw is None else raw.decode("utf-8", "replace")

    def number(name: str) -> int | None:
        raw = text(name)
        return int(raw) if raw is not None and raw.strip().lstrip("-").isdigit() else None

    identity = event_key(value)
    return DeadLetterRecord(
        partition=partition, offset=offset, dead_lettered_at_ms=timestamp_ms, key=key,
        value=value or b"", headers=kept, reason=text(HEADER_DLQ_REASON) or "",
        source_topic=text(HEADER_DLQ_SOURCE_TOPIC),
        source_partition=number(HEADER_DLQ_SOURCE_PARTITION),
        source_offset=number(HEADER_DLQ_SOURCE_OFFSET),
        accepted_at_ms=number(HEADER_ACCEPTED_AT_MS), request_id=text(HEADER_REQUEST_ID),
        replay_of=text(HEADER_REPLAY_OF),
        account_id=None if identity is None else identity[0],
        event_id=None if identity is None else identity[1],
    )


class DeadLetterFilter(msgspec.Struct, frozen=True):
    """Which dead letters a command selects; an empty set or None means any.

    ``reasons`` are reason codes (``unknown_currency``, ``contract``, ...). The time range
    ``[since_ms, until_ms)`` applies to ``time_field``: when the record was dead-lettered, or
    when it was accepted (a record without an accept time is then left out).
    """

    reasons: frozenset[str] = frozenset()
    partitions: frozenset[int] = frozenset()
    accounts: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None
    time_field: TimeField = "dead-lettered"

    @property
    def is_empty(self) -> bool:
        return self == DeadLetterFilter(time_field=self.time_field)

    def selects_partition(self, partition: int) -> bool:
        return not self.partitions or partition in self.partitions

    @property
    def seek_ms(self) -> int | None:
        """A dead-letter time to start each partition at (records before it cannot match),
        None to read from the start. Only for dead-letter time: an accept time is set on
        another machine's clock, so it bounds nothing in the dead-letter topic's time index."""
        return self.since_ms if self.time_field == "dead-lettered" else None

    def matches(self, record: DeadLetterRecord) -> bool:
        if self.partitions and record.partition not in self.partitions:
            return False
        if self.reasons and record.reason_code not in self.reasons:
            return False
        if self.accounts and record.account_id not in self.accounts:
            return False
        if self.since_ms is None and self.until_ms is None:
            return True
        at = (record.dead_lettered_at_ms if self.time_field == "dead-lettered"
              else record.accepted_at_ms)
        if at is None:
            return False
        return ((self.since_ms is None or at >= self.since_ms)
                and (self.until_ms is None or at < self.until_ms))


def replay_headers(record: DeadLetterRecord, replayed_at_ms: int) -> list[tuple[str, bytes]]:
    """The headers of ``record``'s replay: the source headers it carried (content type,
    request id), accepted anew at ``replayed_at_ms``, and ``eventray-replay-of`` naming it.

    The replay is a new acceptance: its accept time drives the retry window and the row's
    ``ACCEPTED_AT``, so a second replay within the window is caught, across restarts too.
    The original accept time stays on the dead letter, which the row's ``REPLAY_OF`` names.
    """
    headers = [(k, v) for k, v in record.headers if k not in _NOT_REPLAYED]
    headers.append((HEADER_ACCEPTED_AT_MS, str(replayed_at_ms).encode()))
    headers.append((HEADER_REPLAY_OF, str(record.id).encode()))
    return headers


def replay_problem(record: DeadLetterRecord, events_topic: str) -> str | None:
    """Why ``record`` cannot be replayed to ``events_topic``, None when it can."""
    if record.source_topic is not None and record.source_topic != events_topic:
        return (f"dead letter {record.id} came from topic {record.source_topic!r}, "
                f"not {events_topic!r}")
    return None
