"""A consumer rebuilding a large retry window does not hold up the other partitions of its sink
(issue 12, item 5).

Partitions 0 ("A") and 1 ("B") write through one sink. A restarts with 200,000 rows in its
window, written by the sink's own transaction; it reads them itself, in pages on its own
warehouse session. Once A's rebuild has begun, B gets a batch, and B's commit through the
shared sink is seen while A has read some of its rows and not all: B is served in the middle
of A's read. Before, A's rows came through the sink in one call (``recent_keys``): B's write
waited behind all of it, and A had no rows or all of them, never some, when B committed.

Real broker, emulator and Ray; an order of events is asserted, no time.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import ray
from pipeline_helpers import local_ray_session, pipeline_settings, wait_for

from actors.config import KafkaConnection, PipelineConfig, SnowflakeConfig
from actors.consumer import ConsumerStatus, consumer_name, partition_consumer_actor, sink_name
from actors.contract import PaymentBody, PaymentCaptured
from actors.kafka_admin import ensure_topics
from actors.recovery import RecoveryStatus
from actors.sink import SnowflakeSinkActor
from cluster.bench.recovery import Layout, fill_records, fill_rows, produce_events

pytestmark = pytest.mark.integration

KEYS = 200_000
A, B = 0, 1


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    with local_ray_session(f"recovery-{uuid.uuid4().hex[:6]}"):
        yield


def start_consumer(config: PipelineConfig, partition: int) -> Any:
    return partition_consumer_actor().options(
        name=consumer_name(config.topics.events, partition), namespace=config.namespace,
        num_cpus=0.1, max_concurrency=4).remote(config, partition)


def status(consumer: Any) -> ConsumerStatus:
    answer: ConsumerStatus = ray.get(consumer.status.remote(), timeout=60)
    return answer


def event(event_id: str, account: str = "acct-b") -> PaymentCaptured:
    return PaymentCaptured(
        event_id=event_id, account_id=account, occurred_at=datetime.now(UTC),
        body=PaymentBody(amount_minor=10, currency="EUR", merchant_id="m-1"))


def test_a_partition_rebuilding_a_large_window_does_not_hold_up_its_sink(
        ray_session: None, kafka_connection: KafkaConnection,
        snowflake_config: SnowflakeConfig) -> None:
    # Small pages: A's read is many statements, each a moment the shared warehouse serves B.
    settings = pipeline_settings(kafka_connection, snowflake_config, partitions=2, pool_size=1,
                                 extra={"pipeline.consumer.window_page_rows": 1_000})
    config = settings.pipeline_config()
    topic = config.topics.events
    ensure_topics(config.kafka, config.topics)
    layout = Layout(rows=KEYS, dead_letters=0, now_ms=int(time.time() * 1000))
    fill_records(config.kafka, topic, A, layout.end)
    fill_rows(config.snowflake, config, topic, A, layout)
    oldest = layout.key(0)  # a client retry of A's oldest row: a duplicate only if all loaded
    now_ms = int(time.time() * 1000)
    produce_events(config.kafka, topic, A, [event(oldest[1], oldest[0]), event("a-new")],
                   now_ms)

    sink = SnowflakeSinkActor.options(name=sink_name(0), namespace=config.namespace,
                                      num_cpus=0.1).remote(config.snowflake, config.sink, 0)
    ray.get(sink.ensure_tables.remote(topic, 2))
    other = start_consumer(config, B)
    produce_events(config.kafka, topic, B, [event("b-1")], now_ms)
    wait_for("B's first batch", lambda: status(other).committed_offset == 1, interval=0.05)

    restarting = start_consumer(config, A)

    wait_for("A rebuilding its window", lambda: status(restarting).recovery is not None,
             interval=0.02)
    produce_events(config.kafka, topic, B, [event("b-2"), event("b-3")], now_ms)
    wait_for("B's next batch", lambda: status(other).committed_offset == 3, interval=0.02)
    during: RecoveryStatus | None = status(restarting).recovery
    assert during is not None
    assert not during.finished and 0 < during.rows_read < KEYS, during  # mid-read

    wait_for("A's first batch", lambda: (status(restarting).committed_offset or 0) > KEYS,
             interval=0.1)
    done = status(restarting)
    assert done.recovery is not None and done.recovery.window_keys == KEYS
    assert (done.rows_written, done.duplicates) == (1, 1)  # the retry of the oldest dropped
