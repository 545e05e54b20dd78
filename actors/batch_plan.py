"""Batch planning (pure): decode, de-duplicate and validate a batch of records into the rows
to write and the records to dead-letter.

Replays: a record replayed from the dead-letter topic (``SourceRecord.replay_of`` names its
dead letter) is identified by that dead letter, not by its event id, whose key the window
holds since the event was dead-lettered. A replay is dropped as a duplicate when the same dead
letter was replayed before within the window (its ``replay_key``), or when its event was written
as a row meanwhile (e.g. a client retry after the window had forgotten the dead letter);
otherwise it is validated like any record: valid, it becomes a row (its ``REPLAY_OF`` lineage
keeps the replay key in the table); invalid, it goes back to the dead-letter topic with its new
reason and its ``eventray-replay-of`` header. Either way the window then holds both keys, and a
consumer restart rebuilds them from the table and the dead-letter topic.
"""

from __future__ import annotations

import operator
from bisect import bisect_left
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from itertools import islice
from typing import Final

import msgspec

from actors.config import ValidationRules
from actors.contract import HEADER_ACCEPTED_AT_MS, Event, EventCodec, FieldError, describe_error
from actors.dead_letter import NOTHING_RECOVERED, DeadLetter, Recovered, event_key
from actors.exceptions import EventrayError
from actors.records import Forward, SourceHeaders, SourceRecord
from actors.retry_window import DISORDER_SLACK_MS, DedupWindow, replay_key
from actors.rows import EventRow, SinkBatch, encode_rows, row_from_event
from actors.validation import reason_code, validate_batch

CONTRACT_REASON: Final = "contract"
_offset_of: Final = operator.attrgetter("offset")
_value_of: Final = operator.attrgetter("value")


class BatchPlan(msgspec.Struct, frozen=True):
    """What to do with one batch of records: the sink batch and the dead letters."""

    batch: SinkBatch
    dead_letters: list[DeadLetter]
    consumed: int
    valid: int
    duplicates: int
    already_dead_lettered: int  # invalid records a predecessor dead-lettered already
    rejected: dict[str, int]    # dead letters by reason code
    # Records handed to the partition that decides them (``actors.partition_moves``).
    forwards: list[Forward] = msgspec.field(default_factory=list)


def batch_range(next_from: int | None, records: Sequence[SourceRecord]) -> tuple[int, int]:
    """``(from_offset, to_offset)`` of the batch made of ``records``.

    ``next_from`` is where the previous batch ended (the warehouse's committed offset after a
    start), or None for a partition never written, which then starts at its first record.
    """
    if not records:
        raise ValueError("an empty batch has no offset range")
    first, last = records[0].offset, records[-1].offset
    from_offset = first if next_from is None else next_from
    offsets = list(map(_offset_of, records))
    if first < from_offset or not all(map(operator.lt, offsets, islice(offsets, 1, None))):
        raise EventrayError(
            f"records out of order: first={first} from_offset={from_offset} last={last}")
    return from_offset, last + 1


