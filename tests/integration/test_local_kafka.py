"""The local KRaft broker, for real: keyed produce/consume, crash recovery, taken ports."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from actors.config import KafkaConnection
from cluster.local.kafka_broker import LocalKafka
from cluster.local.processes import ServiceStartError, free_port, group_members
from cluster.settings import Settings

TopicFactory = Callable[..., str]

pytestmark = pytest.mark.integration


def produce_keyed(connection: KafkaConnection, topic: str,
                  records: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Produce (key, value) pairs with acks=all + idempotence; return each one's partition."""
    producer = Producer({**connection.client_config(), "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5})
    partitions: dict[tuple[str, str], int] = {}
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            errors.append(err)
            return
        partitions[(msg.key().decode(), msg.value().decode())] = msg.partition()

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0, "messages left unsent"
    assert errors == []
    return partitions


def read_partition(connection: KafkaConnection, topic: str, partition: int,
                   timeout: float = 30) -> list[tuple[str, str]]:
    """Everything in one partition, from offset 0 to the high watermark, via assign()."""
    consumer = Consumer({**connection.client_config(), "group.id": "test-reader",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        consumer.assign([TopicPartition(topic, partition, 0)])
        out: list[tuple[str, str]] = []
        deadline = time.monotonic() + timeout
        while len(out) < high and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                assert msg.error() is None, msg.error()
                out.append(((msg.key() or b"").decode(), (msg.value() or b"").decode()))
        return out
    finally:
        consumer.close()


def test_keyed_records_land_in_one_partition_per_key_and_all_come_back(
        kafka_connection: KafkaConnection, topic_factory: TopicFactory) -> None:
    topic = topic_factory(partitions=4, prefix="smoke")
    records = [(f"account-{i % 13}", f"event-{i}") for i in range(400)]

    produced = produce_keyed(kafka_connection, topic, records)

    read = {p: read_partition(kafka_connection, topic, p) for p in range(4)}
    everything = [r for rows in read.values() for r in rows]
    assert sorted(everything) == sorted(records)
    partitions_of_key: dict[str, set[int]] = {}
    for partition, rows in read.items():
        for key, value in rows:
            partitions_of_key.setdefault(key, set()).add(partition)
            assert produced[(key, value)] == partition
    assert all(len(ps) == 1 for ps in partitions_of_key.values())
    assert len({p for ps in partitions_of_key.values() for p in ps}) > 1  # keys spread out
    # Per partition, records keep the order they were produced in.
    for rows in read.values():
        indexes = [int(value.split("-")[1]) for _, value in rows]
        assert indexes == sorted(indexes)


@pytest.fixture
def own_broker(eventray_settings: Settings, tmp_path: Path) -> Iterator[LocalKafka]:
    broker = LocalKafka(tmp_path / "kafka", version=eventray_settings.local.kafka_version,
                        cache_dir=eventray_settings.cache_path(), heap="256m")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.timeout(240)
def test_acknowledged_records_survive_kill_9_and_restart(own_broker: LocalKafka) -> None:
    own_broker.start()
    port, controller_port, pid = own_broker.port, own_broker.controller_port, own_broker.pid
    assert pid is not None
    connection = own_broker.connection()
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(connection.client_config())
    admin.create_topics([NewTopic("durable", 2, 1)])["durable"].result(timeout=30)
    records = [(f"k{i % 5}", f"v{i}") for i in range(200)]
    produce_keyed(connection, "durable", records)

    own_broker.kill()
    assert not own_broker.is_running()
    assert group_members(pid) == []
    own_broker.restart()

    assert (own_broker.port, own_broker.controller_port) == (port, controller_port)
    assert own_broker.pid != pid
    back = read_partition(connection, "durable", 0) + read_partition(connection, "durable", 1)
    assert sorted(back) == sorted(records)


@pytest.mark.timeout(60)
def test_a_taken_port_fails_the_start_and_names_the_port(
        eventray_settings: Settings, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        broker = LocalKafka(tmp_path / "kafka", port=taken, controller_port=free_port(),
                            version=eventray_settings.local.kafka_version,
                            cache_dir=eventray_settings.cache_path(), heap="256m")
        try:
            with pytest.raises(ServiceStartError, match=str(taken)):
                broker.start(timeout=30)
            assert not broker.is_running()
        finally:
            broker.stop()


@pytest.mark.timeout(120)
def test_a_port_taken_after_the_check_is_reported_from_the_dying_broker(
        eventray_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The pre-launch check passes; the port is grabbed before the JVM binds it, so the broker
    # itself fails: the error must still name the port and quote the broker's log.
    broker = LocalKafka(tmp_path / "kafka", version=eventray_settings.local.kafka_version,
                        cache_dir=eventray_settings.cache_path(), heap="256m")
    from cluster.local.processes import require_free_ports as original

    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def check_then_grab(service: str, ports: dict[str, int], host: str = "127.0.0.1") -> None:
        original(service, ports, host)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((host, ports["broker port"]))
        holder.listen()

    monkeypatch.setattr("cluster.local.kafka_broker.require_free_ports", check_then_grab)
    try:
        with pytest.raises(ServiceStartError) as info:
            broker.start(timeout=60)
        message = str(info.value)
        assert str(broker.port) in message
        assert "last lines of" in message
        assert not broker.is_running()
    finally:
        holder.close()
        broker.stop()
