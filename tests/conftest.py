"""Shared fixtures: one real Kafka broker and one Snowflake emulator per test session.

Both start lazily (only when a test asks for them), on free ports, with their data in the
session's temporary directory, and are stopped at session end even when tests fail. A failed
start errors the asking tests with the service's log tail (``ServiceStartError``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.config import KafkaConnection, SnowflakeConfig
from cluster.local.kafka_broker import LocalKafka
from cluster.local.snowflake_emulator import LocalSnowflake
from cluster.settings import Settings, load_settings

TopicFactory = Callable[..., str]

# Ray picks the address it advertises by routing towards a public IP, i.e. the machine's
# external interface. Tests talk over loopback only: this makes every in-process ray.init and
# ray.cluster_utils.Cluster node use 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# ray.init() writes RAY_AUTH_MODE=token into os.environ when it is unset, which then leaks into
# every Ray started later in the session (the local head among them). Decide it once, here.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def eventray_settings() -> Settings:
    """Settings as the environment gives them (for the Kafka version and the jar cache)."""
    return load_settings()


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def kafka_broker(eventray_settings: Settings, services_dir: Path) -> Iterator[LocalKafka]:
    """A running single-node KRaft broker on free ports (session-wide; never kill it)."""
    broker = LocalKafka(
        services_dir / "kafka", port=0, controller_port=0,
        version=eventray_settings.local.kafka_version,
        cache_dir=eventray_settings.cache_path(), heap="512m",
    )
    try:
        broker.start(timeout=90)
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_connection(kafka_broker: LocalKafka) -> KafkaConnection:
    return kafka_broker.connection()


@pytest.fixture(scope="session")
def snowflake_server(services_dir: Path) -> Iterator[LocalSnowflake]:
    """A running fakesnow server on a free port, databases persisted in the session dir."""
    server = LocalSnowflake(services_dir / "snowflake", port=0)
    try:
        server.start(timeout=90)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def snowflake_config(snowflake_server: LocalSnowflake) -> SnowflakeConfig:
    """A fresh database for the session (schema PUBLIC) on the emulator, created."""
    database = f"TEST_{uuid.uuid4().hex[:8].upper()}"
    snowflake_server.ensure_database(database, "PUBLIC")
    return snowflake_server.snowflake_config(database=database, schema="PUBLIC")


@pytest.fixture
def topic_factory(kafka_connection: KafkaConnection) -> Iterator[TopicFactory]:
    """``topic_factory(partitions=4, prefix="t", config=None) -> name``: a fresh topic on the
    session broker, its partitions all led before it returns; deleted after the test."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(kafka_connection.client_config())
    created: list[str] = []

    def create(partitions: int = 4, prefix: str = "t",
               config: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        futures = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])
        for future in futures.values():
            future.result(timeout=30)
        created.append(name)
        _wait_for_leaders(admin, name, partitions)
        return name

    yield create
    if created:
        for future in admin.delete_topics(created).values():
            future.result(timeout=30)


def _wait_for_leaders(admin: Any, topic: str, partitions: int, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(topic=topic, timeout=5)
        parts = metadata.topics[topic].partitions
        if len(parts) == partitions and all(p.leader >= 0 for p in parts.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic}: partitions without a leader after {timeout}s")
        time.sleep(0.1)
