"""The gateway under real uvicorn, through real HTTP, against the real broker."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import msgspec
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from referencing import Registry, Resource

from actors.config import KafkaConnection, TopicsConfig
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_CONTENT_TYPE,
    HEADER_REQUEST_ID,
    HEADER_SCHEMA_VERSION,
    EventCodec,
)
from actors.secret import Secret
from gateway.app import Gateway, create_app
from gateway.config import GatewayConfig, ProducerTuning
from gateway.server import serve_uvicorn

pytestmark = pytest.mark.integration

GOOD: dict[str, Any] = {
    "type": "payment.captured",
    "event_id": "e-1",
    "account_id": "acct-1",
    "occurred_at": "2026-11-28T12:00:00Z",
    "body": {"amount_minor": 1250, "currency": "EUR", "merchant_id": "m-1"},
}
MAX_BODY = 16 * 1024
MAX_EVENTS = 50


def event(n: int | str, **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    doc["event_id"] = f"e-{n}"
    doc["account_id"] = f"acct-{n}"
    doc.update(changes)
    return doc


def with_body(**changes: Any) -> dict[str, Any]:
    return event(1, body={**GOOD["body"], **changes})


def create_topic(connection: KafkaConnection, partitions: int = 4) -> str:
    name = f"gw-test-{uuid.uuid4().hex[:10]}"
    admin = AdminClient(connection.client_config())
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(timeout=30)
    return name


def gateway_config(connection: KafkaConnection, topic: str, **changes: Any) -> GatewayConfig:
    return GatewayConfig(
        port=0, max_body_bytes=MAX_BODY, max_events_per_request=MAX_EVENTS, kafka=connection,
        topics=TopicsConfig(events=topic, durability="local"),  # a one-broker topic
        producer=changes.pop("producer", ProducerTuning(delivery_timeout_s=15.0)), **changes,
    )


def read_record(connection: KafkaConnection, topic: str, partition: int, offset: int) -> Any:
    consumer = Consumer({**connection.client_config(), "group.id": f"gw-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        for _ in range(50):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                return message
        raise AssertionError(f"no record at {topic}/{partition}@{offset}")
    finally:
        consumer.close()


def high_watermarks(connection: KafkaConnection, topic: str) -> list[int]:
    consumer = Consumer({**connection.client_config(), "group.id": f"gw-{uuid.uuid4().hex}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in sorted(partitions)]
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def topic(kafka_connection: KafkaConnection) -> str:
    return create_topic(kafka_connection)


@pytest.fixture(scope="module")
def gateway(kafka_connection: KafkaConnection, topic: str) -> Iterator[httpx.Client]:
    with serve_uvicorn(gateway_config(kafka_connection, topic)) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def openapi(gateway: httpx.Client) -> dict[str, Any]:
    response = gateway.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


def assert_matches(openapi: dict[str, Any], schema_name: str, body: Any) -> None:
    resource = Resource.from_contents(
        {"$schema": "https://json-schema.org/draft/2020-12/schema", **openapi})
    registry = Registry().with_resource("urn:openapi", resource)
    jsonschema.Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{schema_name}"}, registry=registry,
    ).validate(body)


def test_an_accepted_event_is_in_kafka_where_the_202_says(
        gateway: httpx.Client, kafka_connection: KafkaConnection, topic: str,
        openapi: dict[str, Any]) -> None:
    doc = event("readback-1")
    response = gateway.post("/v1/events", json=doc)
    assert response.status_code == 202, response.text
    body = response.json()
    assert_matches(openapi, "Accepted", body)
    assert body["request_id"] == response.headers["x-request-id"]
    (result,) = body["results"]
    assert (result["topic"], result["event_id"], result["index"]) == (topic, "e-readback-1", 0)

    record = read_record(kafka_connection, topic, result["partition"], result["offset"])
    codec = EventCodec()
    assert record.key() == b"acct-readback-1"
    assert record.value() == codec.encode(codec.decode_json(msgspec.json.encode(doc)))
    headers = dict(record.headers())
    assert headers[HEADER_CONTENT_TYPE] == b"application/json"
    assert headers[HEADER_REQUEST_ID] == body["request_id"].encode()
    assert int(headers[HEADER_ACCEPTED_AT_MS]) > 1_700_000_000_000
    assert headers[HEADER_SCHEMA_VERSION] == b"1"


def test_a_sane_client_request_id_is_adopted_and_a_bad_one_replaced(
        gateway: httpx.Client, kafka_connection: KafkaConnection, topic: str) -> None:
    adopted = gateway.post("/v1/events", json=event("rid-1"),
                           headers={"x-request-id": "client-req.42"})
    assert adopted.json()["request_id"] == adopted.headers["x-request-id"] == "client-req.42"
    result = adopted.json()["results"][0]
    record = read_record(kafka_connection, topic, result["partition"], result["offset"])
    assert dict(record.headers())[HEADER_REQUEST_ID] == b"client-req.42"
    replaced = gateway.post("/v1/events", json=event("rid-2"),
                            headers={"x-request-id": "bad id\twith spaces"})
    assert replaced.status_code == 202
    assert replaced.json()["request_id"] not in ("bad id\twith spaces", "")


@pytest.mark.parametrize("content_type", [
    "application/json", "application/x-ndjson", "application/msgpack"])
def test_a_batch_is_accepted_in_each_format_and_keyed_by_account(
        gateway: httpx.Client, kafka_connection: KafkaConnection, topic: str,
        content_type: str) -> None:
    docs = [event(f"{content_type[12:]}-{n}", account_id="acct-same") for n in range(20)]
    if content_type == "application/x-ndjson":
        payload = b"\n".join(msgspec.json.encode(d) for d in docs) + b"\n"
    elif content_type == "application/msgpack":
        payload = msgspec.msgpack.encode(docs)
    else:
        payload = msgspec.json.encode(docs)
    response = gateway.post("/v1/events/batch", content=payload,
                            headers={"content-type": content_type})
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["event_id"] for r in results] == [d["event_id"] for d in docs]
    # One key -> one partition, offsets in request order.
    assert len({r["partition"] for r in results}) == 1
    offsets = [r["offset"] for r in results]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    last = read_record(kafka_connection, topic, results[-1]["partition"], offsets[-1])
    assert msgspec.json.decode(last.value())["event_id"] == docs[-1]["event_id"]


DEEP = b"[" * 6000 + b"]" * 6000
OVERSIZE = msgspec.json.encode([event(n, body={**GOOD["body"], "description": "x" * 200})
                                for n in range(MAX_EVENTS)])
assert len(OVERSIZE) > MAX_BODY

# (id, path, content type, body, status, error code, [(index, field, reason fragment)])
REFUSALS: list[tuple[str, str, str | None, bytes, int, str, list[tuple[Any, str, str]]]] = [
    ("malformed-json", "/v1/events", "application/json", b'{"type": "payment.captured",',
     400, "invalid_events", [(0, "$", "malformed")]),
    ("malformed-batch", "/v1/events/batch", "application/json", b"[{]",
     400, "invalid_events", [(None, "$", "malformed")]),
    ("wrong-type", "/v1/events", "application/json",
     msgspec.json.encode(with_body(amount_minor="12.50")),
     400, "invalid_events", [(0, "$.body.amount_minor", "Expected `int`, got `str`")]),
    ("missing-field", "/v1/events", "application/json",
     msgspec.json.encode({k: v for k, v in event(1).items() if k != "occurred_at"}),
     400, "invalid_events", [(0, "$", "missing required field `occurred_at`")]),
    ("unknown-field", "/v1/events", "application/json",
     msgspec.json.encode({**event(1), "priority": "high"}),
     400, "invalid_events", [(0, "$", "unknown field `priority`")]),
    ("huge-number", "/v1/events", "application/json",
     msgspec.json.encode(with_body(amount_minor=10**40)),
     400, "invalid_events", [(0, "$.body.amount_minor", "<= 9007199254740992")]),
    ("huge-float", "/v1/events", "application/json",
     msgspec.json.encode(event(1)).replace(b'"amount_minor":1250', b'"amount_minor":1e999'),
     400, "invalid_events", [(0, "$.body.amount_minor", "out of range")]),
    ("deep-nesting", "/v1/events/batch", "application/json", DEEP,
     400, "invalid_events", [(None, "$", "nesting too deep")]),
    ("deep-nesting-single", "/v1/events", "application/json",
     msgspec.json.encode(event(1)).replace(b'"m-1"', b"[" * 5000 + b"]" * 5000),
     400, "invalid_events", [(0, "$.body.merchant_id", "Expected `str`, got `array`")]),
    ("invalid-utf8", "/v1/events", "application/json",
     msgspec.json.encode(event(1)).replace(b'"m-1"', b'"m-\xc3\x28"'),
     400, "invalid_events", [(0, "$", "invalid UTF-8")]),
    ("empty-single", "/v1/events", "application/json", b"",
     400, "invalid_events", [(0, "$", "empty body")]),
    ("empty-batch", "/v1/events/batch", "application/json", b"[]",
     400, "invalid_events", [(None, "$", "empty batch")]),
    ("empty-ndjson", "/v1/events/batch", "application/x-ndjson", b"\n\n",
     400, "invalid_events", [(None, "$", "empty batch")]),
    ("one-bad-in-batch", "/v1/events/batch", "application/json",
     msgspec.json.encode([event(1), event(2, currency="EUR"), event(3)]),
     400, "invalid_events", [(1, "$", "unknown field `currency`")]),
    ("bad-ndjson-line", "/v1/events/batch", "application/x-ndjson",
     msgspec.json.encode(event(1)) + b"\nnot json\n" + msgspec.json.encode(event(3)),
     400, "invalid_events", [(1, "$", "malformed")]),
    ("bad-msgpack-item", "/v1/events/batch", "application/msgpack",
     msgspec.msgpack.encode([event(1), {**event(2), "type": "payment.voided"}]),
     400, "invalid_events", [(1, "$.type", "Invalid value 'payment.voided'")]),
    ("duplicate-id", "/v1/events/batch", "application/json",
     msgspec.json.encode([event(1), event(1)]),
     400, "invalid_events", [(1, "$.event_id", "duplicate event_id")]),
    ("oversize-body", "/v1/events/batch", "application/json", OVERSIZE,
     413, "payload_too_large", [(None, "$", f"larger than {MAX_BODY} bytes")]),
    ("too-many-events", "/v1/events/batch", "application/x-ndjson",
     b"\n".join(msgspec.json.encode(event(n)) for n in range(MAX_EVENTS + 1)),
     413, "too_many_events", [(None, "$", f"{MAX_EVENTS + 1} events > limit")]),
    ("wrong-content-type", "/v1/events", "text/plain", msgspec.json.encode(event(1)),
     415, "unsupported_media_type", [(None, "Content-Type", "'text/plain' is not one of")]),
    ("no-content-type", "/v1/events/batch", None, msgspec.json.encode([event(1)]),
     415, "unsupported_media_type", [(None, "Content-Type", "missing")]),
    ("ndjson-to-single", "/v1/events", "application/x-ndjson", msgspec.json.encode(event(1)),
     415, "unsupported_media_type", [(None, "Content-Type", "not one of")]),
]


@pytest.fixture(scope="module")
def refusal_topic(kafka_connection: KafkaConnection) -> str:
    return create_topic(kafka_connection)


@pytest.fixture(scope="module")
def refusing_gateway(
        kafka_connection: KafkaConnection, refusal_topic: str) -> Iterator[httpx.Client]:
    with serve_uvicorn(gateway_config(kafka_connection, refusal_topic)) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.mark.parametrize(("path", "content_type", "payload", "status", "error", "problems"),
                         [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS])
def test_a_bad_request_gets_its_status_and_names_the_problem(
        refusing_gateway: httpx.Client, openapi: dict[str, Any], path: str,
        content_type: str | None, payload: bytes, status: int, error: str,
        problems: list[tuple[Any, str, str]]) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = refusing_gateway.post(path, content=payload, headers=headers)
    assert response.status_code == status, response.text
    body = response.json()
    assert_matches(openapi, "ErrorBody", body)
    assert body["error"] == error
    assert body["request_id"] == response.headers["x-request-id"]
    got = body["errors"]
    assert len(got) == len(problems), got
    for problem, (index, field, fragment) in zip(got, problems, strict=True):
        assert (problem["index"], problem["field"]) == (index, field), problem
        assert fragment in problem["reason"], problem


def test_nothing_of_a_refused_request_reached_kafka(
        refusing_gateway: httpx.Client, kafka_connection: KafkaConnection,
        refusal_topic: str) -> None:
    # Runs after the table above (same module, same topic); make sure it ran here too.
    for case in REFUSALS[:3]:
        response = refusing_gateway.post(case[1], content=case[3],
                                         headers={"content-type": case[2] or ""})
        assert response.status_code >= 400
    assert high_watermarks(kafka_connection, refusal_topic) == [0, 0, 0, 0]
    metrics = refusing_gateway.get("/metrics").text
    assert 'eventray_gateway_events_refused_total{reason="invalid_events"}' in metrics
    assert "eventray_gateway_events_accepted_total 0.0" in metrics


@pytest.fixture(scope="module")
def keyed_gateway(kafka_connection: KafkaConnection, topic: str) -> Iterator[httpx.Client]:
    config = gateway_config(kafka_connection, topic, api_keys=[Secret("s3cret-key")])
    with serve_uvicorn(config) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"authorization": "Bearer wrong"}, 403),
    ({"x-api-key": "wrong"}, 403),
    ({"authorization": "Bearer s3cret-key"}, 202),
    ({"x-api-key": "s3cret-key"}, 202),
])
def test_api_keys_guard_the_event_routes_only(
        keyed_gateway: httpx.Client, headers: dict[str, str], status: int) -> None:
    response = keyed_gateway.post("/v1/events", json=event(uuid.uuid4().hex[:8]),
                                  headers=headers)
    assert response.status_code == status, response.text
    for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert keyed_gateway.get(open_path).status_code == 200


def test_operations_endpoints(gateway: httpx.Client, topic: str,
                              openapi: dict[str, Any]) -> None:
    assert gateway.get("/healthz").json() == {"status": "ok"}
    ready = gateway.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "topic": topic, "partitions": 4, "brokers": 1}
    assert_matches(openapi, "Readiness", ready.json())
    gateway.post("/v1/events", json=event("metrics-1"))
    metrics = gateway.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'eventray_gateway_requests_total{route="/v1/events",status="202"}' in text
    assert "eventray_gateway_produce_latency_seconds_bucket" in text
    accepted = next(line for line in text.splitlines()
                    if line.startswith("eventray_gateway_events_accepted_total"))
    assert float(accepted.split()[1]) >= 1
    paths = set(openapi["paths"])
    assert paths == {"/v1/events", "/v1/events/batch", "/healthz", "/readyz", "/metrics",
                     "/openapi.json"}
    missing = gateway.get("/v2/nothing")
    assert missing.status_code == 404
    assert_matches(openapi, "ErrorBody", missing.json())


def test_a_batch_larger_than_the_byte_bound_waits_for_room_instead_of_a_partial_429(
        kafka_connection: KafkaConnection) -> None:
    # 50 records of ~250 bytes against a 1 KiB producer queue: produce() fills it in the middle
    # of the request. Records already queued cannot be taken back, so the gateway waits for
    # room (the broker acknowledges, the queue drains) and the whole request is accepted.
    topic = create_topic(kafka_connection)
    config = gateway_config(kafka_connection, topic,
                            producer=ProducerTuning(delivery_timeout_s=15.0, queue_max_kbytes=1))
    events = [event(f"bytes-{n}") for n in range(MAX_EVENTS)]
    with serve_uvicorn(config) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/v1/events/batch", json=events)
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["event_id"] for r in results] == [e["event_id"] for e in events]
    last = results[-1]
    record = read_record(kafka_connection, topic, last["partition"], last["offset"])
    assert msgspec.json.decode(record.value())["event_id"] == events[-1]["event_id"]
    assert sum(high_watermarks(kafka_connection, topic)) == MAX_EVENTS


def test_readyz_is_503_when_the_topic_does_not_exist(
        kafka_connection: KafkaConnection) -> None:
    config = gateway_config(kafka_connection, f"gw-missing-{uuid.uuid4().hex[:8]}")
    with serve_uvicorn(config) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        assert "retry-after" in response.headers


def test_a_fatal_producer_error_rebuilds_the_producer(
        kafka_connection: KafkaConnection, topic: str) -> None:
    """librdkafka reports a fatal idempotence error through error_cb; the next request must
    get a fresh producer rather than fail forever."""
    app = create_app(gateway_config(kafka_connection, topic))
    state: Gateway = app.state.gateway
    with serve_uvicorn(app.state.gateway.config, app=app) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/events", json=event("fatal-1")).status_code == 202
        first = state.producer.generation
        state.producer._on_error(KafkaError(KafkaError._FATAL, "injected", fatal=True))
        response = client.post("/v1/events", json=event("fatal-2"))
        assert response.status_code == 202, response.text
        assert state.producer.generation == first + 1
