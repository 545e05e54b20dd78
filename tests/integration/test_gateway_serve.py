"""The gateway deployed on Ray Serve with HAProxy ingress, through real HTTP, real broker."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from actors.config import KafkaConnection, TopicsConfig
from actors.contract import HEADER_CONTENT_TYPE, HEADER_REQUEST_ID
from cluster.local.processes import free_port
from gateway.config import GatewayConfig, ServeConfig
from gateway.serve_app import deploy, haproxy_pids, serve_env

pytestmark = pytest.mark.integration

GOOD: dict[str, Any] = {
    "type": "account.updated",
    "event_id": "serve-1",
    "account_id": "acct-serve",
    "occurred_at": "2026-11-28T12:00:00Z",
    "body": {"country": "DE"},
}


@pytest.fixture(scope="module")
def served(kafka_connection: KafkaConnection) -> Iterator[tuple[str, str, dict[str, str]]]:
    import ray
    from ray import serve

    topic = f"gw-serve-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(kafka_connection.client_config())
    for future in admin.create_topics([NewTopic(topic, 4, 1)]).values():
        future.result(timeout=30)
    env = serve_env(ServeConfig(), isolate=True, pick_port=free_port)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # before ray.init: the raylet and its workers inherit them
    # address="local": a fresh instance even when `ray start` runs on this machine.
    ray.init(address="local", num_cpus=8, include_dashboard=False,
             namespace=f"gw-{uuid.uuid4().hex[:6]}",
             log_to_driver=False)
    try:
        config = GatewayConfig(
            port=free_port(), kafka=kafka_connection,
            topics=TopicsConfig(events=topic, durability="local"),  # a one-broker topic
            serve=ServeConfig(app_name="gw-test", num_replicas=1, replica_num_cpus=0.25),
        )
        yield deploy(config), topic, env
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"], ignore_errors=True)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def test_an_event_through_serve_is_acknowledged_and_in_kafka(
        served: tuple[str, str, dict[str, str]], kafka_connection: KafkaConnection) -> None:
    url, topic, _ = served
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/v1/events", json=GOOD)
        assert response.status_code == 202, response.text
        (result,) = response.json()["results"]
        refused = client.post("/v1/events/batch", json=[GOOD, {**GOOD, "body": {}}])
        assert refused.status_code == 400
        assert refused.json()["errors"][0]["field"] == "$.body"
        assert client.get("/readyz").json()["status"] == "ready"
    consumer = Consumer({**kafka_connection.client_config(), "group.id": uuid.uuid4().hex})
    try:
        consumer.assign([TopicPartition(topic, result["partition"], result["offset"])])
        message = None
        for _ in range(50):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                break
        assert message is not None and message.error() is None
        assert message.key() == b"acct-serve"
        assert msgspec.json.decode(message.value())["event_id"] == "serve-1"
        headers = dict(message.headers())
        assert headers[HEADER_CONTENT_TYPE] == b"application/json"
        assert headers[HEADER_REQUEST_ID] == response.headers["x-request-id"].encode()
    finally:
        consumer.close()


def test_haproxy_ingress_is_really_serving(served: tuple[str, str, dict[str, str]]) -> None:
    url, _, env = served
    config_file = env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]
    assert haproxy_pids(config_file), "no haproxy process serves this deployment"
    port = url.rsplit(":", 1)[1]
    # Ray writes the file under a per-node directory beside the configured path.
    (written,) = Path(config_file).parent.glob("*/haproxy.cfg")
    assert f":{port}" in written.read_text()
