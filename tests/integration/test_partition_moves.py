"""Retries caught whichever partition they land on, after partitions were added online
(issue 12, item 2).

Real broker, emulator and Ray: an event is written (and another dead-lettered) on partition 0
of 2; the topic grows to 3 partitions while the pipeline runs; the client's retries of both,
keyed by account as the gateway keys them, land on partition 2, whose retry window never saw
the originals, and are dropped as duplicates; a new event of the same account is written there.
"""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer
from pipeline_helpers import (
    assert_exactly_once,
    landed,
    pipeline_settings,
    produce_events,
    ray_runtime_env,
    wait_for,
    wait_until_drained,
)

from actors.config import KafkaConnection, SnowflakeConfig
from actors.contract import Event, PaymentBody, PaymentCaptured
from actors.kafka_admin import end_offsets
from actors.murmur2 import partition_of
from cluster.settings import Settings
from cluster.supervisor import get_status, start_pipeline, stop_pipeline

pytestmark = pytest.mark.integration


def test_partition_of_is_librdkafkas_murmur2_random(kafka_connection: KafkaConnection,
                                                     topic_factory) -> None:  # type: ignore[no-untyped-def]
    topic = topic_factory(partitions=7, prefix="murmur")
    rng = random.Random(7)
    keys = [b"", b"a", b"acct-00001"] + [
        "".join(rng.choices(string.printable, k=rng.randrange(1, 40))).encode()
        for _ in range(300)] + [rng.randbytes(rng.randrange(1, 30)) for _ in range(200)]
    producer = Producer({**kafka_connection.client_config(), "partitioner": "murmur2_random"})
    landed_on: dict[bytes, int] = {}
    for key in keys:
        producer.produce(topic, key=key, value=b"x",
                         on_delivery=lambda err, msg, k=key: landed_on.update(
                             {k: -1 if err else msg.partition()}))
    assert producer.flush(30) == 0
    assert {k: partition_of(k, 7) for k in keys} == landed_on


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False,
             namespace=f"moves-{uuid.uuid4().hex[:6]}", runtime_env=ray_runtime_env(),
             log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def settings(ray_session: None, kafka_connection: KafkaConnection,
             snowflake_config: SnowflakeConfig) -> Iterator[Settings]:
    settings = pipeline_settings(kafka_connection, snowflake_config, partitions=2)
    start_pipeline(settings.pipeline_config())
    try:
        yield settings
    finally:
        stop_pipeline(settings.pipeline_config())


def account_moving(old: tuple[int, int], new: tuple[int, int], tag: str) -> str:
    """An account on partition ``old[0]`` of ``old[1]`` and ``new[0]`` of ``new[1]``."""
    return next(a for a in (f"acct-{tag}-{i}" for i in range(100_000))
                if partition_of(a.encode(), old[1]) == old[0]
                and partition_of(a.encode(), new[1]) == new[0])


def payment(account: str, event_id: str, currency: str = "EUR") -> Event:
    return PaymentCaptured(event_id=event_id, account_id=account,
                           occurred_at=datetime.now(UTC) - timedelta(minutes=1),
                           body=PaymentBody(amount_minor=500, currency=currency,
                                            merchant_id="m-1"))


def test_retries_after_partitions_were_added_are_dropped_on_the_new_partition(
        settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient, NewPartitions

    config = settings.pipeline_config()
    tag = uuid.uuid4().hex[:6]
    moving = account_moving((0, 2), (2, 3), tag)
    staying = account_moving((1, 2), (1, 3), tag)
    written, invalid, other = (payment(moving, f"e-{tag}-1"),
                               payment(moving, f"e-{tag}-2", currency="XYZ"),
                               payment(staying, f"e-{tag}-3"))
    produce_events(config.kafka, config.topics.events, [written, invalid, other])
    wait_until_drained(config)
    first = landed(settings)
    assert len(first.rows) == 2 and len(first.dead) == 1

    admin = AdminClient(config.kafka.client_config())
    for future in admin.create_partitions([NewPartitions(config.topics.events, 3)]).values():
        future.result(timeout=30)

    def running() -> bool:
        status = get_status(config)
        return status is not None and any(p.partition == 2 and p.state == "running"
                                          for p in status.partitions)
    wait_for("a consumer for partition 2", running, timeout=90)

    # The client retries both (a new producer routes by 3 partitions), and sends a new event.
    new = payment(moving, f"e-{tag}-4")
    produce_events(config.kafka, config.topics.events, [written, invalid, new])
    assert end_offsets(config.kafka, config.topics.events)[2] == 3  # all on partition 2
    wait_until_drained(config)

    result = landed(settings)
    assert_exactly_once(result, {(moving, written.event_id), (staying, other.event_id),
                                 (moving, new.event_id)}, {(moving, invalid.event_id)})
    assert {(e, p) for _, e, p, _ in result.rows} == {
        (written.event_id, 0), (other.event_id, 1), (new.event_id, 2)}
    status = get_status(config)
    assert status is not None
    assert {p.partition: p.duplicates for p in status.partitions}[2] == 2

    # A producer that has not refreshed its metadata still routes by 2 partitions: an invalid
    # and a valid event of the moved account reach partition 0 after its mark, and their
    # retries (a refreshed producer) partition 2. One partition decides each event. Before
    # partition 0 handed such records on, partition 2 had loaded 0's dead letters once per
    # count and dead-lettered the retry a second time.
    late_invalid = payment(moving, f"e-{tag}-5", currency="XYZ")
    late_valid = payment(moving, f"e-{tag}-6")
    produce_events(config.kafka, config.topics.events, [late_invalid, late_valid], partition=0)
    wait_until_drained(config)
    produce_events(config.kafka, config.topics.events, [late_invalid, late_valid])
    wait_until_drained(config)
    result = landed(settings)
    assert_exactly_once(result, {(moving, written.event_id), (staying, other.event_id),
                                 (moving, new.event_id), (moving, late_valid.event_id)},
                        {(moving, invalid.event_id), (moving, late_invalid.event_id)})
    assert {(e, p) for _, e, p, _ in result.rows} >= {(late_valid.event_id, 2)}
