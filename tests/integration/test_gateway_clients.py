"""The gateway under slow and vanishing clients: real uvicorn on a free port, real broker, raw
sockets for the clients that misbehave (a slow body, one that never ends, one that leaves).

What each test holds: a body that does not arrive in time gets 408 and its connection closed;
bodies past the replica's in-flight byte bound get 429 with Retry-After before they are read;
a client that leaves mid-body is counted, logged without a traceback, and the server serves
the next request; nothing of any of these requests reaches Kafka; /readyz never rebuilds the
producer off the event loop.
"""

from __future__ import annotations

import logging
import select
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import msgspec
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from raw_http import closed_by_peer, connect, read_response, request_head

from actors.config import KafkaConnection, TopicsConfig
from gateway.app import Gateway, create_app
from gateway.config import GatewayConfig, ProducerTuning
from gateway.server import serve_uvicorn

pytestmark = pytest.mark.integration

TopicFactory = Callable[..., str]
BODY_TIMEOUT_S = 2.0
MAX_BODY = 16 * 1024
# Every wait below ends with a failure long before pytest's timeout; none is a speed check.
GIVE_UP_S = BODY_TIMEOUT_S + 20


def event(n: int | str) -> dict[str, Any]:
    return {"type": "payment.captured", "event_id": f"cl-{n}", "account_id": f"acct-{n}",
            "occurred_at": "2026-11-28T12:00:00Z",
            "body": {"amount_minor": 1250, "currency": "EUR", "merchant_id": "m-1"}}


def ndjson(*names: int | str) -> bytes:
    return b"".join(msgspec.json.encode(event(n)) + b"\n" for n in names)


def config_for(connection: KafkaConnection, topic: str, **changes: Any) -> GatewayConfig:
    settings: dict[str, Any] = {"max_body_bytes": MAX_BODY, "body_timeout_s": BODY_TIMEOUT_S,
                                "producer": ProducerTuning(delivery_timeout_s=15.0), **changes}
    return GatewayConfig(port=0, kafka=connection,
                         topics=TopicsConfig(events=topic, durability="local"),  # one broker
                         **settings)


