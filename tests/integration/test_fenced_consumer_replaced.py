"""The supervisor replaces a consumer that was fenced, on real Ray, the broker and the emulator.

Two lives may take a partition at the same moment, and the one that wins need not be the one
Ray keeps: when the winner is a zombie that then dies, the named consumer has stopped for good
(status ``fenced``) and nothing writes the partition. Here another life takes the partition
through the sink, as the zombie would, and never writes: the supervisor must kill the fenced
consumer and create a new one, whose new epoch fences whatever remains, and every event must
still land exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from pipeline_helpers import (
    assert_exactly_once,
    landed,
    local_ray_session,
    pipeline_settings,
    produce_events,
    wait_for,
    wait_until_drained,
    workload,
)

from actors.config import KafkaConnection, SnowflakeConfig
from actors.consumer import ConsumerStatus, consumer_name, sink_name
from cluster.settings import Settings
from cluster.supervisor import get_status, start_pipeline, stop_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    with local_ray_session(f"fenced-{uuid.uuid4().hex[:6]}"):
        yield


@pytest.fixture
def pipeline(ray_session: None, kafka_connection: KafkaConnection,
             snowflake_config: SnowflakeConfig) -> Iterator[Settings]:
    settings = pipeline_settings(kafka_connection, snowflake_config, partitions=1,
                                 pool_size=1, batch_max_events=100)
    start_pipeline(settings.pipeline_config())
    try:
        yield settings
    finally:
        stop_pipeline(settings.pipeline_config())


def named_status(name: str, namespace: str) -> ConsumerStatus | None:
    """The named consumer's status; None while it is being replaced."""
    try:
        handle = ray.get_actor(name, namespace=namespace)
        answer: ConsumerStatus = ray.get(handle.status.remote(), timeout=10)
    except (ValueError, ray.exceptions.RayError):
        return None
    return answer


def test_a_fenced_consumer_is_replaced_and_its_partition_resumes(pipeline: Settings) -> None:
    config = pipeline.pipeline_config()
    topic, namespace = config.topics.events, config.namespace
    name = consumer_name(topic, 0)
    work = workload(2000, seed=53)
    half = len(work.batches) // 2
    produce_events(config.kafka, topic, [e for b in work.batches[:half] for e in b])
    wait_until_drained(config)
    first = named_status(name, namespace)
    assert first is not None and first.epoch is not None and not first.fenced
    first_actor = ray.get_actor(name, namespace=namespace)._actor_id.hex()

    # Another life takes the partition (it saw the consumer's epoch) and never writes.
    sink: Any = ray.get_actor(sink_name(0), namespace=namespace)
    intruder: int = ray.get(sink.take_ownership.remote(topic, 0, "zombie-life", first.epoch),
                            timeout=60)
    assert intruder == first.epoch + 1

    # The consumer's next write is refused: it stops for good; the supervisor replaces it.
    produce_events(config.kafka, topic, [e for b in work.batches[half:] for e in b])
    produce_events(config.kafka, topic, [e for b in work.retry_batches for e in b])

    def replaced() -> bool:
        status = named_status(name, namespace)
        return (status is not None and status.running and status.epoch is not None
                and status.epoch > intruder)

    wait_for("the supervisor to replace the fenced consumer", replaced, timeout=90)
    assert ray.get_actor(name, namespace=namespace)._actor_id.hex() != first_actor
    wait_until_drained(config)
    assert_exactly_once(landed(pipeline), work.valid_ids, work.invalid_ids)
    status = get_status(config)
    assert status is not None
    assert [p.state for p in status.partitions] == ["running"]
    after = named_status(name, namespace)
    assert after is not None and not after.fenced and after.last_error is None
