"""Kafka down: the gateway answers 503 within its deadline, never hangs, never says 202; once
the broker is back the same gateway process accepts again. Uses a broker of its own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from actors.config import KafkaConnection, TopicsConfig
from cluster.local.kafka_broker import LocalKafka
from cluster.settings import load_settings
from gateway.config import GatewayConfig, ProducerTuning
from gateway.server import serve_uvicorn

pytestmark = pytest.mark.integration

DEADLINE_S = 4.0


def event(n: int) -> dict[str, object]:
    return {
        "type": "payment.captured", "event_id": f"outage-{n}", "account_id": f"acct-{n % 7}",
        "occurred_at": "2026-11-28T12:00:00Z",
        "body": {"amount_minor": 100 + n, "currency": "USD", "merchant_id": "m-1"},
    }


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalKafka]:
    settings = load_settings()
    kafka = LocalKafka(tmp_path / "kafka", port=0, controller_port=0,
                       version=settings.local.kafka_version, cache_dir=settings.cache_path())
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


def test_503_while_the_broker_is_down_then_accepted_again(own_broker: LocalKafka) -> None:
    connection = KafkaConnection(bootstrap_servers=own_broker.bootstrap_servers)
    topic = f"gw-outage-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(connection.client_config())
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(timeout=30)
    config = GatewayConfig(
        port=0, kafka=connection, topics=TopicsConfig(events=topic, durability="local"),
        max_events_per_request=10,
        producer=ProducerTuning(delivery_timeout_s=DEADLINE_S, retry_after_s=2,
                                readiness_timeout_s=1.0, queue_max_messages=15),
    )
    # The client gives up shortly after the deadline: a gateway that hangs fails the test.
    with serve_uvicorn(config) as url, \
            httpx.Client(base_url=url, timeout=DEADLINE_S + 5) as client:
        assert client.post("/v1/events", json=event(0)).status_code == 202

        own_broker.stop()
        for n in (1, 2):
            response = client.post("/v1/events/batch", json=[event(10 * n + i) for i in range(5)])
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "2"
            assert response.json()["error"] == "kafka_unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"

        # 10 records wait in the producer queue (15 at most; librdkafka's count also holds
        # its own pending requests): 10 more are 429 at once, not queued; the first 10 fail
        # with 503 at their deadline.
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(client.post, "/v1/events/batch",
                                  json=[event(200 + i) for i in range(10)])
            _wait_for_queue(client, 10)
            started = time.monotonic()
            busy = client.post("/v1/events/batch", json=[event(300 + i) for i in range(10)])
            assert time.monotonic() - started < DEADLINE_S / 2
            assert busy.status_code == 429, busy.text
            assert busy.headers["retry-after"] == "2"
            assert busy.json()["error"] == "producer_busy"
            assert waiting.result().status_code == 503

        own_broker.restart()
        status, attempts = 0, 0
        give_up = time.monotonic() + 90
        while status != 202 and time.monotonic() < give_up:
            attempts += 1
            status = client.post("/v1/events", json=event(100 + attempts)).status_code
            assert status in (202, 503)
        assert status == 202
        assert client.get("/readyz").status_code == 200
        batch = client.post("/v1/events/batch", json=[event(1000 + i) for i in range(10)])
        assert batch.status_code == 202
        assert batch.json()["accepted"] == 10


def _wait_for_queue(client: httpx.Client, records: int) -> None:
    """Until the gateway's producer holds ``records`` unacknowledged records (its gauge)."""
    give_up = time.monotonic() + DEADLINE_S / 2
    while time.monotonic() < give_up:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("eventray_gateway_producer_queue_records ") and \
                    float(line.split()[1]) >= records:
                return
        time.sleep(0.05)
    raise AssertionError(f"the producer queue never held {records} records: "
                         + client.get("/metrics").text[-1500:])
