"""Scoped API keys on the real gateway (uvicorn) and the real broker: a key writing outside its
accounts gets 403 and nothing is produced; over its rate 429 and nothing of that request is
produced; keys created and revoked with ``eventray keys`` count within one reload interval
without a restart; refusals are counted by key name and reason and logged without the key."""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.config import KafkaConnection, TopicsConfig
from cluster.cli import main as eventray
from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.keys import KeyFile, KeyRecord, key_hash, write_key_file
from gateway.server import serve_uvicorn

pytestmark = pytest.mark.integration

RELOAD_S = 1.0
SHOP_KEY = f"erk_shop_{uuid.uuid4().hex}"
SLOW_KEY = f"erk_slow_{uuid.uuid4().hex}"


def event(account: str, n: int | str = 0) -> dict[str, Any]:
    return {"type": "account.updated", "event_id": f"k-{n}-{uuid.uuid4().hex[:8]}",
            "account_id": account, "occurred_at": "2026-11-28T12:00:00Z",
            "body": {"country": "DE"}}


def keys_cli(path: Path, *args: str) -> str:
    """``eventray keys --file PATH ARGS``; its stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert eventray(["keys", "--file", str(path), *args]) == 0
    return out.getvalue()


def high_watermarks(connection: KafkaConnection, topic: str) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**connection.client_config(), "group.id": f"k-{uuid.uuid4().hex}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in sorted(partitions)]
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    write_key_file(path, KeyFile([
        KeyRecord(name="shop", sha256=key_hash(SHOP_KEY), accounts=["shop-*", "acct-exact"]),
        # 5 events at once, then 1 per 1000 s: a second request is over the rate.
        KeyRecord(name="slow", sha256=key_hash(SLOW_KEY), accounts=["*"], rate_per_s=0.001,
                  burst=5),
    ]))
    return path


@pytest.fixture(scope="module")
def gateway(kafka_connection: KafkaConnection, topic: str,
            keys_file: Path) -> Iterator[httpx.Client]:
    config = GatewayConfig(port=0, kafka=kafka_connection,
                           topics=TopicsConfig(events=topic, durability="local"),
                           api_keys_file=str(keys_file), api_keys_reload_s=RELOAD_S)
    with serve_uvicorn(config, app=create_app(config)) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def topic(kafka_connection: KafkaConnection) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"gw-keys-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(kafka_connection.client_config())
    for future in admin.create_topics([NewTopic(name, 2, 1)]).values():
        future.result(timeout=30)
    return name


def test_a_key_writes_for_its_accounts_only_and_a_refused_batch_produces_nothing(
        gateway: httpx.Client, kafka_connection: KafkaConnection, topic: str) -> None:
    auth = {"authorization": f"Bearer {SHOP_KEY}"}
    ok = gateway.post("/v1/events/batch", json=[event("shop-1"), event("acct-exact")],
                      headers=auth)
    assert ok.status_code == 202, ok.text
    before = high_watermarks(kafka_connection, topic)
    refused = gateway.post("/v1/events/batch", headers=auth, json=[
        event("shop-2"), event("victim-account"), event("shop-3")])
    assert refused.status_code == 403, refused.text
    body = refused.json()
    assert body["error"] == "account_not_allowed"
    assert "'victim-account' (event index 1)" in body["message"]
    assert body["errors"] == [{"index": 1, "field": "$.account_id",
                               "reason": "account 'victim-account' is not one of key 'shop''s"}]
    single = gateway.post("/v1/events", json=event("acct-exact-not"), headers=auth)
    assert single.status_code == 403
    assert high_watermarks(kafka_connection, topic) == before


def test_a_key_over_its_rate_gets_429_and_nothing_of_that_request_is_produced(
        gateway: httpx.Client, kafka_connection: KafkaConnection, topic: str) -> None:
    auth = {"x-api-key": SLOW_KEY}
    first = gateway.post("/v1/events/batch", json=[event("a", i) for i in range(4)],
                         headers=auth)
    assert first.status_code == 202, first.text
    before = high_watermarks(kafka_connection, topic)
    limited = gateway.post("/v1/events/batch", json=[event("a", i) for i in range(2)],
                           headers=auth)
    assert limited.status_code == 429, limited.text
    assert limited.json()["error"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    over_burst = gateway.post("/v1/events/batch", json=[event("a", i) for i in range(6)],
                              headers=auth)
    assert over_burst.status_code == 413 and over_burst.json()["error"] == "over_key_burst"
    assert high_watermarks(kafka_connection, topic) == before
    # The refused requests took nothing: the one event left in the bucket still goes.
    assert gateway.post("/v1/events", json=event("a"), headers=auth).status_code == 202


def test_keys_created_and_revoked_count_within_one_reload_interval_without_a_restart(
        gateway: httpx.Client, keys_file: Path) -> None:
    new_key = keys_cli(keys_file, "create", "partner", "--accounts", "partner-*").strip()
    assert new_key.startswith("erk_") and new_key not in keys_file.read_text()
    time.sleep(RELOAD_S + 0.5)  # one reload interval, and a margin for the loop
    auth = {"authorization": f"Bearer {new_key}"}
    assert gateway.post("/v1/events", json=event("partner-1"), headers=auth).status_code == 202
    listed = keys_cli(keys_file, "list")
    assert "partner" in listed and "partner-*" in listed and new_key not in listed
    keys_cli(keys_file, "revoke", "partner")
    time.sleep(RELOAD_S + 0.5)
    revoked = gateway.post("/v1/events", json=event("partner-1"), headers=auth)
    assert revoked.status_code == 403, revoked.text
    assert revoked.json()["error"] == "forbidden"


def test_refusals_are_counted_by_key_and_reason_and_logged_without_the_key(
        gateway: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="gateway.auth"):
        assert gateway.post("/v1/events", json=event("x")).status_code == 401
        wrong = f"erk_wrong_{uuid.uuid4().hex}"
        assert gateway.post("/v1/events", json=event("x"),
                            headers={"x-api-key": wrong}).status_code == 403
        assert gateway.post("/v1/events", json=event("elsewhere"),
                            headers={"x-api-key": SHOP_KEY}).status_code == 403
    metrics = gateway.get("/metrics").text
    for key, reason in (("-", "missing_key"), ("?", "unknown_key"),
                        ("shop", "account_not_allowed"), ("slow", "rate_limited"),
                        ("slow", "over_key_burst")):
        assert (f'eventray_gateway_key_refusals_total{{key="{key}",reason="{reason}"}}'
                in metrics), (key, reason)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    # The first of its kind in this module; the others were logged by the tests before (one
    # line per key and reason every 10 s at most).
    assert "refused by API key key=- reason=missing_key status=401" in logged
    for secret in (wrong, SHOP_KEY, SLOW_KEY):
        assert secret not in logged and secret not in metrics