def plan_batch(
    records: Sequence[SourceRecord], *, topic: str, partition: int, next_from: int | None,
    codec: EventCodec, rules: ValidationRules, now: datetime, window: DedupWindow,
    recovered: Recovered = NOTHING_RECOVERED, now_ms: int | None = None,
    forwards: Sequence[Forward] = (),
) -> BatchPlan:
    """Decode, validate and de-duplicate ``records`` (ascending offsets) into a ``BatchPlan``.

    Records at or below ``recovered.watermark`` were processed before a restart: those in
    ``recovered.offsets`` are already dead-lettered and skipped; the others were written or
    dropped as duplicates then. The window decides which, as it did then (it holds what it
    held, see ``actors.window_rebuild``), and a written one stays valid (the first verdict
    wins, so a time-based rule cannot flip it). An event whose key the window holds within
    its window of the record's accept time is a duplicate: neither written nor dead-lettered.
    The keys of new rows and dead letters are added to ``window``, so duplicates inside the
    batch count too. A record that breaks the contract is dead-lettered (unless it replays a
    dead letter replayed before); its key, when its value has one, enters the window like any
    dead letter's (a restarted consumer reads it back from the dead-letter topic). Replayed
    records are de-duplicated on their dead letter (see the module docstring). Records are
    decided one by one in offset order, so how they fall into batches changes nothing.
    ``window`` first forgets keys too old for this batch. ``forwards`` (records of the batch)
    are left to the partition that decides them: the batch's offsets cover them, nothing else.
    """
    from_offset, to_offset = batch_range(next_from, records)
    arrival_ms = now_ms if now_ms is not None else int(now.timestamp() * 1000)
    window.evict((records[0].accepted_at_ms or arrival_ms) - DISORDER_SLACK_MS)
    if forwards:
        handed_on = {forward.record.offset for forward in forwards}
        records = [record for record in records if record.offset not in handed_on]
    letters: list[DeadLetter] = []
    rejected: dict[str, int] = {}

    def dead_letter(record: SourceRecord, reason: str) -> None:
        at_ms = record.accepted_at_ms or arrival_ms
        letters.append(DeadLetter(source_offset=record.offset, key=record.key,
                                  value=record.value or b"", reason=reason,
                                  headers=_letter_headers(record.headers, at_ms)))
        code = reason_code(reason)
        rejected[code] = rejected.get(code, 0) + 1

    decoded, events, verdicts, special = _decode_and_check(
        records, codec=codec, rules=rules, now=now, recovered=recovered)
    rows: list[EventRow] = []
    decide = partial(_decide, rows=rows, window=window, topic=topic, partition=partition,
                     arrival_ms=arrival_ms, dead_letter=dead_letter)
    if not special:
        duplicates, already = decide(decoded, events, verdicts), 0
    else:
        # Records dead-lettered before a restart or breaking the contract are decided in
        # offset order with the others (a window rebuilt in offset order has their keys), so
        # how records fall into batches changes nothing: the decoded ones in runs between.
        duplicates = already = 0
        offsets = [record.offset for record in decoded]
        at = 0
        for record, contract_error in special:
            stop = bisect_left(offsets, record.offset)
            duplicates += decide(decoded[at:stop], events[at:stop], verdicts[at:stop])
            at = stop
            at_ms = record.accepted_at_ms or arrival_ms
            if contract_error is None:
                already += 1
                _remember_dead_letter(window, record, at_ms)
            elif record.replay_of is not None and not window.first_seen(
                    replay_key(record.replay_of), at_ms):
                duplicates += 1  # its dead letter was replayed before
            else:
                if record.offset <= recovered.watermark:
                    raise EventrayError(
                        f"{topic}/{partition} offset {record.offset} breaks the contract "
                        f"({contract_error.field}: {contract_error.reason}) but is not in "
                        "the dead-letter topic below its watermark")
                dead_letter(record, f"{CONTRACT_REASON}: {contract_error.field}: "
                                    f"{contract_error.reason}")
                _remember_dead_letter(window, record, at_ms, replay=False)
        duplicates += decide(decoded[at:], events[at:], verdicts[at:])
    letters.sort(key=lambda letter: letter.source_offset)  # contract failures were found first
    batch = SinkBatch(topic=topic, partition=partition, from_offset=from_offset,
                      to_offset=to_offset, rows_json=encode_rows(rows), row_count=len(rows))
    window.seal(to_offset)  # a window on disk writes these changes once the batch committed
    return BatchPlan(batch=batch, dead_letters=letters, consumed=len(records) + len(forwards),
                     valid=len(rows), duplicates=duplicates, already_dead_lettered=already,
                     rejected=rejected, forwards=list(forwards))


