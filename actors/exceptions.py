"""The error hierarchy shared by every eventray package.

``EventrayError`` is the single root; each part (actors, gateway, cluster) derives its own
errors from it so a caller can catch one type. Kafka errors keep librdkafka's code.
"""

from __future__ import annotations


class EventrayError(Exception):
    """Root of every error raised by eventray."""


class ConfigError(EventrayError):
    """A setting is missing or invalid; the message names the key and the reason."""


class DurabilityError(ConfigError):
    """A topic's replication makes acks=all meaningless (``actors.durability``)."""


class ContractError(EventrayError):
    """An event does not match the contract."""


class KafkaDeliveryError(EventrayError):
    """Kafka did not acknowledge a record (or an admin/consume call failed).

    ``code`` is librdkafka's error code (``KafkaError.code()``) when there is one.
    """

    def __init__(self, message: str, code: int | None = None, retriable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable


class SinkError(EventrayError):
    """The warehouse rejected or failed a write."""


class OffsetGapError(SinkError):
    """A batch does not continue where the partition's committed offset stands."""


class ProducerFencedError(KafkaDeliveryError):
    """Another producer with our ``transactional.id`` was initialised after ours (a newer
    owner of the partition, or a stale one restarting); ours can commit nothing more."""


class FencedError(SinkError):
    """A newer owner took the partition (its epoch in the owners table is not ours): this
    owner committed nothing and must stop writing for good (``actors.warehouse``)."""


class TransactionAbortedError(SinkError):
    """The warehouse aborted a write transaction midway; none of it committed, so retrying
    the whole transaction is safe."""


class WarehouseReadError(EventrayError):
    """A read from the warehouse failed, also when run again on a new session."""
