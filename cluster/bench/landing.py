"""Where a run's events ended up: rows in the warehouse and records in the dead-letter topic.

Used by ``eventray run``, ``eventray chaos`` and the pipeline benchmark to count what landed
against what the gateway acknowledged, by run id (every event id of a run starts with it).
Dead-letter partitions added while the probe runs are read from their start; a warehouse
session lost to a restarted server is opened again.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import snowflake.connector
from confluent_kafka import Consumer, KafkaError, TopicPartition

from actors.config import PipelineConfig
from actors.exceptions import KafkaDeliveryError

# An open transaction holds read_committed readers back; a dead letter's lasts milliseconds.
_DRAIN_TIMEOUT_S = 60.0


class _Ids(msgspec.Struct):
    """The two fields we need from a dead-lettered record (others are ignored)."""

    event_id: str = ""
    account_id: str = ""


@dataclass
class Landed:
    rows: int
    dead_lettered: int
    row_keys: set[tuple[str, str]] = field(default_factory=set)
    dlq_keys: set[tuple[str, str]] = field(default_factory=set)
    last_written: float = 0.0  # epoch seconds of the newest row
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None


class LandingProbe:
    """Counts a run's rows and dead letters. Snapshot the DLQ position before the run starts."""

    def __init__(self, config: PipelineConfig, run_id: str) -> None:
        self._config = config
        self._pattern = f"{run_id}-%"
        self._prefix = f"{run_id}-"
        self._dlq_keys: set[tuple[str, str]] = set()
        self._dlq_records = 0
        self._decoder = msgspec.json.Decoder(_Ids)
        self._consumer = Consumer({
            **config.kafka.client_config(),
            "group.id": f"eventray-landing-{run_id}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        })
        metadata = self._consumer.list_topics(config.topics.dead_letter, timeout=10)
        partitions = metadata.topics[config.topics.dead_letter].partitions
        # Start at the current end: only this run's dead letters are counted.
        assignment = []
        for p in partitions:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(config.topics.dead_letter, p), timeout=10)
            assignment.append(TopicPartition(config.topics.dead_letter, p, high))
        self._consumer.assign(assignment)
        # partition -> the offset it was assigned at (where its reading starts)
        self._starts = {tp.partition: tp.offset for tp in assignment}
        self._connection = snowflake.connector.connect(**config.snowflake.connect_kwargs())

    def landed(self, *, with_latency: bool = False) -> Landed:
        self._drain_dead_letters()
        rows, keys, latencies, last_written = self._query_rows(with_keys=with_latency)
        result = Landed(rows=rows, dead_lettered=self._dlq_records, row_keys=keys,
                        dlq_keys=set(self._dlq_keys), last_written=last_written)
        if latencies:
            latencies.sort()
            result.latency_p50_ms = round(statistics.median(latencies), 1)
            result.latency_p99_ms = round(latencies[min(len(latencies) - 1,
                                                         int(len(latencies) * 0.99))], 1)
        return result

    def close(self) -> None:
        self._consumer.close()
        self._connection.close()

    def _assign_new_partitions(self) -> None:
        """Partitions the dead-letter topic gained since the probe started hold only records
        written after its start: read them from their beginning."""
        topic = self._config.topics.dead_letter
        metadata = self._consumer.list_topics(topic, timeout=10)
        new = sorted(set(metadata.topics[topic].partitions) - set(self._starts))
        if new:
            starts = [TopicPartition(topic, p, self._consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=10)[0]) for p in new]
            self._consumer.incremental_assign(starts)
            self._starts.update({tp.partition: tp.offset for tp in starts})

    def _read_to_end(self, ends: dict[int, int]) -> bool:
        """Every assigned partition's position has reached ``ends`` (read_committed positions
        move past transaction markers too)."""
        topic = self._config.topics.dead_letter
        positions = self._consumer.position([TopicPartition(topic, p) for p in ends])
        # Before its first fetch a partition has no position (< 0): it is where it started.
        return all((tp.offset if tp.offset >= 0 else self._starts[tp.partition])
                   >= ends[tp.partition] for tp in positions)

    def _drain_dead_letters(self) -> None:
        """Read the dead-letter topic to where it ends now: an empty poll alone does not
        prove that (a partition just assigned may not have fetched yet)."""
        self._assign_new_partitions()
        topic = self._config.topics.dead_letter
        ends = {p: self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in self._starts}
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        while not self._read_to_end(ends):
            if time.monotonic() > deadline:
                raise KafkaDeliveryError(f"the dead-letter topic {topic} was not read to its "
                                         f"end ({ends}) within {_DRAIN_TIMEOUT_S:g}s")
            messages = self._consumer.consume(num_messages=10_000, timeout=0.5)
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaDeliveryError(f"reading the dead-letter topic: {error}",
                                             code=error.code())
                try:
                    ids = self._decoder.decode(message.value() or b"")
                except msgspec.DecodeError:
                    continue  # not one of this run's events: it never had an id
                if ids.event_id.startswith(self._prefix):
                    self._dlq_records += 1
                    self._dlq_keys.add((ids.account_id, ids.event_id))

    def _query_rows(
        self, *, with_keys: bool
    ) -> tuple[int, set[tuple[str, str]], list[float], float]:
        try:
            return self._query_rows_once(with_keys=with_keys)
        except snowflake.connector.errors.Error:
            # The server may have restarted and forgotten the session: once more, anew.
            with contextlib.suppress(snowflake.connector.errors.Error):
                self._connection.close()
            self._connection = snowflake.connector.connect(
                **self._config.snowflake.connect_kwargs())
            return self._query_rows_once(with_keys=with_keys)

    def _query_rows_once(
        self, *, with_keys: bool
    ) -> tuple[int, set[tuple[str, str]], list[float], float]:
        sf = self._config.snowflake
        with self._connection.cursor() as cur:
            if not with_keys:
                cur.execute(f"SELECT COUNT(*) FROM {sf.events_table} WHERE EVENT_ID LIKE %s",
                            (self._pattern,))
                (count,) = cur.fetchone() or (0,)
                return int(count), set(), [], 0.0
            cur.execute(
                f"SELECT ACCOUNT_ID, EVENT_ID, ACCEPTED_AT, WRITTEN_AT FROM {sf.events_table} "
                "WHERE EVENT_ID LIKE %s", (self._pattern,))
            rows: list[Any] = cur.fetchall()
        keys = {(str(r[0]), str(r[1])) for r in rows}
        latencies = [
            (_epoch(r[3]) - _epoch(r[2])) * 1000.0 for r in rows if r[2] is not None
        ]
        last_written = max((_epoch(r[3]) for r in rows), default=0.0)
        return len(rows), keys, latencies, last_written


def _epoch(value: datetime) -> float:
    """Timestamps without a zone are UTC in our tables."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
