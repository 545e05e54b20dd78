"""API keys: who may write what (pure parts: the keys file, scopes, buckets, the check)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.contract import EventCodec
from actors.secret import Secret
from gateway.auth import ApiKeyCheck, KeyRefusedError, RefusalLog
from gateway.exceptions import RequestRejectedError
from gateway.keys import (
    AccountScope,
    KeyFile,
    KeyFileError,
    KeyRecord,
    key_hash,
    new_key,
    read_key_file,
    write_key_file,
)
from gateway.rate_limit import TokenBucket

CHECK = ApiKeyCheck([Secret("k-one"), Secret("k-two")])
CODEC = EventCodec()


def events(*accounts: str) -> list[Any]:
    return [CODEC.decode_json(msgspec.json.encode({
        "type": "account.updated", "event_id": f"e-{i}", "account_id": account,
        "occurred_at": "2026-11-28T12:00:00Z", "body": {"country": "DE"}}))
        for i, account in enumerate(accounts)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(name: str, key: str, accounts: list[str], rate: float | None = None,
           burst: int | None = None) -> KeyRecord:
    return KeyRecord(name=name, sha256=key_hash(key), accounts=accounts, rate_per_s=rate,
                     burst=burst)


@pytest.mark.parametrize("headers", [
    {"authorization": "Bearer k-one"},
    {"authorization": "bearer   k-two"},
    {"x-api-key": "k-two"},
])
def test_a_configured_key_passes(headers: dict[str, str]) -> None:
    caller = CHECK.identify(headers)
    assert caller is not None and caller.name.startswith("settings-")
    CHECK.admit(caller, events("any-account", "another"))  # settings keys: every account


@pytest.mark.parametrize(("headers", "status", "reason"), [
    ({}, 401, "missing_key"),
    ({"authorization": "Basic k-one"}, 401, "missing_key"),
    ({"authorization": "Bearer "}, 401, "missing_key"),
    ({"authorization": "Bearer k-three"}, 403, "unknown_key"),
    ({"x-api-key": "K-ONE"}, 403, "unknown_key"),
])
def test_missing_is_401_and_wrong_is_403(headers: dict[str, str], status: int,
                                         reason: str) -> None:
    with pytest.raises(RequestRejectedError) as info:
        CHECK.identify(headers)
    assert info.value.status == status
    assert isinstance(info.value, KeyRefusedError) and info.value.reason == reason


def test_no_configured_key_means_no_check() -> None:
    check = ApiKeyCheck([])
    assert not check.enabled
    assert check.identify({}) is None
    check.admit(None, events("a"))


def test_account_scopes_take_exact_ids_prefixes_and_everything() -> None:
    scope = AccountScope(["acct-1", "shop-*"])
    assert scope.allows("acct-1") and scope.allows("shop-") and scope.allows("shop-42")
    assert not scope.allows("acct-10") and not scope.allows("acct-") and not scope.allows("sho")
    assert AccountScope(["*"]).allows("anything")
    assert not AccountScope(["acct-1"]).allows("ACCT-1")


def test_an_event_outside_the_keys_accounts_is_403_naming_index_and_account(
        tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    write_key_file(path, KeyFile([record("shop", "key-shop", ["shop-*"])]))
    check = ApiKeyCheck([], str(path))
    caller = check.identify({"x-api-key": "key-shop"})
    check.admit(caller, events("shop-1", "shop-2"))
    with pytest.raises(KeyRefusedError) as info:
        check.admit(caller, events("shop-1", "acct-9", "shop-3", "other"))
    error = info.value
    assert (error.status, error.error, error.key_name) == (403, "account_not_allowed", "shop")
    assert "'acct-9' (event index 1)" in error.message
    assert [(p.index, p.field) for p in error.problems] == [(1, "$.account_id"),
                                                           (3, "$.account_id")]
    assert error.events == 4


def test_the_rate_limit_refuses_the_whole_request_and_says_when_to_retry() -> None:
    clock = Clock()
    bucket = TokenBucket(rate_per_s=10, burst=20, now=clock())
    assert bucket.take(15, clock()) == 0
    assert bucket.take(10, clock()) == pytest.approx(0.5)  # 5 left, 5 more in 0.5 s
    assert bucket.take(5, clock()) == 0  # the refused request took nothing
    clock.now += 1.0
    assert bucket.take(10, clock()) == 0
    assert math.isinf(bucket.take(21, clock()))  # over the burst: never


def test_a_key_over_its_rate_gets_429_with_retry_after_and_over_its_burst_413(
        tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "keys.json"
    write_key_file(path, KeyFile([record("slow", "key-slow", ["*"], rate=2, burst=3)]))
    check = ApiKeyCheck([], str(path), clock=clock)
    caller = check.identify({"authorization": "Bearer key-slow"})
    check.admit(caller, events("a", "b", "c"))
    with pytest.raises(KeyRefusedError) as limited:
        check.admit(caller, events("a", "b"))
    assert (limited.value.status, limited.value.error) == (429, "rate_limited")
    assert limited.value.headers == {"retry-after": "1"}
    with pytest.raises(KeyRefusedError) as burst:
        check.admit(caller, events("a", "b", "c", "d"))
    assert (burst.value.status, burst.value.error) == (413, "over_key_burst")
    clock.now += 1.0
    check.admit(caller, events("a", "b"))


def test_a_reload_picks_up_created_and_revoked_keys_and_keeps_the_buckets(
        tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "keys.json"
    write_key_file(path, KeyFile([record("a", "key-a", ["*"], rate=1, burst=2)]))
    check = ApiKeyCheck([], str(path), clock=clock)
    caller = check.identify({"x-api-key": "key-a"})
    check.admit(caller, events("x", "y"))  # bucket empty now
    assert check.reload() is False  # unchanged file: nothing to do
    write_key_file(path, KeyFile([record("a", "key-a", ["*"], rate=1, burst=2),
                                  record("b", "key-b", ["acct-*"])]))
    assert check.reload() is True
    assert check.names == ["a", "b"]
    with pytest.raises(KeyRefusedError):  # a reload does not refill a key's bucket
        check.admit(check.identify({"x-api-key": "key-a"}), events("x"))
    write_key_file(path, KeyFile([record("b", "key-b", ["acct-*"])]))
    check.reload()
    with pytest.raises(KeyRefusedError) as revoked:
        check.identify({"x-api-key": "key-a"})
    assert revoked.value.reason == "unknown_key"


def test_a_broken_keys_file_stops_the_start_and_a_broken_reload_keeps_the_keys(
        tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    with pytest.raises(KeyFileError, match="No such file or directory"):
        ApiKeyCheck([], str(path))
    write_key_file(path, KeyFile([record("a", "key-a", ["*"])]))
    check = ApiKeyCheck([], str(path))
    path.write_text('{"keys": [{"name": "a", "sha256": "not-a-hash", "accounts": ["*"]}]}')
    with pytest.raises(KeyFileError, match="sha256"):
        check.reload()
    assert check.identify({"x-api-key": "key-a"}) is not None
    assert check.enabled


@pytest.mark.parametrize(("doc", "problem"), [
    ({"keys": [{"name": "a b", "sha256": "0" * 64, "accounts": ["*"]}]}, "name"),
    ({"keys": [{"name": "a", "sha256": "0" * 64, "accounts": []}]}, "accounts"),
    ({"keys": [{"name": "a", "sha256": "0" * 64, "accounts": ["x*y*"]}]}, "accounts"),
    ({"keys": [{"name": "a", "sha256": "0" * 64, "accounts": ["*"], "rate_per_s": 1}]},
     "rate_per_s and burst go together"),
    ({"keys": [{"name": "a", "sha256": "0" * 64, "accounts": ["*"]},
               {"name": "a", "sha256": "1" * 64, "accounts": ["*"]}]}, "repeated key name: a"),
    ({"keys": [{"name": "a", "sha256": "0" * 64, "accounts": ["*"], "key": "plain"}]},
     "unknown field"),
])
def test_the_keys_file_is_validated(tmp_path: Path, doc: dict[str, Any], problem: str) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(msgspec.json.encode(doc))
    with pytest.raises(KeyFileError, match=problem):
        read_key_file(path)


def test_keys_are_high_entropy_and_only_their_hash_is_written(tmp_path: Path) -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    key = keys.pop()
    assert key.startswith("erk_") and len(key) == 4 + 43  # 256 random bits
    path = tmp_path / "keys.json"
    write_key_file(path, KeyFile([record("a", key, ["*"])]))
    assert key not in path.read_text() and key_hash(key) in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600


def test_refusals_are_logged_by_key_name_throttled_and_never_with_the_key(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    refusals = RefusalLog(every_s=10, clock=clock)
    error = KeyRefusedError(429, "rate_limited", "over", [], key_name="shop",
                            reason="rate_limited")
    with caplog.at_level("INFO", logger="gateway.auth"):
        for _ in range(5):
            refusals.refused(error, "r-1")
        clock.now += 11
        refusals.refused(error, "r-2")
        with pytest.raises(KeyRefusedError):
            CHECK.identify({"x-api-key": "s3cret-presented"})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "key=shop reason=rate_limited" in lines[0] and "similar_since_last=4" in lines[1]
    assert all("s3cret-presented" not in line for line in lines)
