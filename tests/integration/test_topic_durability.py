"""Durability against the real single broker: a topic with one replica is refused at pipeline and
gateway start unless the settings say local; topics are created with min.insync.replicas."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import msgspec
import pytest
from confluent_kafka.admin import AdminClient

from actors.config import KafkaConnection, PipelineConfig, SnowflakeConfig, TopicsConfig
from actors.durability import TopicDurability, check_durability
from actors.exceptions import DurabilityError, KafkaDeliveryError
from actors.kafka_admin import ensure_topics, topic_durability
from cluster.supervisor import start_pipeline
from gateway.config import GatewayConfig
from gateway.server import serve_uvicorn

pytestmark = pytest.mark.integration


def test_a_one_replica_topic_is_refused_unless_the_settings_say_local(
        kafka_connection: KafkaConnection, topic_factory: Callable[..., str]) -> None:
    events = topic_factory(partitions=2, prefix="dur")
    dlq = topic_factory(partitions=2, prefix="dur-dlq", config={"min.insync.replicas": "2"})
    assert topic_durability(kafka_connection, [events, "no-such-topic", dlq]) == [
        TopicDurability(events, replication_factor=1, min_insync_replicas=1),  # broker default
        TopicDurability(dlq, replication_factor=1, min_insync_replicas=2),     # its own
    ]
    replicated = TopicsConfig(events=events, dead_letter=dlq)
    with pytest.raises(DurabilityError) as raised:
        check_durability(kafka_connection, replicated, [events, dlq])
    message = str(raised.value)
    assert (f"topic {events} (replication factor 1, min.insync.replicas 1): replication "
            "factor 1 keeps one copy and min.insync.replicas 1 lets the leader alone "
            "acknowledge") in message
    assert (f"topic {dlq} (replication factor 1, min.insync.replicas 2): replication factor 1 "
            "keeps one copy and min.insync.replicas 2 exceeds its 1 replicas") in message
    assert 'set topics.durability = "local"' in message
    # Topics that do not exist yet are left to whoever creates them.
    check_durability(kafka_connection, replicated, ["no-such-topic"])
    check_durability(kafka_connection, TopicsConfig(events=events, dead_letter=dlq,
                                                    durability="local"), [events, dlq])


def test_the_pipeline_refuses_to_start_on_a_one_replica_topic(
        kafka_connection: KafkaConnection, snowflake_config: SnowflakeConfig,
        topic_factory: Callable[..., str]) -> None:
    events = topic_factory(partitions=2, prefix="dur-pipe")
    config = PipelineConfig(kafka=kafka_connection, snowflake=snowflake_config,
                            topics=TopicsConfig(events=events, dead_letter=f"{events}.dlq"),
                            namespace=f"dur-{uuid.uuid4().hex[:6]}")
    # Refused before any actor exists: start_pipeline checks before it reaches Ray.
    with pytest.raises(DurabilityError, match=f"topic {events} \\(replication factor 1"):
        start_pipeline(config)


def test_the_gateway_refuses_to_start_on_a_one_replica_topic(
        kafka_connection: KafkaConnection, topic_factory: Callable[..., str]) -> None:
    events = topic_factory(partitions=2, prefix="dur-gw")
    config = GatewayConfig(port=0, kafka=kafka_connection, topics=TopicsConfig(events=events))
    with pytest.raises(DurabilityError, match=f"topic {events} \\(replication factor 1"), \
            serve_uvicorn(config):
        pass
    local = msgspec.structs.replace(config, topics=TopicsConfig(events=events,
                                                                durability="local"))
    with serve_uvicorn(local) as url:
        assert url.startswith("http://")


def test_topics_are_created_with_the_settings_replication(
        kafka_connection: KafkaConnection) -> None:
    name = f"dur-created-{uuid.uuid4().hex[:8]}"
    single = TopicsConfig(events=name, dead_letter=f"{name}.dlq", partitions=2,
                          replication_factor=1, min_insync_replicas=1, durability="local")
    ensure_topics(kafka_connection, single)
    try:
        found = {t.topic: (t.replication_factor, t.min_insync_replicas)
                 for t in topic_durability(kafka_connection, [name, f"{name}.dlq"])}
        assert found == {name: (1, 1), f"{name}.dlq": (1, 1)}
    finally:
        admin = AdminClient(kafka_connection.client_config())
        for future in admin.delete_topics([name, f"{name}.dlq"]).values():
            future.result(timeout=30)
    # The production defaults need three brokers; one broker says so, naming the settings.
    other = f"dur-three-{uuid.uuid4().hex[:8]}"
    with pytest.raises(KafkaDeliveryError, match=re.escape(
            f"creating topic {other} failed (topics.replication_factor=3 "
            "topics.min_insync_replicas=2)")):
        ensure_topics(kafka_connection, TopicsConfig(events=other, dead_letter=f"{other}.dlq"))
