"""Reading the dead-letter topic for operators: scan it with a filter, or fetch records by id.

Only committed dead letters are read (``read_committed``: a consumer's aborted transactions are
skipped). A scan reads each selected partition from its start (or, with a dead-letter time
filter, from the first record at or after it) to the end it had when the scan reached it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, TypeVar

from actors.config import KafkaConnection
from actors.dlq_select import DeadLetterFilter, DeadLetterId, DeadLetterRecord, dead_letter_record
from actors.exceptions import KafkaDeliveryError
from actors.kafka_admin import partition_count

_KAFKA_TIMEOUT_S: Final = 30.0
# A read that gets neither a record nor the partition's end for this long has stalled.
_IDLE_TIMEOUT_S: Final = 30.0

_T = TypeVar("_T")
# group.id prefix of the dead-letter readers `eventray dlq` opens (each a unique group; a
# KafkaUser's ACLs name the prefix: cluster/k8s/kafka-user.yaml).
CLI_GROUP_PREFIX: Final = "eventray-dlq-cli-"


class DeadLetterReader:
    """A read_committed consumer of one dead-letter topic. Use it as a context manager."""

    def __init__(self, conn: KafkaConnection, dlq_topic: str) -> None:
        from confluent_kafka import Consumer

        self._topic = dlq_topic
        self._partitions = partition_count(conn, dlq_topic)
        conf = conn.client_config()
        conf.update({
            # assign() only: the group is never joined or committed; unique, so two
            # operators' reads never meet in one.
            "group.id": f"{CLI_GROUP_PREFIX}{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # The end of a partition is known only from a fetch that comes back empty: do not
            # let the broker hold each one for the default 500 ms.
            "fetch.wait.max.ms": 20,
            "client.id": "eventray-dlq-cli",
        })
        self._consumer: Any = Consumer(conf)

    def __enter__(self) -> DeadLetterReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def partitions(self) -> int:
        return self._partitions

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def scan(self, selection: DeadLetterFilter) -> Iterator[DeadLetterRecord]:
        """The dead letters ``selection`` matches, by partition, then offset."""
        for partition in range(self._partitions):
            if not selection.selects_partition(partition):
                continue
            start = self._start(partition, selection.seek_ms)
            if start is None:
                continue
            for record in self._read(partition, start, stop=None):
                if selection.matches(record):
                    yield record

    def read(self, ids: Iterable[DeadLetterId]) -> dict[DeadLetterId, DeadLetterRecord]:
        """The dead letters at ``ids``; an id where no committed dead letter is (an aborted
        or transaction-marker offset, or out of range) is left out."""
        wanted: dict[int, set[int]] = {}
        for dead_letter_id in ids:
            wanted.setdefault(dead_letter_id.partition, set()).add(dead_letter_id.offset)
        found: dict[DeadLetterId, DeadLetterRecord] = {}
        for partition, asked in sorted(wanted.items()):
            bounds = self._bounds(partition) if partition < self._partitions else None
            offsets = {o for o in asked if bounds is not None and bounds[0] <= o < bounds[1]}
            if not offsets:
                continue
            for record in self._read(partition, min(offsets), stop=max(offsets) + 1):
                if record.offset in offsets:
                    found[record.id] = record
        return found

    def _bounds(self, partition: int) -> tuple[int, int]:
        """``(first offset, end offset)`` of ``partition``."""
        from confluent_kafka import TopicPartition

        low, high = _kafka(f"reading the offsets of {self._topic}/{partition}",
                           lambda: self._consumer.get_watermark_offsets(
                               TopicPartition(self._topic, partition),
                               timeout=_KAFKA_TIMEOUT_S))
        return int(low), int(high)

    def _start(self, partition: int, since_ms: int | None) -> int | None:
        """Where to start reading ``partition``: None when it holds nothing to read."""
        from confluent_kafka import TopicPartition

        low, high = self._bounds(partition)
        if high <= low:
            return None
        if since_ms is None:
            return int(low)
        (found,) = _kafka(f"looking up {self._topic}/{partition} by time",
                          lambda: self._consumer.offsets_for_times(
                              [TopicPartition(self._topic, partition, since_ms)],
                              timeout=_KAFKA_TIMEOUT_S))
        if found.error is not None:
            raise KafkaDeliveryError(f"looking up {self._topic}/{partition} at {since_ms}: "
                                     f"{found.error}")
        return None if found.offset < 0 else max(int(found.offset), low)

    def _read(self, partition: int, start: int, stop: int | None) -> Iterator[DeadLetterRecord]:
        """The committed records of ``partition`` from ``start`` up to ``stop`` (exclusive)
        or the partition's end."""
        from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, TopicPartition

        self._consumer.assign([TopicPartition(self._topic, partition, start)])
        idle_since = time.monotonic()
        try:
            while True:
                msgs = self._consumer.consume(num_messages=500, timeout=0.1)
                if msgs:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > _IDLE_TIMEOUT_S:
                    raise KafkaDeliveryError(f"reading {self._topic}/{partition} stalled for "
                                             f"{_IDLE_TIMEOUT_S:g}s at offset >= {start}")
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            return
                        raise KafkaDeliveryError(
                            f"reading {self._topic}/{partition}: {err.str()}",
                            code=err.code(), retriable=err.retriable())
                    if stop is not None and msg.offset() >= stop:
                        return
                    kind, timestamp = msg.timestamp()
                    yield dead_letter_record(
                        partition, msg.offset(),
                        timestamp_ms=None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp,
                        key=msg.key(), value=msg.value(), headers=msg.headers())
                    if stop is not None and msg.offset() + 1 >= stop:
                        return
        finally:
            self._consumer.unassign()


def _kafka(what: str, call: Callable[[], _T]) -> _T:
    """``call()``, a confluent-kafka error raised as ``KafkaDeliveryError`` naming ``what``."""
    from confluent_kafka import KafkaException

    try:
        return call()
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if err is None or not hasattr(err, "code"):
            raise KafkaDeliveryError(f"{what} failed: {exc}") from exc
        raise KafkaDeliveryError(f"{what} failed: {err.str()}", code=err.code(),
                                 retriable=err.retriable()) from exc