def _decide(records: Sequence[SourceRecord], events: Sequence[Event],
            verdicts: Sequence[str | None], *, rows: list[EventRow], window: DedupWindow,
            topic: str, partition: int, arrival_ms: int,
            dead_letter: Callable[[SourceRecord, str], None]) -> int:
    """De-duplicate decoded ``records`` (their events and verdicts) in order: each becomes a
    row (appended to ``rows``), a dead letter, or a duplicate; return the duplicates."""
    add_row = rows.append
    first_seen = window.first_seen
    duplicates = 0
    for record, event, reason in zip(records, events, verdicts, strict=True):
        accepted_at_ms = record.accepted_at_ms
        at_ms = arrival_ms if accepted_at_ms is None else accepted_at_ms
        key = (event.account_id, event.event_id)
        replay_of = record.replay_of
        if replay_of is None:
            if not first_seen(key, at_ms, reason is None):
                duplicates += 1
                continue
        elif window.written(key, at_ms) or not first_seen(replay_key(replay_of), at_ms):
            # Its event was written meanwhile, or its dead letter replayed before: held as if
            # it had never come, as a restarted window (rebuilt from what was written and
            # dead-lettered) holds it. Its replay key is not added and then discarded: that
            # dropped an older entry of the key too, which a rebuild reads back.
            duplicates += 1
            continue
        else:
            window.add(key, at_ms, reason is None)
        if reason is not None:
            dead_letter(record, reason)
        else:
            add_row(row_from_event(event, topic=topic, partition=partition,
                                   offset=record.offset, request_id=record.request_id,
                                   accepted_at_ms=at_ms, replay_of=replay_of))
    return duplicates


def _remember_dead_letter(window: DedupWindow, record: SourceRecord, at_ms: int, *,
                          replay: bool = True) -> None:
    """A dead letter's keys, as a restarted window reads them back: its event key (a later
    retry is a duplicate) and, with ``replay``, the dead letter it replays (so is a later
    replay of that one)."""
    key = event_key(record.value)
    if key is not None:
        window.add(key, at_ms, written=False)
    if replay and record.replay_of is not None:
        window.add(replay_key(record.replay_of), at_ms)


def _decode_and_check(
    records: Sequence[SourceRecord], *, codec: EventCodec, rules: ValidationRules,
    now: datetime, recovered: Recovered,
) -> tuple[list[SourceRecord], list[Event], list[str | None],
           list[tuple[SourceRecord, FieldError | None]]]:
    """Decode ``records`` and apply the business rules: ``(records that decoded, their events,
    their verdicts (None: valid), the others by offset: each with why it broke the contract,
    or None when it was dead-lettered before a restart)``."""
    todo: list[SourceRecord] = []  # the records not dead-lettered before a restart
    special: list[tuple[SourceRecord, FieldError | None]] = []
    watermark = recovered.watermark
    # Offsets ascend: a batch wholly past the watermark (the steady state) skips the loops.
    past_watermark = not records or records[0].offset > watermark
    if past_watermark:
        todo = list(records)
    else:
        for record in records:
            if record.offset <= watermark and recovered.already(record.offset):
                special.append((record, None))
            else:
                todo.append(record)
    values = list(map(_value_of, todo))
    if None in values:
        values = [b"" if value is None else value for value in values]
    events, positions, failures = codec.decode_each(values)
    if failures:
        special += [(todo[at], describe_error(exc)) for at, exc in failures]
        special.sort(key=lambda item: item[0].offset)
    decoded = todo if len(positions) == len(todo) else [todo[at] for at in positions]
    if past_watermark:
        return decoded, events, validate_batch(events, rules, now), special
    # Positions in ``events`` of the fresh ones: a replayed record's first verdict was valid,
    # so it stays valid.
    fresh_at = [at for at, record in enumerate(decoded) if record.offset > watermark]
    fresh = [events[at] for at in fresh_at]
    if len(fresh) == len(events):
        return decoded, events, validate_batch(events, rules, now), special
    verdicts: list[str | None] = [None] * len(events)
    for at, reason in zip(fresh_at, validate_batch(fresh, rules, now), strict=True):
        verdicts[at] = reason
    return decoded, events, verdicts, special


def _letter_headers(headers: SourceHeaders, at_ms: int) -> tuple[tuple[str, bytes], ...]:
    """A dead letter's copy of its record's headers (without None values), carrying the
    accept time the window used for it, which a restarted consumer reads back."""
    stamp = str(at_ms).encode()
    kept = tuple((k, v) for k, v in headers if v is not None)
    for key, value in kept:
        if key == HEADER_ACCEPTED_AT_MS:
            if value == stamp:
                return kept
            break
    return (*((k, v) for k, v in kept if k != HEADER_ACCEPTED_AT_MS),
            (HEADER_ACCEPTED_AT_MS, stamp))
