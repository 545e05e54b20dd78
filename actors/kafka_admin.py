"""Kafka administration the pipeline needs: topics, partition counts, end and group offsets.

Every call builds a short-lived client from a ``KafkaConnection`` (clients are never kept
across calls or pickled) and turns librdkafka failures into ``KafkaDeliveryError`` with the
error code.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from actors.config import KafkaConnection, TopicsConfig
from actors.durability import TopicDurability
from actors.exceptions import KafkaDeliveryError

log = logging.getLogger(__name__)

_TIMEOUT_S: Final = 15.0
# The group.id of the short-lived consumer that reads end offsets (never joined or committed;
# a KafkaUser's ACLs name it: cluster/k8s/kafka-user.yaml).
ADMIN_OFFSETS_GROUP: Final = "eventray-admin-offsets"


def _admin(conn: KafkaConnection) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient(conn.client_config())


def _error(message: str, exc: BaseException) -> KafkaDeliveryError:
    """Wrap a confluent-kafka exception, keeping librdkafka's code when it has one."""
    from confluent_kafka import KafkaException

    if isinstance(exc, KafkaException) and exc.args:
        err = exc.args[0]
        return KafkaDeliveryError(f"{message}: {err.str()}", code=err.code(),
                                  retriable=err.retriable())
    return KafkaDeliveryError(f"{message}: {exc}")


def partition_counts(conn: KafkaConnection, topics: list[str]) -> dict[str, int]:
    """Partition count per existing topic (topics that do not exist are left out)."""
    from confluent_kafka import KafkaException

    try:
        metadata = _admin(conn).list_topics(timeout=_TIMEOUT_S)
    except KafkaException as exc:
        raise _error("listing topics failed", exc) from exc
    counts: dict[str, int] = {}
    for name in topics:
        topic = metadata.topics.get(name)
        if topic is None or topic.error is not None:
            continue
        counts[name] = len(topic.partitions)
    return counts


def partition_count(conn: KafkaConnection, topic: str) -> int:
    """The partition count of ``topic``; raises ``KafkaDeliveryError`` if it does not exist."""
    counts = partition_counts(conn, [topic])
    if topic not in counts:
        raise KafkaDeliveryError(f"topic {topic} does not exist")
    return counts[topic]


