"""The shapes of the gateway's response bodies (also the source of their OpenAPI schemas)."""

from __future__ import annotations

import msgspec


class DeliveredEvent(msgspec.Struct, frozen=True, gc=False):
    """Where Kafka stored one accepted event. ``gc=False``: scalars only, and a 202 holds
    one per event; untracked, they do not drive the cyclic GC."""

    index: int
    event_id: str
    topic: str
    partition: int
    offset: int


class Accepted(msgspec.Struct, frozen=True):
    """202: every event of the request was acknowledged by Kafka (acks=all)."""

    request_id: str
    accepted: int
    results: list[DeliveredEvent]


class ProblemBody(msgspec.Struct, frozen=True):
    """One problem: the event's position in the request (null: the whole request), the
    field as a JSON path (or a header name), and why."""

    index: int | None
    field: str
    reason: str


class ErrorBody(msgspec.Struct, frozen=True):
    """Any 4xx/5xx answer. ``error`` is a stable code: invalid_events, too_many_events,
    payload_too_large, unsupported_media_type, unauthorized, forbidden, body_timeout,
    producer_busy, gateway_busy, kafka_unavailable, kafka_rejected, not_found,
    method_not_allowed."""

    request_id: str
    error: str
    message: str
    errors: list[ProblemBody]


class Health(msgspec.Struct, frozen=True):
    status: str


class Readiness(msgspec.Struct, frozen=True, omit_defaults=True):
    """``status`` is ready or unavailable; ``reason`` says why when unavailable."""

    status: str
    topic: str
    partitions: int | None = None
    brokers: int | None = None
    reason: str | None = None
