"""A consumer killed between its dead-letter transaction and its warehouse write ends, once a
new life has replayed the batch, exactly as a run without the crash: the same rows, dead
letters and duplicates (issue 12, item 3; the property test in tests/unit/test_replay_property.py
crashes at every step in memory).

Real broker, emulator and Ray. The chosen point is reached without a hook: the partition's sink
is killed, so the consumer plans the next batch, commits its dead letters and then waits for a
sink that is gone; it is killed there, and a new sink and consumer take over.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import ray
from confluent_kafka import Producer
from pipeline_helpers import (
    dead_letters,
    local_ray_session,
    pipeline_settings,
    wait_for,
    warehouse_rows,
)

from actors.config import KafkaConnection, PipelineConfig, SnowflakeConfig
from actors.consumer import ConsumerStatus, partition_consumer_actor, sink_name
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_REQUEST_ID,
    Event,
    EventCodec,
    PaymentBody,
    PaymentCaptured,
)
from actors.kafka_admin import end_offsets, ensure_topics
from actors.sink import SnowflakeSinkActor
from cluster.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    with local_ray_session(f"crash-{uuid.uuid4().hex[:6]}"):
        yield


def one_partition(kafka: KafkaConnection, snowflake: SnowflakeConfig) -> Settings:
    settings = pipeline_settings(kafka, snowflake, partitions=1, pool_size=1,
                                 batch_max_events=500)
    ensure_topics(settings.pipeline_config().kafka, settings.pipeline_config().topics)
    return settings


def start_life(config: PipelineConfig, life: str) -> tuple[Any, Any]:
    """A sink and a consumer of partition 0 (one life of both)."""
    sink = SnowflakeSinkActor.options(name=sink_name(0), namespace=config.namespace,
                                      num_cpus=0.1).remote(config.snowflake, config.sink, 0)
    ray.get(sink.ensure_tables.remote())
    consumer = partition_consumer_actor().options(
        name=f"consumer-{life}", namespace=config.namespace, num_cpus=0.1, max_concurrency=4,
    ).remote(config, 0)
    return sink, consumer


def status(consumer: Any) -> ConsumerStatus:
    answer: ConsumerStatus = ray.get(consumer.status.remote(), timeout=30)
    return answer


def produce(conn: KafkaConnection, topic: str, records: list[Event | tuple[bytes, bytes]]
            ) -> None:
    """In this order through one producer, so a batch can hold them all: events as the
    gateway writes them (keyed by account, its headers), raw records as another producer."""
    codec = EventCodec()
    producer = Producer({**conn.client_config(), "enable.idempotence": True, "acks": "all",
                         "partitioner": "murmur2_random"})
    accepted = str(time.time_ns() // 1_000_000).encode()
    failures: list[Any] = []
    for record in records:
        if isinstance(record, tuple):
            key, value, headers = record[0], record[1], None
        else:
            key, value = record.account_id.encode(), codec.encode(record)
            headers = [(HEADER_REQUEST_ID, b"req"), (HEADER_ACCEPTED_AT_MS, accepted)]
        producer.produce(topic, key=key, value=value, headers=headers,
                         on_delivery=lambda err, _m: failures.append(err) if err else None)
    assert producer.flush(30) == 0
    assert failures == []


def payment(account: str, event_id: str, currency: str = "EUR") -> Event:
    return PaymentCaptured(event_id=event_id, account_id=account,
                           occurred_at=datetime.now(UTC) - timedelta(minutes=1),
                           body=PaymentBody(amount_minor=700, currency=currency,
                                            merchant_id="m-1"))


def broken(account: str, event_id: str) -> tuple[bytes, bytes]:
    """A record that breaks the contract but carries an event key."""
    return account.encode(), msgspec.json.encode(
        {"type": "payment.captured", "event_id": event_id, "account_id": account})


Record = Event | tuple[bytes, bytes]


class Parts(msgspec.Struct):
    """The records, in two parts: the crash comes while the second one is written."""

    first: list[Record]
    second: list[Record]
    second_dead: int  # dead letters the second part makes


def parts() -> Parts:
    ok = [payment("acct-a", f"e-{n}") for n in range(6)]
    bad = [payment("acct-b", f"x-{n}", currency="XYZ") for n in range(3)]
    return Parts(
        first=[*ok[:3], bad[0], ok[0], (b"acct-c", b"garbage-1")],  # a retry inside the batch
        # Retries of written and dead-lettered events, new ones, new invalid ones, and e-4's
        # id again breaking the contract right after e-4 in the same batch: that dead letter
        # is committed before the crash, e-4's row is not.
        second=[ok[1], bad[0], *ok[3:5], broken("acct-a", "e-4"), ok[5], bad[1], bad[1], ok[5],
                broken("acct-d", "y-1"), (b"acct-c", b"garbage-2")],
        second_dead=4,
    )


class Outcome(msgspec.Struct, frozen=True):
    rows: list[tuple[str, str, int]]     # (account, event id, offset)
    dead: list[tuple[str, str, int]]     # (account, event id, source offset)
    duplicates: int


def outcome(config: PipelineConfig, duplicates: int) -> Outcome:
    rows = sorted((a, e, o) for a, e, _, o in warehouse_rows(
        config.snowflake, config.snowflake.events_table, config.topics.events))
    dead = sorted((a, e, o) for a, e, _, o in dead_letters(config.kafka,
                                                          config.topics.dead_letter))
    return Outcome(rows, dead, duplicates)


def drained(config: PipelineConfig, consumer: Any) -> None:
    end = end_offsets(config.kafka, config.topics.events)[0]
    wait_for(f"the consumer to commit offset {end}",
             lambda: status(consumer).committed_offset == end, timeout=180, interval=0.2)


def run(settings: Settings, records: Parts, *, crash: bool) -> Outcome:
    config = settings.pipeline_config()
    topic = config.topics.events
    actors: list[Any] = []
    duplicates = 0
    try:
        sink, consumer = start_life(config, "first")
        actors += [sink, consumer]
        produce(config.kafka, topic, records.first)
        drained(config, consumer)
        if crash:
            ray.kill(sink, no_restart=True)
            dead_before = len(dead_letters(config.kafka, config.topics.dead_letter))
        produce(config.kafka, topic, records.second)
        if crash:
            # The second part is planned and its dead letters committed; its write waits for
            # the sink that is gone. The consumer dies right there.
            wait_for("the second part's dead letters", lambda: len(dead_letters(
                config.kafka, config.topics.dead_letter)) == dead_before + records.second_dead,
                timeout=120)
            duplicates += status(consumer).duplicates
            ray.kill(consumer, no_restart=True)
            sink, consumer = start_life(config, "second")
            actors += [sink, consumer]
        drained(config, consumer)
        duplicates += status(consumer).duplicates
        return outcome(config, duplicates)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def test_a_consumer_killed_between_dead_letters_and_write_ends_as_without_the_crash(
        ray_session: None, kafka_connection: KafkaConnection,
        snowflake_config: SnowflakeConfig) -> None:
    records = parts()
    uncrashed = run(one_partition(kafka_connection, snowflake_config), records, crash=False)
    crashed = run(one_partition(kafka_connection, snowflake_config), records, crash=True)
    assert crashed == uncrashed
    # And what a run without the crash gives: each event once, in the table or dead-lettered.
    assert [e for _, e, _ in uncrashed.rows] == [f"e-{n}" for n in (0, 1, 2, 3, 4, 5)]
    assert {e for _, e, _ in uncrashed.dead} >= {"x-0", "x-1", "y-1"}
    assert uncrashed.duplicates == 5  # e-0, e-1, x-0, x-1 and e-5 again
