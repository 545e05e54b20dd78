"""Helpers shared by the pipeline integration tests: settings, producing, waiting, counting
what landed in the table and the dead-letter topic."""


from __future__ import annotations

import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import snowflake.connector
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from actors.config import KafkaConnection, PipelineConfig, SnowflakeConfig
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_CONTENT_TYPE,
    HEADER_DLQ_SOURCE_OFFSET,
    HEADER_DLQ_SOURCE_PARTITION,
    HEADER_REQUEST_ID,
    RECORD_CONTENT_TYPE,
    Event,
    EventCodec,
)
from actors.kafka_admin import end_offsets
from cluster.bench.workload import Workload, WorkloadSpec, generate
from cluster.local.processes import free_port
from cluster.settings import SINGLE_BROKER_TOPICS, Settings
from cluster.supervisor import get_status
from gateway.config import ServeConfig
from gateway.serve_app import serve_env

REPO = Path(__file__).resolve().parents[2]
Key = tuple[str, str]  # (account_id, event_id)




def ray_runtime_env() -> dict[str, Any]:
    """Workers import the project from the checkout, whatever their working directory."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def pipeline_settings(kafka: KafkaConnection, snowflake: SnowflakeConfig, *, partitions: int,
                      pool_size: int = 2, batch_max_events: int = 400,
                      extra: dict[str, Any] | None = None) -> Settings:
    """Settings for a pipeline of its own: fresh topics, tables and Ray namespace."""
    tag = uuid.uuid4().hex[:8]
    overrides: dict[str, Any] = {
        "kafka.bootstrap_servers": kafka.bootstrap_servers,
        "topics.events": f"pipe-{tag}",
        "topics.dead_letter": f"pipe-{tag}.dlq",
        "topics.partitions": partitions,
        **SINGLE_BROKER_TOPICS,  # the session's broker is one broker
        "snowflake.account": snowflake.account,
        "snowflake.user": snowflake.user,
        "snowflake.database": snowflake.database,
        "snowflake.schema": snowflake.schema,
        "snowflake.protocol": snowflake.protocol,
        "snowflake.events_table": f"EVENTS_{tag.upper()}",
        "snowflake.offsets_table": f"KAFKA_OFFSETS_{tag.upper()}",
        "ray.namespace": f"eventray-test-{tag}",
        "pipeline.consumer.batch_max_events": batch_max_events,
        "pipeline.consumer.batch_max_wait_s": 0.3,
        "pipeline.consumer.poll_timeout_s": 0.1,
        "pipeline.consumer.num_cpus": 0.1,
        "pipeline.sink.pool_size": pool_size,
        "pipeline.sink.num_cpus": 0.1,
        "pipeline.sink.retry_backoff_s": 0.2,
        "pipeline.reconcile_interval_s": 1.0,
        "gateway.port": 0,
    }
    if snowflake.host is not None:
        overrides["snowflake.host"] = snowflake.host
    if snowflake.port is not None:
        overrides["snowflake.port"] = snowflake.port
    overrides.update(extra or {})
    return Settings().with_overrides(overrides)


def local_stack_settings(state_dir: Path) -> Settings:
    """Settings for a local stack of a test's own (``eventray up``): its state in ``state_dir``,
    every port free, never the defaults (8265, 9092, 9093, 8089) a user's stack may hold."""
    from cluster.local.processes import free_port
    from cluster.settings import load_settings

    return load_settings(environ={}).with_overrides({
        "local.state_dir": str(state_dir),
        "local.kafka_port": 0,
        "local.kafka_controller_port": 0,
        "local.kafka_heap": "256m",
        "local.snowflake_port": 0,
        "local.cache_dir": str(load_settings().cache_path()),
        "ray.dashboard_port": free_port(),
        "ray.object_store_bytes": 150_000_000,
    })


