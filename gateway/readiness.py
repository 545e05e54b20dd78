"""``/readyz``: does Kafka answer, and does the events topic exist with partitions?

The check uses a metadata client of its own (an ``AdminClient``, built on first use), never the
replica's producer: the producer is replaced when it breaks, on the event loop only
(``DeliveryProducer``), and a check that reached it from a worker thread could rebuild it
there, racing the loop. Admin requests return futures that librdkafka resolves from its own
thread; the check awaits them on the event loop, bounded by
``gateway.producer.readiness_timeout_s``. Concurrent ``/readyz`` calls share the check in
flight, so an unauthenticated flood costs Kafka one request pair at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from gateway.config import GatewayConfig
from gateway.exceptions import KafkaUnavailableError


class TopicReady(msgspec.Struct, frozen=True):
    topic: str
    partitions: int
    brokers: int


class KafkaReadiness:
    """One per app; ``check`` runs on the event loop."""

    def __init__(self, config: GatewayConfig) -> None:
        self._conf = {
            **config.kafka.client_config(),
            "client.id": "eventray-gateway-readiness",
            # The producer already reports broker trouble (rate-limited): this client's copies
            # of the same connection errors would only double the noise on stderr.
            "log_level": 2,
        }
        self._topic = config.topics.events
        self._timeout_s = config.producer.readiness_timeout_s
        self._admin: Any = None
        self._inflight: asyncio.Future[TopicReady] | None = None

    def close(self) -> None:
        """Drop the metadata client (librdkafka destroys it with the last reference)."""
        self._admin = None

    async def check(self) -> TopicReady:
        """Raises ``KafkaUnavailableError`` when Kafka does not answer in time or the topic is
        missing."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._check())
        # A caller that goes away (its request cancelled) leaves the check to the others.
        return await asyncio.shield(self._inflight)

    async def _check(self) -> TopicReady:
        from confluent_kafka import KafkaError, KafkaException, TopicCollection
        from confluent_kafka.admin import AdminClient

        if self._admin is None:
            self._admin = AdminClient(self._conf)
        timeout = self._timeout_s
        try:
            async with asyncio.timeout(timeout):
                described = self._admin.describe_topics(
                    TopicCollection([self._topic]), request_timeout=timeout)[self._topic]
                cluster = self._admin.describe_cluster(request_timeout=timeout)
                topic, nodes = await asyncio.gather(asyncio.wrap_future(described),
                                                    asyncio.wrap_future(cluster))
        except TimeoutError:
            raise KafkaUnavailableError(f"Kafka did not answer within {timeout:g}s",
                                        retriable=True) from None
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise KafkaUnavailableError(f"topic {self._topic!r}: missing",
                                            retriable=True) from None
            reason = err.str() if isinstance(err, KafkaError) else str(exc)
            raise KafkaUnavailableError(f"Kafka did not describe topic {self._topic!r}: "
                                        f"{reason}", retriable=True) from None
        if not topic.partitions:
            raise KafkaUnavailableError(f"topic {self._topic!r}: no partitions", retriable=True)
        return TopicReady(self._topic, len(topic.partitions), len(nodes.nodes))
