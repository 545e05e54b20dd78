"""A replaced consumer life that is still alive stops for good and commits nothing more.

Real broker, emulator and Ray. Two live ``PartitionConsumer`` actors for the same partition,
each with its own sink (in two Ray namespaces, as when Ray recreates a consumer and its sink
elsewhere while the old ones run on behind a cut-off node): the newer takes the partition, the
older is fenced at its next write or dead-letter transaction and stops for good, without
fencing the newer one's dead-letter producer back. Every event lands exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import ray
from pipeline_helpers import (
    assert_exactly_once,
    landed,
    local_ray_session,
    pipeline_settings,
    produce_events,
    produce_raw,
    wait_for,
    workload,
)

from actors.config import KafkaConnection, PipelineConfig, SnowflakeConfig
from actors.consumer import ConsumerStatus, partition_consumer_actor, sink_name
from actors.kafka_admin import end_offsets, ensure_topics
from actors.sink import SnowflakeSinkActor
from cluster.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    with local_ray_session(f"fencing-{uuid.uuid4().hex[:6]}"):
        yield


@pytest.fixture
def settings(ray_session: None, kafka_connection: KafkaConnection,
             snowflake_config: SnowflakeConfig) -> Settings:
    settings = pipeline_settings(kafka_connection, snowflake_config, partitions=1,
                                 pool_size=1, batch_max_events=100)
    config = settings.pipeline_config()
    ensure_topics(config.kafka, config.topics)
    return settings


def start_life(config: PipelineConfig, name: str) -> tuple[Any, Any]:
    """A sink and a consumer of partition 0 in ``config.namespace`` (a life of its own)."""
    sink = SnowflakeSinkActor.options(name=sink_name(0), namespace=config.namespace,
                                      num_cpus=0.1).remote(config.snowflake, config.sink, 0)
    ray.get(sink.ensure_tables.remote())
    consumer = partition_consumer_actor().options(
        name=name, namespace=config.namespace, num_cpus=0.1, max_concurrency=4,
    ).remote(config, 0)
    return sink, consumer


def status(consumer: Any) -> ConsumerStatus:
    answer: ConsumerStatus = ray.get(consumer.status.remote(), timeout=30)
    return answer


def test_a_replaced_consumer_that_is_still_alive_stops_for_good(settings: Settings) -> None:
    old_config = settings.pipeline_config()
    new_config = msgspec.structs.replace(old_config, namespace=f"{old_config.namespace}-new")
    topic = old_config.topics.events
    work = workload(3000, seed=41)
    garbage = [(f"acct-raw{n}".encode(), f"garbage-{n}".encode()) for n in range(20)]
    invalid = work.invalid_ids | {(k.decode(), v.decode()) for k, v in garbage}
    half = len(work.batches) // 2
    actors: list[Any] = []
    try:
        old_sink, old = start_life(old_config, "consumer-old")
        actors += [old_sink, old]
        produce_events(old_config.kafka, topic, [e for b in work.batches[:half] for e in b])
        produce_raw(old_config.kafka, topic, garbage[:10])
        wait_for("the old consumer to write and dead-letter",
                 lambda: (s := status(old)).rows_written > 0 and s.dead_lettered > 0,
                 timeout=120, interval=0.1)
        old_epoch = status(old).epoch

        new_sink, new = start_life(new_config, "consumer-new")
        actors += [new_sink, new]
        wait_for("the new consumer to run", lambda: status(new).running, timeout=120)
        # Both consume what comes next: the old one is fenced at its next write or
        # dead-letter transaction.
        produce_events(old_config.kafka, topic, [e for b in work.batches[half:] for e in b])
        produce_raw(old_config.kafka, topic, garbage[10:])
        produce_events(old_config.kafka, topic, [e for b in work.retry_batches for e in b])
        end = end_offsets(old_config.kafka, topic)[0]
        wait_for("the new consumer to drain the partition",
                 lambda: status(new).committed_offset == end, timeout=240)
        wait_for("the old consumer to stop", lambda: status(old).fenced, timeout=60)

        old_status, new_status = status(old), status(new)
        assert not old_status.running
        assert old_status.last_error is not None and "FencedError" in old_status.last_error
        assert new_status.epoch is not None and old_epoch is not None
        assert new_status.epoch > old_epoch
        # The new owner never had to restart: its dead-letter producer was not fenced back.
        assert new_status.running and not new_status.fenced
        assert (new_status.sessions, new_status.last_error) == (1, None)
        assert_exactly_once(landed(settings), work.valid_ids, invalid)
        # Fenced for good: more records do not wake the old one.
        produce_raw(old_config.kafka, topic, [(b"acct-late", b"garbage-late")])
        invalid.add(("acct-late", "garbage-late"))
        wait_for("the late record", lambda: status(new).committed_offset == end + 1,
                 timeout=120)
        assert status(old).sessions == old_status.sessions
        assert_exactly_once(landed(settings), work.valid_ids, invalid)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