def end_offsets(connection: KafkaConnection, topic: str) -> int:
    """How many records the topic holds (its partitions' high watermarks, summed)."""
    consumer = Consumer({**connection.client_config(), "group.id": f"cl-{uuid.uuid4().hex}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in partitions)
    finally:
        consumer.close()


# --------------------------------------------------------------------------- fixtures


class Records(logging.Handler):
    """Log records of the server's loggers (uvicorn's error log does not reach the root)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}" for r in self.records
                if r.levelno >= logging.ERROR or r.exc_info]


@pytest.fixture
def server_log() -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "gateway")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


# --------------------------------------------------------------------------- the tests


def test_a_body_that_trickles_past_the_bound_gets_408_and_its_connection_closed(
        kafka_connection: KafkaConnection, topic_factory: TopicFactory) -> None:
    topic = topic_factory(partitions=2, prefix="gw-slow")
    body = ndjson(1)
    with serve_uvicorn(config_for(kafka_connection, topic)) as url, connect(url) as sock:
        sock.sendall(request_head("/v1/events/batch", length=len(body)))
        # A byte every 0.25 s: never silent for long, yet the whole body would take ~40 s.
        # The bound is on the whole body, not on the silence between two bytes.
        for byte in body:
            sock.sendall(bytes([byte]))
            answered, _, _ = select.select([sock], [], [], 0.25)
            if answered:
                break
        response = read_response(sock)
        assert response.status == 408, response.body
        assert response.json()["error"] == "body_timeout"
        assert response.headers["connection"] == "close"
        assert closed_by_peer(sock)
        with httpx.Client(base_url=url, timeout=GIVE_UP_S) as client:
            assert client.post("/v1/events", json=event("after-408")).status_code == 202
            metrics = client.get("/metrics").text
    assert 'eventray_gateway_requests_total{route="/v1/events/batch",status="408"} 1.0' in metrics
    assert 'eventray_gateway_events_refused_total{reason="body_timeout"} 1.0' in metrics
    assert end_offsets(kafka_connection, topic) == 1  # the one posted after, nothing of it


def test_a_body_that_never_comes_gets_408_within_the_bound(
        kafka_connection: KafkaConnection, topic_factory: TopicFactory) -> None:
    topic = topic_factory(partitions=2, prefix="gw-stall")
    with serve_uvicorn(config_for(kafka_connection, topic)) as url, connect(url) as sock:
        sock.sendall(request_head("/v1/events", "application/json", 10_000) + b"0123456789")
        response = read_response(sock)
        assert response.status == 408, response.body
        assert "10 of 10000 bytes" in response.json()["message"]
        assert response.headers["connection"] == "close"
        assert closed_by_peer(sock)
    assert end_offsets(kafka_connection, topic) == 0


def test_bodies_past_the_inflight_bound_get_429_before_they_are_read(
        kafka_connection: KafkaConnection, topic_factory: TopicFactory) -> None:
    topic = topic_factory(partitions=2, prefix="gw-inflight")
    # Two bodies of MAX_BODY fill the replica's bound; their clients hold them, half sent.
    config = config_for(kafka_connection, topic, max_inflight_body_bytes=2 * MAX_BODY,
                        body_timeout_s=8.0)
    held = ndjson(*(f"held-{n}" for n in range(20)))
    held = held + b" " * (MAX_BODY - len(held))  # trailing blanks: still one valid batch
    refused = ndjson(*(f"refused-{n}" for n in range(5)))
    app = create_app(config)
    inflight = app.state.gateway.inflight
    with serve_uvicorn(config, app=app) as url, connect(url) as first, connect(url) as second, \
            httpx.Client(base_url=url, timeout=GIVE_UP_S) as client:
        for holder in (first, second):
            holder.sendall(request_head("/v1/events/batch", length=MAX_BODY) + held[:100])
        _wait_for(lambda: inflight.held == 2 * MAX_BODY, "the two bodies to be admitted")

        # Declared length over what is left: 429 before a byte is read, the whole body sent.
        with connect(url) as third:
            third.sendall(request_head("/v1/events/batch", length=len(refused)) + refused)
            busy = read_response(third)
        assert busy.status == 429, busy.body
        assert busy.json()["error"] == "gateway_busy"
        assert busy.headers["retry-after"] == "1"
        # Chunked, no declared length: refused on its first chunk.
        with connect(url) as chunked:
            chunked.sendall(request_head("/v1/events/batch")
                            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(refused), refused))
            assert read_response(chunked).status == 429

        # One holder leaves, the other finishes its body: both give their bytes back.
        first.close()
        second.sendall(held[100:])
        accepted = read_response(second)
        assert accepted.status == 202, accepted.body
        _wait_for(lambda: inflight.held == 0, "the held bytes to be released")
        retried = client.post("/v1/events/batch", content=refused,
                              headers={"content-type": "application/x-ndjson"})
        assert retried.status_code == 202, retried.text
        metrics = client.get("/metrics").text
    assert 'eventray_gateway_events_refused_total{reason="gateway_busy"} 2.0' in metrics
    # The held batch and the retried one; nothing of the two 429s.
    assert end_offsets(kafka_connection, topic) == 20 + 5


def test_a_client_that_leaves_mid_body_is_counted_and_no_error(
        kafka_connection: KafkaConnection, topic_factory: TopicFactory,
        server_log: Records) -> None:
    topic = topic_factory(partitions=2, prefix="gw-gone")
    body = ndjson(*(f"gone-{n}" for n in range(10)))
    app = create_app(config_for(kafka_connection, topic, body_timeout_s=8.0))
    inflight = app.state.gateway.inflight
    with serve_uvicorn(app.state.gateway.config, app=app) as url, \
            httpx.Client(base_url=url, timeout=GIVE_UP_S) as client:
        # Complete events, but fewer bytes than declared: the client leaves before the end.
        with connect(url) as sock:
            sock.sendall(request_head("/v1/events/batch", length=len(body) + 500) + body)
            _wait_for(lambda: inflight.held > 0, "the request to be admitted")
        _wait_for(lambda: "eventray_gateway_client_disconnects_total{" in _metrics(client),
                  "the disconnect to be counted")
        metrics = _metrics(client)
        assert inflight.held == 0
        assert client.post("/v1/events", json=event("next")).status_code == 202
    assert ('eventray_gateway_client_disconnects_total{route="/v1/events/batch"} 1.0'
            in metrics)
    assert 'status="500"' not in metrics
    assert server_log.errors() == []
    assert any("client disconnected mid-body" in r.getMessage() and r.levelno == logging.INFO
               for r in server_log.records)
    assert end_offsets(kafka_connection, topic) == 1  # the next request's event only


def test_readyz_never_rebuilds_the_producer_off_the_event_loop(
        kafka_connection: KafkaConnection, topic_factory: TopicFactory) -> None:
    """After a fatal producer error, /readyz (no auth, any rate) and requests arrive together:
    the producer is rebuilt once, on the event loop's thread, never from a worker thread."""
    topic = topic_factory(partitions=2, prefix="gw-ready")
    app = create_app(config_for(kafka_connection, topic))
    state: Gateway = app.state.gateway
    producer = state.producer
    builders: list[str] = []
    build = producer._build

    def recording_build() -> None:
        builders.append(threading.current_thread().name)
        build()

    producer._build = recording_build  # type: ignore[method-assign]
    with serve_uvicorn(state.config, app=app) as url, \
            httpx.Client(base_url=url, timeout=GIVE_UP_S) as client:
        assert client.post("/v1/events", json=event("ready-0")).status_code == 202
        loop_thread = builders[0]
        first = producer.generation
        producer._on_error(KafkaError(KafkaError._FATAL, "injected", fatal=True))
        # /readyz first: before the fix, its worker thread rebuilt the producer right here.
        assert client.get("/readyz").status_code == 200
        with ThreadPoolExecutor(8) as pool:
            ready = [pool.submit(client.get, "/readyz") for _ in range(24)]
            posts = [pool.submit(client.post, "/v1/events", json=event(f"ready-{n}"))
                     for n in range(1, 9)]
            assert {f.result().status_code for f in ready} == {200}
            assert {f.result().status_code for f in posts} == {202}
    assert loop_thread == "eventray-gateway-uvicorn"
    assert builders == [loop_thread, loop_thread], builders
    assert producer.generation == first + 1


# --------------------------------------------------------------------------- helpers


def _metrics(client: httpx.Client) -> str:
    return client.get("/metrics").text


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + GIVE_UP_S
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)
