"""Exactly once across actor kills: a consumer and a sink are killed (and restarted by Ray)
in the middle of a run; the table and the dead-letter topic still hold each event exactly once.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
import ray
from confluent_kafka import KafkaException
from pipeline_helpers import (
    assert_exactly_once,
    landed,
    local_ray_session,
    pipeline_settings,
    produce_events,
    produce_raw,
    wait_for,
    wait_until_drained,
    workload,
)

from actors.config import KafkaConnection, SnowflakeConfig
from actors.consumer import consumer_name, sink_name
from actors.dead_letter import DeadLetter, DeadLetterProducer, read_recent_keys
from cluster.settings import Settings
from cluster.supervisor import get_status, start_pipeline, stop_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    with local_ray_session("eventray-fault-tests"):
        yield


@pytest.fixture(scope="module")
def settings(ray_session: None, kafka_connection: KafkaConnection,
             snowflake_config: SnowflakeConfig) -> Iterator[Settings]:
    # Small batches: many flushes, so the kills land between and inside them.
    settings = pipeline_settings(kafka_connection, snowflake_config, partitions=3,
                                 pool_size=2, batch_max_events=100)
    start_pipeline(settings.pipeline_config())
    try:
        yield settings
    finally:
        stop_pipeline(settings.pipeline_config())


def rows_written(settings: Settings) -> int:
    status = get_status(settings.pipeline_config())
    return 0 if status is None else sum(p.committed_offset or 0 for p in status.partitions)


def test_killing_a_consumer_and_a_sink_mid_run_keeps_exactly_once(settings: Settings) -> None:
    config = settings.pipeline_config()
    topic, namespace = config.topics.events, config.namespace
    work = workload(4000, seed=23)
    garbage = [(f"acct-raw{n}".encode(), f"garbage-{n}".encode()) for n in range(30)]
    invalid = work.invalid_ids | {(k.decode(), v.decode()) for k, v in garbage}
    half = len(work.batches) // 2

    produce_events(config.kafka, topic, [e for b in work.batches[:half] for e in b])
    produce_raw(config.kafka, topic, garbage[:15])
    wait_for("the first rows to be written", lambda: rows_written(settings) > 0, timeout=120,
             interval=0.05)

    # Keep producing while the kills happen.
    def second_half() -> None:
        produce_events(config.kafka, topic, [e for b in work.batches[half:] for e in b])
        produce_raw(config.kafka, topic, garbage[15:])
        produce_events(config.kafka, topic, [e for b in work.retry_batches for e in b])

    producer = threading.Thread(target=second_half)
    producer.start()
    consumer = ray.get_actor(consumer_name(topic, 1), namespace=namespace)
    sink = ray.get_actor(sink_name(0), namespace=namespace)  # partitions 0 and 2 write here
    ray.kill(consumer, no_restart=False)
    ray.kill(sink, no_restart=False)
    producer.join()
    # A second round once they are back: kill the restarted consumer of partition 0 too.
    wait_for("the sink to be back", lambda: _answers(sink), timeout=120)
    ray.kill(ray.get_actor(consumer_name(topic, 0), namespace=namespace), no_restart=False)

    wait_until_drained(config)
    result = landed(settings)
    assert_exactly_once(result, work.valid_ids, invalid)
    status = get_status(config)
    assert status is not None and all(p.state == "running" for p in status.partitions)


def _answers(handle: object) -> bool:
    try:
        ray.get(handle.ping.remote(), timeout=5)  # type: ignore[attr-defined]
    except ray.exceptions.RayError:
        return False
    return True


def test_a_zombie_dead_letter_transaction_is_aborted_and_nothing_is_dead_lettered_twice(
        kafka_connection: KafkaConnection, topic_factory: Callable[..., str]) -> None:
    source = f"src-{uuid.uuid4().hex[:8]}"
    dlq = topic_factory(partitions=2, prefix="dlq")

    def letters(offsets: range) -> list[DeadLetter]:
        return [DeadLetter(source_offset=o, key=b"acct-1",
                           value=f'{{"account_id":"acct-1","event_id":"e-{o}"}}'.encode(),
                           reason="unknown_currency: XYZ") for o in offsets]

    first = DeadLetterProducer(kafka_connection, dlq, source, 1)
    assert first.start(floor=0).watermark == -1
    assert first.publish(letters(range(5))) == 5
    # The "zombie": its next transaction is produced but never committed (it hangs, then dies).
    first._producer.begin_transaction()
    for letter in letters(range(5, 8)):
        first._produce(letter)
    first._producer.flush(10)

    successor = DeadLetterProducer(kafka_connection, dlq, source, 1)
    recovered = successor.start(floor=2)  # fences the zombie and aborts its transaction
    assert recovered.watermark == 4 and recovered.offsets == frozenset({2, 3, 4})
    assert successor.publish(letters(range(3, 9))) == 4  # 5..8; 3 and 4 are there already
    with pytest.raises(KafkaException):
        first._producer.commit_transaction(10)  # fenced

    again = DeadLetterProducer(kafka_connection, dlq, source, 1)
    assert again.start(floor=0).offsets == frozenset(range(9))
    assert sorted((k.offset, k.key, k.written)
                  for k in read_recent_keys(kafka_connection, dlq, 1, since_ms=0)) == [
        (o, ("acct-1", f"e-{o}"), False) for o in range(9)]
    for producer in (successor, again):
        producer.close()
