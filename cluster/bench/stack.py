"""What the benchmarks run on: a Kafka broker and the Snowflake emulator of their own (in a temp
dir, removed after) or running ones, and their topics."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from actors.config import KafkaConnection, SnowflakeConfig
from actors.exceptions import EventrayError
from cluster.settings import Settings


class BenchError(EventrayError):
    """The benchmark could not run a phase."""


@contextmanager
def bench_stack(settings: Settings, *, bootstrap: str | None, snowflake_port: int | None,
                name: str) -> Iterator[tuple[KafkaConnection, SnowflakeConfig]]:
    """Kafka and the emulator (a fresh database on it): ``bootstrap`` and the emulator on
    127.0.0.1:``snowflake_port`` when given, else local ones in a temp dir (removed after)."""
    from cluster.local.kafka_broker import LocalKafka
    from cluster.local.snowflake_emulator import LocalSnowflake, emulator_config
    from cluster.local.snowflake_emulator import ensure_database as ensure_db

    work = Path(tempfile.mkdtemp(prefix=f"eventray-bench-{name}-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        if bootstrap:
            kafka = KafkaConnection(bootstrap_servers=bootstrap)
        else:
            broker = LocalKafka(work / "kafka", port=0, controller_port=0,
                                version=settings.local.kafka_version,
                                cache_dir=settings.cache_path(), heap="1g")
            stack.callback(broker.stop)
            broker.start(timeout=120)
            kafka = broker.connection()
        database = f"BENCH_{uuid.uuid4().hex[:6].upper()}"
        if snowflake_port:
            snowflake = emulator_config("127.0.0.1", snowflake_port, database=database)
        else:
            server = LocalSnowflake(work / "snowflake", port=0)
            stack.callback(server.stop)
            server.start(timeout=120)
            snowflake = server.snowflake_config(database=database)
        ensure_db(snowflake)
        yield kafka, snowflake


def create_topic(conn: KafkaConnection, name: str, partitions: int) -> None:
    """``name`` with ``partitions`` partitions and one replica, once every partition has a
    leader."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient(conn.client_config())
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(timeout=60)
    deadline = time.monotonic() + 60
    while True:
        parts = admin.list_topics(topic=name, timeout=10).topics[name].partitions
        if len(parts) == partitions and all(p.leader >= 0 for p in parts.values()):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"topic {name}: partitions without a leader")
        time.sleep(0.1)


def gateway_like_producer(conn: KafkaConnection) -> Any:
    """A confluent-kafka Producer configured as the gateway's (idempotent, acks=all, lz4, the
    gateway's partitioner and linger), with room to fill a topic quickly."""
    from confluent_kafka import Producer

    return Producer({**conn.client_config(), "enable.idempotence": True, "acks": "all",
                     "linger.ms": 20, "batch.size": 1_000_000, "compression.type": "lz4",
                     "queue.buffering.max.messages": 1_000_000,
                     "partitioner": "murmur2_random"})


def end_offsets(conn: KafkaConnection, topic: str, partitions: int) -> dict[int, int]:
    """Each partition's end (high watermark) offset."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**conn.client_config(), "group.id": f"bench-{uuid.uuid4().hex}"})
    try:
        return {p: int(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1])
                for p in range(partitions)}
    finally:
        consumer.close()