def ensure_topics(conn: KafkaConnection, topics: TopicsConfig) -> None:
    """Create the events and dead-letter topics if missing; grow the DLQ to match the source.

    An existing events topic keeps its partition count (it may have been grown by an operator);
    the dead-letter topic always gets at least as many partitions, since partition p
    dead-letters to partition p.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.cimpl import NewPartitions, NewTopic

    admin = _admin(conn)
    existing = partition_counts(conn, [topics.events, topics.dead_letter])
    missing = [name for name in (topics.events, topics.dead_letter) if name not in existing]
    if missing:
        source = existing.get(topics.events, topics.partitions)
        new = [NewTopic(name, num_partitions=source if name == topics.dead_letter
                        else topics.partitions, replication_factor=topics.replication_factor,
                        config={"min.insync.replicas": str(topics.min_insync_replicas)})
               for name in missing]
        for name, future in admin.create_topics(new, operation_timeout=_TIMEOUT_S).items():
            try:
                future.result(timeout=_TIMEOUT_S)
                log.info("created topic=%s replication_factor=%d min_insync_replicas=%d", name,
                         topics.replication_factor, topics.min_insync_replicas)
            except KafkaException as exc:
                # Another process created it in between: that is what we wanted.
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise _error(
                        f"creating topic {name} failed (topics.replication_factor="
                        f"{topics.replication_factor} topics.min_insync_replicas="
                        f"{topics.min_insync_replicas})", exc) from exc
        existing = partition_counts(conn, [topics.events, topics.dead_letter])
    source = existing.get(topics.events, 0)
    dlq = existing.get(topics.dead_letter, 0)
    if dlq < source:
        futures = admin.create_partitions([NewPartitions(topics.dead_letter, source)],
                                          operation_timeout=_TIMEOUT_S)
        for name, future in futures.items():
            try:
                future.result(timeout=_TIMEOUT_S)
                log.info("grew topic=%s partitions=%d->%d", name, dlq, source)
            except KafkaException as exc:
                # Raced with another grower: fine if the count now matches.
                if partition_counts(conn, [name]).get(name, 0) < source:
                    raise _error(f"growing topic {name} failed", exc) from exc


def topic_durability(conn: KafkaConnection, topics: list[str]) -> list[TopicDurability]:
    """Replication factor (the fewest replicas of any partition) and effective
    ``min.insync.replicas`` of each existing topic among ``topics`` (missing ones left out)."""
    from confluent_kafka import KafkaException

    # The public name; the package's __init__ imports it without re-exporting it for mypy.
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

    admin = _admin(conn)
    try:
        metadata = admin.list_topics(timeout=_TIMEOUT_S)
    except KafkaException as exc:
        raise _error("listing topics failed", exc) from exc
    replicas = {name: min((len(p.replicas) for p in topic.partitions.values()), default=0)
                for name in topics
                if (topic := metadata.topics.get(name)) is not None and topic.error is None}
    if not replicas:
        return []
    resources = [ConfigResource("topic", name) for name in replicas]
    found: list[TopicDurability] = []
    for resource, future in admin.describe_configs(resources,
                                                   request_timeout=_TIMEOUT_S).items():
        try:
            entries = future.result(timeout=_TIMEOUT_S)
        except KafkaException as exc:
            raise _error(f"describing topic {resource.name} failed", exc) from exc
        found.append(TopicDurability(
            topic=resource.name, replication_factor=replicas[resource.name],
            min_insync_replicas=int(entries["min.insync.replicas"].value)))
    return sorted(found, key=lambda t: topics.index(t.topic))


def end_offsets(conn: KafkaConnection, topic: str) -> dict[int, int]:
    """The high watermark (next offset to be written) of each partition of ``topic``."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    count = partition_count(conn, topic)
    conf = conn.client_config()
    conf.update({"group.id": ADMIN_OFFSETS_GROUP, "enable.auto.commit": False})
    consumer = Consumer(conf)
    try:
        return {
            p: int(consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                  timeout=_TIMEOUT_S)[1])
            for p in range(count)
        }
    except KafkaException as exc:
        raise _error(f"reading end offsets of {topic} failed", exc) from exc
    finally:
        consumer.close()


def committed_group_offsets(conn: KafkaConnection, group_id: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offsets for ``topic`` (partitions without one left out)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    count = partition_count(conn, topic)
    conf = conn.client_config()
    conf.update({"group.id": group_id, "enable.auto.commit": False})
    consumer = Consumer(conf)
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in range(count)],
                                       timeout=_TIMEOUT_S)
    except KafkaException as exc:
        raise _error(f"reading committed offsets of group {group_id} failed", exc) from exc
    finally:
        consumer.close()
    return {tp.partition: int(tp.offset) for tp in committed if tp.offset >= 0}


def grow_topic(conn: KafkaConnection, topic: str, partitions: int) -> int:
    """Grow ``topic`` to ``partitions`` partitions online (Kafka never shrinks a topic); returns
    the count before. Records of an existing key may hash to another partition afterwards."""
    from confluent_kafka import KafkaException
    from confluent_kafka.cimpl import NewPartitions

    before = partition_count(conn, topic)
    if partitions <= before:
        raise KafkaDeliveryError(f"topic {topic} has {before} partitions; cannot grow it to "
                                 f"{partitions}")
    admin = _admin(conn)  # referenced until the futures resolve: a collected client fails them
    futures = admin.create_partitions([NewPartitions(topic, partitions)],
                                      operation_timeout=_TIMEOUT_S)
    for future in futures.values():
        try:
            future.result(timeout=_TIMEOUT_S)
        except KafkaException as exc:
            raise _error(f"growing topic {topic} to {partitions} partitions failed", exc) from exc
    log.info("grew topic=%s partitions=%d->%d", topic, before, partitions)
    return before
