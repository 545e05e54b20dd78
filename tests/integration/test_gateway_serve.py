"""The gateway deployed on Ray Serve with HAProxy ingress, through real HTTP, real broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pipeline_helpers import serve_environment
from raw_http import closed_by_peer, connect, read_response, request_head, start_body

from actors.config import KafkaConnection, TopicsConfig
from actors.contract import HEADER_CONTENT_TYPE, HEADER_REQUEST_ID
from cluster.local.processes import free_port
from gateway.config import GatewayConfig, ServeConfig
from gateway.serve_app import deploy, haproxy_pids

pytestmark = pytest.mark.integration

GOOD: dict[str, Any] = {
    "type": "account.updated",
    "event_id": "serve-1",
    "account_id": "acct-serve",
    "occurred_at": "2026-11-28T12:00:00Z",
    "body": {"country": "DE"},
}
# Short bounds, so that the slow-client tests end soon: the gateway waits 2 s for a body,
# HAProxy 4 s on a silent client (gateway.serve.haproxy_client_timeout_s, read at Ray start).
SERVE = ServeConfig(app_name="gw-test", num_replicas=1, replica_num_cpus=0.25,
                    haproxy_client_timeout_s=4)
BODY_TIMEOUT_S = 2.0
MAX_BODY = 16 * 1024


@pytest.fixture(scope="module")
def served(kafka_connection: KafkaConnection) -> Iterator[tuple[str, str, dict[str, str]]]:
    import ray

    topic = f"gw-serve-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(kafka_connection.client_config())
    for future in admin.create_topics([NewTopic(topic, 4, 1)]).values():
        future.result(timeout=30)
    with serve_environment(SERVE) as env:
        # address="local": a fresh instance even when `ray start` runs on this machine. INFO
        # from the replica's own loggers into its worker's .err, as settings.connect_ray does.
        ray.init(address="local", num_cpus=8, include_dashboard=False,
                 namespace=f"gw-{uuid.uuid4().hex[:6]}",
                 log_to_driver=False,
                 logging_config=ray.LoggingConfig(encoding="TEXT", log_level="INFO"))
        try:
            config = GatewayConfig(
                port=free_port(), kafka=kafka_connection,
                topics=TopicsConfig(events=topic, durability="local"),  # a one-broker topic
                body_timeout_s=BODY_TIMEOUT_S, max_body_bytes=MAX_BODY,
                max_inflight_body_bytes=MAX_BODY, serve=SERVE,
            )
            yield deploy(config), topic, env
        finally:
            # Not serve.shutdown(): its controller waits 30 s for the HAProxy proxy and gives
            # up (measured); ending the local instance stops Serve and HAProxy with it.
            ray.shutdown()


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


def test_a_stalled_body_gets_the_gateways_408_then_haproxy_closes_the_connection(
        served: tuple[str, str, dict[str, str]]) -> None:
    """HAProxy passes the gateway's JSON 408 on, without its ``Connection: close`` (a hop-by-hop
    header HAProxy decides itself), and drops the connection once the client has been silent
    for its client timeout: the replica let go of the request at the 408 already."""
    url, _, _ = served
    with connect(url) as sock:
        sock.sendall(request_head("/v1/events", "application/json", 10_000) + b"0123456789")
        response = read_response(sock)
        assert response.status == 408, response.body
        assert response.json()["error"] == "body_timeout"
        assert "10 of 10000 bytes" in response.json()["message"]
        assert closed_by_peer(sock)


def test_a_body_past_the_inflight_bound_gets_429_through_haproxy(
        served: tuple[str, str, dict[str, str]]) -> None:
    url, _, _ = served
    with connect(url) as holder:  # holds the replica's whole bound, and sends nothing more
        holder.sendall(request_head("/v1/events", "application/json", MAX_BODY))
        with httpx.Client(base_url=url, timeout=30) as client:
            busy = _post_until(client, lambda status: status != 202, "a 429")
            assert busy.status_code == 429, busy.text
            assert busy.json()["error"] == "gateway_busy"
            assert busy.headers["retry-after"] == "1"
            holder.close()  # the holder leaves: its bytes are given back
            assert _post_until(client, lambda status: status == 202, "a 202").status_code == 202


def test_a_client_leaving_mid_body_is_logged_by_the_replica_not_a_500(
        served: tuple[str, str, dict[str, str]]) -> None:
    import ray

    url, _, _ = served
    request_id = f"leaves-{uuid.uuid4().hex[:8]}"
    with connect(url) as sock:
        start_body(sock, "/v1/events", 1000, b'{"type": "account.updated"', request_id)
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    give_up = time.monotonic() + 30
    text = ""
    while f"request_id={request_id}" not in text and time.monotonic() < give_up:
        time.sleep(0.2)
        # The replica's .err (Python logging) and Serve's own replica log.
        text = "".join(log.read_text(errors="replace") for log in
                       [*logs.glob("worker-*.err"), *logs.glob("serve/replica_gw-test_*.log")])
    lines = [line for line in text.splitlines() if request_id in line]
    assert any("client disconnected mid-body" in line for line in lines), lines
    assert not [line for line in text.splitlines()
                if "ClientDisconnect" in line or "Request failed" in line]
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/events", json={**GOOD, "event_id": "after-leave"}).status_code \
            == 202


def _post_until(client: httpx.Client, done: Any, what: str) -> httpx.Response:
    """Posts until ``done(status)``: the replica sees a raw socket's request a moment after
    HAProxy accepted it."""
    give_up = time.monotonic() + 30
    while True:
        response = client.post("/v1/events", json={**GOOD, "event_id": uuid.uuid4().hex})
        if done(response.status_code) or time.monotonic() > give_up:
            return response
        time.sleep(0.1)
