"""Warehouse rows and the batches that carry them from a consumer to a sink.

An ``EventRow`` is one events-table row with its Kafka lineage (topic, partition, offset, the
gateway's request id and accept time, and for a replayed dead letter the dead letter it
replays), like the Snowflake Kafka connector's RECORD_METADATA.
A consumer encodes a batch's rows once into ONE JSON array (``encode_rows``); the sink binds that
array as a single parameter and Snowflake flattens it server side, so a batch of thousands of
rows is one statement and one bound value, and crosses the Ray actor boundary as bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

import msgspec

from actors.contract import AccountBody, Event, PaymentBody, RefundBody, event_type

Body = PaymentBody | RefundBody | AccountBody
EMPTY_ROWS: Final = b"[]"


class EventRow(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One events-table row. ``body`` is stored as a VARIANT, encoded as the typed Struct.

    Encoded as a JSON array in field order, not an object: the warehouse reads fields by
    position (``value[8]``), which the emulator flattens 2.3x faster than keyed objects
    (measured: 45k vs 19k rows/s for 20k-row batches) and which is as valid on Snowflake.
    """

    event_id: str
    account_id: str
    event_type: str
    occurred_at: datetime
    schema_version: int
    body: Body
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int
    request_id: str | None
    accepted_at_ms: int | None  # gateway accept time (epoch ms), from the record header
    # ``<dlq partition>:<dlq offset>`` of the dead letter this row's record replayed: it keeps
    # the replay's identity in the table, from which a restarted consumer's window is rebuilt.
    replay_of: str | None = None


class SinkBatch(msgspec.Struct, frozen=True):
    """The rows of one partition's offset range ``[from_offset, to_offset)``.

    ``from_offset`` is the partition's committed next offset the batch continues from;
    ``to_offset`` is the next offset after the last record consumed for the batch. Invalid and
    duplicate records are inside the range too, so a batch may carry no rows and still advance.
    """

    topic: str
    partition: int
    from_offset: int
    to_offset: int
    rows_json: bytes  # encode_rows(...) output, b"[]" when empty
    row_count: int


class FlushResult(msgspec.Struct, frozen=True):
    """What one ``write`` did."""

    rows_written: int
    rows_skipped: int  # rows whose offset was already committed (an idempotent retry)
    committed_offset: int  # the partition's next offset after this call
    seconds: float


def row_field_index(name: str) -> int:
    """The position of an ``EventRow`` field in its encoded array (for the warehouse SQL)."""
    return EventRow.__struct_fields__.index(name)


def row_from_event(
    event: Event, *, topic: str, partition: int, offset: int,
    request_id: str | None, accepted_at_ms: int | None, replay_of: str | None = None,
) -> EventRow:
    """The row for a validated event read at ``topic``/``partition``/``offset``."""
    # Positional, in field order: consumers build one per event.
    return EventRow(event.event_id, event.account_id, event_type(event), event.occurred_at,
                    event.schema_version, event.body, topic, partition, offset, request_id,
                    accepted_at_ms, replay_of)


# Encoders are stateless and thread-safe to use; one per process is reused for every batch.
_ENCODER: Final = msgspec.json.Encoder()


def encode_rows(rows: Sequence[EventRow]) -> bytes:
    """ONE JSON array for the whole batch (``b"[]"`` when empty)."""
    if not rows:
        return EMPTY_ROWS
    return _ENCODER.encode(rows)
