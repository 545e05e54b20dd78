"""End to end, exactly once: gateway -> Kafka -> partition consumers (Ray) -> Snowflake emulator.

Real broker, real Ray, the real Snowflake connector against the emulator. Helpers shared with
the fault and node-failure tests live in ``pipeline_helpers``.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from confluent_kafka import Producer
from pipeline_helpers import (
    assert_exactly_once,
    landed,
    pipeline_settings,
    post_events,
    ray_runtime_env,
    wait_for,
    wait_until_drained,
    workload,
)

from actors.config import KafkaConnection, SnowflakeConfig
from actors.contract import EventCodec
from actors.kafka_admin import committed_group_offsets, end_offsets
from cluster.local.processes import free_port
from cluster.settings import Settings
from cluster.supervisor import get_status, start_pipeline, stop_pipeline

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ray_session() -> Iterator[str]:
    """A private Ray instance (never another helper's cluster); yields its dashboard URL."""
    import ray

    context = ray.init(address="local", num_cpus=8, include_dashboard=True,
                       dashboard_host="127.0.0.1", dashboard_port=free_port(),
                       namespace="eventray-tests", runtime_env=ray_runtime_env(),
                       log_to_driver=False)
    try:
        yield f"http://{context.dashboard_url}"
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def settings(ray_session: str, kafka_connection: KafkaConnection,
             snowflake_config: SnowflakeConfig) -> Iterator[Settings]:
    settings = pipeline_settings(kafka_connection, snowflake_config, partitions=4)
    start_pipeline(settings.pipeline_config())
    try:
        yield settings
    finally:
        stop_pipeline(settings.pipeline_config())


@pytest.fixture(scope="module")
def gateway(settings: Settings) -> Iterator[httpx.Client]:
    from gateway.server import serve_uvicorn

    with serve_uvicorn(settings.gateway_config()) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        yield client


# --------------------------------------------------------------------------- tests


def test_events_through_the_gateway_land_exactly_once(settings: Settings,
                                                      gateway: httpx.Client) -> None:
    work = workload(3000, seed=11)
    for batch in work.batches:
        post_events(gateway, batch)
    # A client retrying: every retry batch is posted again, and one whole batch twice more.
    for batch in work.retry_batches:
        post_events(gateway, batch)
    post_events(gateway, work.batches[0])
    post_events(gateway, work.batches[0])
    config = settings.pipeline_config()
    wait_until_drained(config)
    result = landed(settings)
    assert_exactly_once(result, work.valid_ids, work.invalid_ids)
    assert len(result.rows) == len(work.valid_ids) and len(result.dead) == len(work.invalid_ids)
    status = get_status(config)
    assert status is not None
    assert status.totals.duplicates >= len(work.batches[0]) * 2  # retries were dropped, counted
    # The consumer group's offsets follow the warehouse, so standard lag tools see no lag.
    ends = {p: end for p, end in end_offsets(config.kafka, config.topics.events).items() if end}
    wait_for("group offsets at the end", lambda: committed_group_offsets(
        config.kafka, config.consumer.group_id, config.topics.events) == ends, timeout=30)


def test_consumers_are_named_actors_and_the_report_shows_every_partition(
        settings: Settings, ray_session: str) -> None:
    from ray.util.state import list_actors

    from cluster.pipeline_status import report

    config = settings.pipeline_config()
    alive = list_actors(address=ray_session, filters=[("state", "=", "ALIVE")], limit=1000)
    names = {a.name for a in alive}
    expected = {f"consumer:{config.topics.events}:{p}" for p in range(4)}
    assert expected <= names
    assert {"sink:0", "sink:1", "eventray-supervisor"} <= names
    text = report(settings)
    lines = text.splitlines()
    for p in range(4):
        owner = f"consumer:{config.topics.events}:{p}"
        row = next(line for line in lines if owner in line)
        assert row.split()[0] == str(p) and "running" in row
    status = get_status(config)
    assert status is not None
    assert [p.partition for p in status.partitions] == [0, 1, 2, 3]
    assert all(p.lag is not None and p.node_id for p in status.partitions)
    assert "LAG" in lines[1] and "OWNER" in lines[1]


def test_added_partitions_get_a_consumer_and_a_dead_letter_partition(
        settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient, NewPartitions

    from actors.kafka_admin import partition_count

    config = settings.pipeline_config()
    admin = AdminClient(config.kafka.client_config())
    for future in admin.create_partitions([NewPartitions(config.topics.events, 5)]).values():
        future.result(timeout=30)
    work = workload(200, seed=5)
    events = [e for b in work.batches for e in b]
    codec = EventCodec()
    producer = Producer({**config.kafka.client_config(), "acks": "all"})
    for event in events:  # all onto the new partition, whatever their key
        producer.produce(config.topics.events, key=event.account_id.encode(),
                         value=codec.encode(event), partition=4)
    assert producer.flush(30) == 0

    def consumed() -> bool:
        status = get_status(config)
        return status is not None and any(p.partition == 4 and p.state == "running"
                                          for p in status.partitions)
    wait_for("a consumer for partition 4", consumed, timeout=60)
    assert partition_count(config.kafka, config.topics.dead_letter) == 5
    wait_until_drained(config)
    result = landed(settings)
    new_rows = {(a, e) for a, e, p, _ in result.rows if p == 4}
    new_dead = {(a, e) for a, e, p, _ in result.dead if p == 4}
    assert new_rows == work.valid_ids and new_dead == work.invalid_ids
