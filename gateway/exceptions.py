"""Errors raised by the gateway; all derive from ``EventrayError``.

Each error that reaches a client carries the HTTP status it maps to, so the app turns an
exception into a response in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.exceptions import EventrayError, KafkaDeliveryError


class GatewayError(EventrayError):
    """Root of the gateway's errors."""


class ProducerBusyError(GatewayError):
    """The local producer queue has no room for the request's events (back-pressure: 429)."""


class KafkaUnavailableError(KafkaDeliveryError, GatewayError):
    """Kafka did not acknowledge every event of a request within the deadline (503).

    Some events of the request may still have been written: a client retries with the same
    event ids and the pipeline drops the duplicates.
    """


class KafkaRejectedError(KafkaDeliveryError, GatewayError):
    """Kafka refused a record with a non-retriable error (500); ``code`` says which."""


class ProducerClosedError(GatewayError):
    """The producer was closed (the replica is shutting down)."""


class ClientDisconnectedError(GatewayError):
    """The client closed the connection before its request body had arrived; nothing of the
    request was produced and nobody is left to answer."""

    def __init__(self, received: int, declared: int | None) -> None:
        super().__init__(f"client left after {received} of "
                         f"{'?' if declared is None else declared} body bytes")
        self.received = received
        self.declared = declared


class FlushError(KafkaDeliveryError, GatewayError):
    """Shutdown's flush left records unsent."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a request: which event (``index``, None for the whole body), which
    field (a JSON path such as ``$.body.currency``) and why."""

    index: int | None
    field: str
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "field": self.field, "reason": self.reason}


class RequestRejectedError(GatewayError):
    """The request is refused before anything is produced; ``status`` is its HTTP status,
    ``error`` a stable machine-readable code, ``problems`` what exactly was wrong,
    ``headers`` extra response headers (``Retry-After``, ``Connection: close``)."""

    def __init__(
        self, status: int, error: str, message: str, problems: list[Problem] | None = None,
        *, events: int = 1, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.problems = problems or []
        self.events = events  # how many events the refusal concerns (for the metrics)
        self.headers = headers
