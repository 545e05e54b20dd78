"""The replica's Kafka producer: delivery reports turned into awaitable results.

One confluent-kafka ``Producer`` per replica (built in ``start()``, inside the replica, never
pickled), idempotent with ``acks=all``. A poll thread serves delivery reports; each request
waits on one future that the thread resolves through ``call_soon_threadsafe`` once every
record of the request is acknowledged (or the first one failed), so the event loop never
blocks and never sees one callback per event.

librdkafka's ``message.timeout.ms`` equals the request deadline, so a record either is
acknowledged in time or fails; a request is accepted only when every record was acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, Final, Protocol

from gateway.config import GatewayConfig
from gateway.exceptions import (
    FlushError,
    KafkaRejectedError,
    KafkaUnavailableError,
    ProducerBusyError,
    ProducerClosedError,
)

log = logging.getLogger(__name__)
_librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")

Headers = Sequence[tuple[str, bytes]]
# (partition, offset) of an acknowledged record.
Delivery = tuple[int, int]

_POLL_INTERVAL_S: Final = 0.05
_ERROR_LOG_INTERVAL_S: Final = 10.0


class KafkaErrorLike(Protocol):
    """The part of ``confluent_kafka.KafkaError`` the bridge reads."""

    def code(self) -> int: ...
    def name(self) -> str: ...
    def str(self) -> str: ...
    def fatal(self) -> bool: ...
    def retriable(self) -> bool: ...


def producer_config(config: GatewayConfig) -> dict[str, Any]:
    """librdkafka properties of the gateway's producer (without callbacks)."""
    tuning = config.producer
    timeout_ms = int(tuning.delivery_timeout_s * 1000)
    conf = config.kafka.client_config()
    conf.update({
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": min(tuning.linger_ms, max(timeout_ms - 1, 0)),
        "batch.size": tuning.batch_size_bytes,
        "queue.buffering.max.messages": tuning.queue_max_messages,
        "queue.buffering.max.kbytes": tuning.queue_max_kbytes,
        "compression.type": tuning.compression,
        # A record not acknowledged by the request's deadline fails instead of lingering,
        # so a 503 answer and librdkafka's own verdict agree.
        "message.timeout.ms": timeout_ms,
        "request.timeout.ms": min(30_000, timeout_ms),
        # Java-compatible key hashing, so other producers place the same key alike.
        "partitioner": "murmur2_random",
        "client.id": "eventray-gateway",
    })
    return conf