def produce_events(conn: KafkaConnection, topic: str, events: Sequence[Event], *,
                   partition: int | None = None) -> None:
    """Produce as the gateway does (key, value and headers), acks=all, every record confirmed;
    to ``partition`` when given (a producer routing by a partition count it has not
    refreshed), else by the key."""
    codec = EventCodec()
    producer = Producer({**conn.client_config(), "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, "partitioner": "murmur2_random"})
    failures: list[Any] = []
    request_id = uuid.uuid4().hex.encode()
    accepted = str(time.time_ns() // 1_000_000).encode()
    for event in events:
        producer.produce(
            topic, key=event.account_id.encode(), value=codec.encode(event),
            **({} if partition is None else {"partition": partition}),
            headers=[(HEADER_CONTENT_TYPE, RECORD_CONTENT_TYPE.encode()),
                     (HEADER_REQUEST_ID, request_id), (HEADER_ACCEPTED_AT_MS, accepted)],
            on_delivery=lambda err, _msg: failures.append(err) if err is not None else None,
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert failures == []


def record_identity(key: bytes | None, value: bytes | None) -> Key:
    """(account, event id) of a record; for a record that breaks the contract, (key, value)."""
    try:
        decoded = msgspec.json.decode(value or b"")
        return str(decoded["account_id"]), str(decoded["event_id"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return (key or b"").decode(), (value or b"").decode()


def produce_raw(conn: KafkaConnection, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
    """Records that break the contract (key, value), as a foreign producer might write them."""
    producer = Producer({**conn.client_config(), "enable.idempotence": True, "acks": "all"})
    failures: list[Any] = []
    for key, value in records:
        producer.produce(topic, key=key, value=value,
                         on_delivery=lambda err, _m: failures.append(err) if err else None)
    assert producer.flush(30) == 0
    assert failures == []


def post_events(client: httpx.Client, events: Sequence[Event]) -> None:
    """POST a batch to the gateway; retried on 429/503 as a client would (same events)."""
    body = msgspec.json.encode(list(events))
    for _ in range(20):
        response = client.post("/v1/events/batch", content=body,
                               headers={"content-type": "application/json"})
        if response.status_code == 202:
            assert len(response.json()["results"]) == len(events)
            return
        assert response.status_code in (429, 503), response.text
        time.sleep(0.5)
    raise AssertionError("the gateway kept refusing a valid batch")


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 180.0,
             interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def wait_until_drained(config: PipelineConfig, timeout: float = 240.0) -> None:
    """Until the warehouse's committed offset equals Kafka's end offset on every partition."""
    ends = end_offsets(config.kafka, config.topics.events)

    def drained() -> bool:
        try:
            status = get_status(config)
        except Exception:
            return False  # the supervisor is restarting (a fault test), ask again
        if status is None:
            return False
        committed = {p.partition: p.committed_offset for p in status.partitions}
        return all(committed.get(p) == end for p, end in ends.items() if end > 0)

    wait_for(f"the pipeline to drain to {ends}", drained, timeout=timeout)


class Landed(msgspec.Struct, frozen=True):
    rows: list[tuple[str, str, int, int]]  # (account, event id, partition, offset)
    dead: list[tuple[str, str, int, int]]  # (account, event id, source partition, offset)


def warehouse_rows(config: SnowflakeConfig, table: str, topic: str) -> list[tuple[str, str,
                                                                                  int, int]]:
    conn = snowflake.connector.connect(**config.connect_kwargs())
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT ACCOUNT_ID, EVENT_ID, KAFKA_PARTITION, KAFKA_OFFSET FROM {table} "
                       "WHERE KAFKA_TOPIC = %s", (topic,))
        return [(str(a), str(e), int(p), int(o)) for a, e, p, o in cursor.fetchall()]
    finally:
        conn.close()


def dead_letters(conn: KafkaConnection, dlq_topic: str) -> list[tuple[str, str, int, int]]:
    """Every committed record of the dead-letter topic (read_committed, to each partition's end)."""
    consumer = Consumer({**conn.client_config(), "group.id": f"verify-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True})
    try:
        parts = consumer.list_topics(dlq_topic, timeout=10).topics[dlq_topic].partitions
        consumer.assign([TopicPartition(dlq_topic, p, 0) for p in parts])
        remaining = set(parts)
        found: list[tuple[str, str, int, int]] = []
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is not None:
                    assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                    remaining.discard(msg.partition())
                    continue
                headers = dict(msg.headers() or [])
                source_partition = int(headers[HEADER_DLQ_SOURCE_PARTITION])
                assert source_partition == msg.partition()  # p -> p
                account, event_id = record_identity(msg.key(), msg.value())
                found.append((account, event_id, source_partition,
                              int(headers[HEADER_DLQ_SOURCE_OFFSET])))
        assert not remaining, f"dead-letter partitions not read to the end: {remaining}"
        return found
    finally:
        consumer.close()


def landed(settings: Settings) -> Landed:
    config = settings.pipeline_config()
    return Landed(
        rows=warehouse_rows(config.snowflake, config.snowflake.events_table,
                            config.topics.events),
        dead=dead_letters(config.kafka, config.topics.dead_letter),
    )


def assert_exactly_once(result: Landed, valid: set[Key], invalid: set[Key]) -> None:
    """The table holds exactly the valid events, each once; the DLQ exactly the invalid ones."""
    row_keys = Counter((a, e) for a, e, _, _ in result.rows)
    assert set(row_keys) == valid, (
        f"missing={len(valid - set(row_keys))} unexpected={len(set(row_keys) - valid)}")
    assert [k for k, n in row_keys.items() if n > 1] == []
    positions = Counter((p, o) for _, _, p, o in result.rows)
    assert [k for k, n in positions.items() if n > 1] == []
    dead_keys = Counter((a, e) for a, e, _, _ in result.dead)
    assert set(dead_keys) == invalid, (
        f"missing={len(invalid - set(dead_keys))} unexpected={len(set(dead_keys) - invalid)}")
    assert [k for k, n in dead_keys.items() if n > 1] == []
    dead_positions = Counter((p, o) for _, _, p, o in result.dead)
    assert [k for k, n in dead_positions.items() if n > 1] == []


def workload(events: int, seed: int) -> Workload:
    return generate(WorkloadSpec(events=events, batch_size=250, invalid_share=0.05,
                                 refused_share=0.0, retry_share=0.05, accounts=300, seed=seed,
                                 run_id=f"w{uuid.uuid4().hex[:8]}"))


@contextmanager
def local_ray_session(namespace: str) -> Iterator[None]:
    """An in-process local Ray (8 logical CPUs, no dashboard) in ``namespace``, with the
    repository on the workers' path; shut down afterwards. For module-scoped fixtures."""
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False, namespace=namespace,
             runtime_env=ray_runtime_env(), log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def serve_environment(config: ServeConfig) -> Iterator[dict[str, str]]:
    """Serve's HAProxy environment, with its own state directory and ports, in ``os.environ``
    (enter it before ``ray.init``: the raylet and its workers inherit it); restored and the
    state directory removed on the way out."""
    env = serve_env(config, isolate=True, pick_port=free_port)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            yield env
    finally:
        shutil.rmtree(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"], ignore_errors=True)
