"""How far the pipeline is, read from the sources of truth, not from its actors.

Per partition of the events topic: Kafka's end offset (high watermark) and the warehouse's
committed next offset (the sink's own ``committed_offset`` SQL). Neither needs Ray, so it reads
right through actor faults; while the broker or the emulator is down, ``read()`` raises
``ProgressUnavailableError`` and the caller asks again. Both clients are kept and rebuilt after
a failure, with short timeouts, so a service that comes back is seen within a second or two.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

from actors.config import PipelineConfig
from actors.exceptions import EventrayError
from actors.warehouse import warehouse_sql

log = logging.getLogger(__name__)

_KAFKA_TIMEOUT_S: Final = 2.0
_WAREHOUSE_TIMEOUT_S: Final = 5


class ProgressUnavailableError(EventrayError):
    """Kafka or the warehouse did not answer (expected while a fault is active)."""


@dataclass(frozen=True)
class Progress:
    ends: dict[int, int]              # partition -> Kafka end offset
    committed: dict[int, int | None]  # partition -> the warehouse's next offset (None: never)

    def lag(self) -> int:
        return sum(max(end - (self.committed.get(p) or 0), 0) for p, end in self.ends.items())

    def drained(self) -> bool:
        """Every record in the topic is committed to the warehouse (its rows, its dead letters
        before them)."""
        return all((self.committed.get(p) or 0) >= end for p, end in self.ends.items())


def caught_up(first_after: dict[int, int], progress: Progress) -> bool:
    """Whether the pipeline flows again after a fault: every partition has committed an event
    acknowledged after the fault (``first_after``: its lowest such offset), and a partition the
    load did not reach after the fault has no lag."""
    for partition, end in progress.ends.items():
        committed = progress.committed.get(partition) or 0
        target = first_after.get(partition)
        if target is None:
            if committed < end:
                return False
        elif committed <= target:
            return False
    return True


class ProgressReader:
    """Reads ``Progress`` for the pipeline ``config`` describes. Not thread-safe."""

    def __init__(self, config: PipelineConfig) -> None:
        self._config = config
        self._sql = warehouse_sql(config.snowflake)
        self._consumer: Any = None
        self._connection: Any = None

    def read(self) -> Progress:
        ends = self._ends()
        return Progress(ends=ends, committed=self._committed(sorted(ends)))

    def close(self) -> None:
        self._drop_consumer()
        self._drop_connection()

    def _ends(self) -> dict[int, int]:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        topic = self._config.topics.events
        try:
            if self._consumer is None:
                self._consumer = Consumer({
                    **self._config.kafka.client_config(),
                    "group.id": "eventray-chaos-progress", "enable.auto.commit": False,
                    # See a restarted broker within a second, not librdkafka's 10 s backoff.
                    "reconnect.backoff.max.ms": 1000, "log_level": 0,
                })
            metadata = self._consumer.list_topics(topic, timeout=_KAFKA_TIMEOUT_S)
            partitions = metadata.topics[topic].partitions
            if metadata.topics[topic].error is not None or not partitions:
                raise ProgressUnavailableError(f"topic {topic}: {metadata.topics[topic].error}")
            return {p: int(self._consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=_KAFKA_TIMEOUT_S)[1])
                    for p in sorted(partitions)}
        except KafkaException as exc:
            self._drop_consumer()
            raise ProgressUnavailableError(f"Kafka end offsets of {topic}: {exc}") from exc

    def _committed(self, partitions: list[int]) -> dict[int, int | None]:
        import snowflake.connector
        from snowflake.connector import errors as sf_errors

        topic = self._config.topics.events
        try:
            if self._connection is None:
                kwargs = self._config.snowflake.connect_kwargs()
                kwargs.update(login_timeout=_WAREHOUSE_TIMEOUT_S,
                              network_timeout=_WAREHOUSE_TIMEOUT_S)
                self._connection = snowflake.connector.connect(**kwargs, paramstyle="qmark")
            committed: dict[int, int | None] = {}
            with self._connection.cursor() as cur:
                for partition in partitions:
                    cur.execute(self._sql.committed_offset, (topic, partition))
                    row = cur.fetchone()
                    value = None if row is None else row[0]
                    committed[partition] = None if value is None else int(value)
        except sf_errors.Error as exc:
            self._drop_connection()
            raise ProgressUnavailableError(f"warehouse offsets of {topic}: {exc}") from exc
        return committed

    def _drop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        from snowflake.connector import errors as sf_errors

        try:
            connection.close()
        except sf_errors.Error as exc:  # the server that knew the session is gone
            log.debug("closing a dead warehouse session: %s", exc)