class _Waiter:
    """Collects the delivery reports of one request. Called from the poll thread only."""

    __slots__ = ("error", "future", "loop", "remaining", "results", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.remaining = count
        self.results: list[Delivery] = [(-1, -1)] * count
        self.error: KafkaErrorLike | None = None
        self.timer: asyncio.TimerHandle | None = None

    def delivered(self, index: int, err: KafkaErrorLike | None, msg: Any) -> None:
        if err is None:
            self.results[index] = (msg.partition(), msg.offset())
        elif self.error is None:
            self.error = err
            # The request fails anyway: answer now rather than after the other reports.
            self.loop.call_soon_threadsafe(self._finish)
        self.remaining -= 1
        if self.remaining == 0 and self.error is None:
            self.loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.future.done():
            self.future.set_result(None)


class DeliveryProducer:
    """An idempotent producer whose ``produce`` returns once Kafka acknowledged every record."""

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        self._topic = config.topics.events
        self._deadline_s = config.producer.delivery_timeout_s
        self._queue_max = config.producer.queue_max_messages
        self._client: Any = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._fatal: KafkaErrorLike | None = None
        self._lock = threading.Lock()
        self._last_error_log: dict[int, float] = {}
        self.generation = 0  # bumped each time the client is (re)built

    @property
    def topic(self) -> str:
        return self._topic

    def start(self) -> None:
        """Build the client and its poll thread (in the process that uses them)."""
        with self._lock:
            self._build()

    def _build(self) -> None:
        from confluent_kafka import Producer

        conf = producer_config(self._config)
        conf["error_cb"] = self._on_error
        conf["logger"] = _librdkafka_log  # librdkafka's own log lines, into logging
        self._client = Producer(conf)
        self._fatal = None
        self.generation += 1
        stop = threading.Event()
        thread = threading.Thread(
            target=_poll_loop, args=(self._client, stop),
            name=f"eventray-producer-poll-{self.generation}", daemon=True,
        )
        thread.start()
        self._stop, self._thread = stop, thread
        log.info("producer started generation=%d topic=%s", self.generation, self._topic)

    def _on_error(self, err: KafkaErrorLike) -> None:
        """librdkafka's error callback: most errors are transient (it reconnects by itself);
        a fatal one (idempotence broken) makes the next request rebuild the producer."""
        if err.fatal():
            log.error("producer fatal error code=%s reason=%s: rebuilding", err.name(), err.str())
            self._fatal = err
            return
        now = time.monotonic()
        if now - self._last_error_log.get(err.code(), 0.0) >= _ERROR_LOG_INTERVAL_S:
            self._last_error_log[err.code()] = now
            log.warning("producer error code=%s reason=%s", err.name(), err.str())

    def _ensure_healthy(self) -> Any:
        if self._client is None:
            raise ProducerClosedError("the producer is not running")
        if self._fatal is not None:
            with self._lock:
                if self._fatal is not None:
                    self._retire(self._client, self._stop, self._thread)
                    self._build()
        return self._client

    def _retire(self, client: Any, stop: threading.Event | None,
                thread: threading.Thread | None) -> None:
        """Purge a broken client in the background: its pending requests fail (503)."""

        def drain() -> None:
            # Stop the old poll thread first: delivery reports are served by one thread only.
            if stop is not None:
                stop.set()
            if thread is not None:
                thread.join()
            client.purge(True, True)
            left = client.flush(1.0)
            if left:
                log.error("retired producer still held records count=%d", left)

        threading.Thread(target=drain, name="eventray-producer-retire", daemon=True).start()

    def queue_length(self) -> int:
        """Records produced and not yet acknowledged or failed."""
        return 0 if self._client is None else len(self._client)

    async def produce(
        self, keys: Sequence[bytes], values: Sequence[bytes], headers: Headers
    ) -> list[Delivery]:
        """Produce one record per (key, value), all with ``headers``; return their
        (partition, offset) once all are acknowledged. Raises ``ProducerBusyError`` (queue
        full), ``KafkaUnavailableError`` (not acknowledged within the deadline, or a
        retriable failure) or ``KafkaRejectedError``."""
        client = self._ensure_healthy()
        count = len(values)
        if len(client) + count > self._queue_max:
            raise ProducerBusyError(f"producer queue full ({len(client)} records waiting)")
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop, count)
        waiter.timer = loop.call_later(self._deadline_s, waiter._finish)
        topic, produce, delivered = self._topic, client.produce, waiter.delivered
        try:
            for index in range(count):
                produce(topic, values[index], keys[index], headers=headers,
                        on_delivery=partial(delivered, index))
        except BufferError:
            waiter.timer.cancel()
            raise ProducerBusyError("producer queue full") from None
        except Exception as exc:
            waiter.timer.cancel()
            raise _produce_error(exc) from exc
        await waiter.future
        if waiter.error is not None:
            raise _delivery_error(waiter.error)
        if waiter.remaining:
            raise KafkaUnavailableError(
                f"Kafka did not acknowledge {waiter.remaining} of {count} records within "
                f"{self._deadline_s:g}s", retriable=True)
        return waiter.results

    def check_ready(self, timeout_s: float) -> dict[str, Any]:
        """Blocking: Kafka answers a metadata request and the topic exists with partitions.
        Raises ``KafkaUnavailableError``."""
        from confluent_kafka import KafkaException

        client = self._ensure_healthy()
        try:
            metadata = client.list_topics(self._topic, timeout=timeout_s)
        except KafkaException as exc:
            raise _produce_error(exc) from None
        topic = metadata.topics.get(self._topic)
        if topic is None or topic.error is not None or not topic.partitions:
            reason = "missing" if topic is None or topic.error is None else topic.error.str()
            raise KafkaUnavailableError(f"topic {self._topic!r}: {reason}", retriable=True)
        return {"topic": self._topic, "partitions": len(topic.partitions),
                "brokers": len(metadata.brokers)}

    def close(self, timeout_s: float) -> None:
        """Stop the poll thread and flush; raises ``FlushError`` if records were left unsent."""
        with self._lock:
            client, stop, thread = self._client, self._stop, self._thread
            self._client = None
        if client is None:
            return
        if stop is not None and thread is not None:
            stop.set()
            thread.join()
        left = client.flush(timeout_s)
        log.info("producer closed generation=%d unsent=%d", self.generation, left)
        if left:
            raise FlushError(f"flush left {left} records unsent after {timeout_s:g}s",
                             retriable=True)


def _poll_loop(client: Any, stop: threading.Event) -> None:
    poll = client.poll
    while not stop.is_set():
        poll(_POLL_INTERVAL_S)


def _delivery_error(err: KafkaErrorLike) -> KafkaUnavailableError | KafkaRejectedError:
    from confluent_kafka import KafkaError

    transient = {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
                 KafkaError._ALL_BROKERS_DOWN, KafkaError._PURGE_QUEUE,
                 KafkaError._PURGE_INFLIGHT, KafkaError.UNKNOWN_TOPIC_OR_PART}
    message = f"Kafka did not acknowledge a record: {err.name()} ({err.str()})"
    if err.retriable() or err.code() in transient or err.fatal():
        return KafkaUnavailableError(message, code=err.code(), retriable=True)
    return KafkaRejectedError(message, code=err.code(), retriable=False)


def _produce_error(exc: Exception) -> KafkaUnavailableError | KafkaRejectedError:
    from confluent_kafka import KafkaError

    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError):
        return _delivery_error(err)
    return KafkaUnavailableError(f"Kafka call failed: {exc}", retriable=True)

