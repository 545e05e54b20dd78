"""Credentials as production uses them: Snowflake by key pair, OAuth token or password, chosen
explicitly; Kafka with OAUTHBEARER/OIDC; every value that can hold a secret masked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from actors.config import KafkaConnection, SnowflakeConfig, is_secret_property
from actors.exceptions import ConfigError
from actors.secret import Secret
from cluster.preflight import check_pipeline, check_snowflake, setting_items
from cluster.settings import Settings, load_settings, to_builtins

PASSPHRASE = "correct horse battery staple"
ACCOUNT = "myorg-myaccount"


class CapturedError(Exception):
    """Stops the connector call once its arguments are seen."""


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What reaches ``snowflake.connector.connect`` (the call raises right after)."""
    import snowflake.connector

    seen: dict[str, Any] = {}

    def connect(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise CapturedError

    monkeypatch.setattr(snowflake.connector, "connect", connect)
    return seen


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def encrypted_pkcs8(key: rsa.RSAPrivateKey, passphrase: str = PASSPHRASE) -> bytes:
    """What ``openssl genrsa 2048 | openssl pkcs8 -topk8 -v2 aes256`` writes (Snowflake's doc)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(passphrase.encode()))


def key_pair_config(path: Path, **changes: Any) -> SnowflakeConfig:
    return SnowflakeConfig(account=ACCOUNT, user="eventray", auth="key_pair",
                           private_key_file=str(path),
                           private_key_passphrase=Secret(PASSPHRASE), **changes)


def test_an_encrypted_pkcs8_key_file_reaches_the_connector_as_a_key_pair_login(
        tmp_path: Path, key: rsa.RSAPrivateKey, captured: dict[str, Any]) -> None:
    path = tmp_path / "rsa_key.p8"
    path.write_bytes(encrypted_pkcs8(key))
    with pytest.raises(CapturedError):
        check_snowflake(key_pair_config(path))
    assert captured["authenticator"] == "SNOWFLAKE_JWT"
    assert "password" not in captured and "token" not in captured
    assert captured["account"] == ACCOUNT and captured["user"] == "eventray"
    # The connector gets the decrypted key, and signs its login JWT with it: the public half
    # of the key generated here verifies what the connector would send.
    from snowflake.connector.auth import AuthByKeyPair

    token = AuthByKeyPair(private_key=captured["private_key"]).prepare(
        account=ACCOUNT, user="eventray")
    claims = jwt.decode(token, key.public_key(), algorithms=["RS256"])
    assert claims["sub"] == "MYORG-MYACCOUNT.EVENTRAY"


def test_the_pem_itself_from_a_secret_works_the_same(
        key: rsa.RSAPrivateKey, captured: dict[str, Any]) -> None:
    config = SnowflakeConfig(account=ACCOUNT, auth="key_pair",
                             private_key=Secret(encrypted_pkcs8(key).decode()),
                             private_key_passphrase=Secret(PASSPHRASE))
    with pytest.raises(CapturedError):
        check_snowflake(config)
    loaded = serialization.load_der_private_key(captured["private_key"], password=None)
    assert loaded.private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    assert "-----BEGIN" not in repr(config) and "**********" in repr(config)


@pytest.mark.parametrize(("auth", "authenticator"), [("oauth", "OAUTH"),
                                                     ("pat", "PROGRAMMATIC_ACCESS_TOKEN")])
def test_a_token_or_token_file_reaches_the_connector(
        auth: str, authenticator: str, tmp_path: Path, captured: dict[str, Any]) -> None:
    with pytest.raises(CapturedError):
        check_snowflake(SnowflakeConfig(account=ACCOUNT, auth=auth,  # type: ignore[arg-type]
                                        token=Secret("tok-inline")))
    assert (captured["authenticator"], captured["token"]) == (authenticator, "tok-inline")
    token_file = tmp_path / "token"
    token_file.write_text("tok-from-file\n")
    captured.clear()
    with pytest.raises(CapturedError):
        check_snowflake(SnowflakeConfig(account=ACCOUNT, auth=auth,  # type: ignore[arg-type]
                                        token_file=str(token_file)))
    assert captured["token"] == "tok-from-file"  # read at each login: rotated in place


def test_a_password_login_sends_the_password_and_no_authenticator(
        captured: dict[str, Any]) -> None:
    with pytest.raises(CapturedError):
        check_snowflake(SnowflakeConfig(account=ACCOUNT, password=Secret("pw")))
    assert captured["password"] == "pw" and "authenticator" not in captured


@pytest.mark.parametrize(("changes", "message"), [
    ({}, "snowflake.auth=password needs snowflake.password"),
    ({"auth": "key_pair"}, "needs exactly one of snowflake.private_key_file and "
                           "snowflake.private_key"),
    ({"auth": "oauth"}, "snowflake.auth=oauth needs exactly one of snowflake.token"),
    ({"auth": "pat", "token_file": "/nonexistent/token"},
     "snowflake.token_file=/nonexistent/token: cannot read it"),
    ({"auth": "key_pair", "private_key_file": "/nonexistent/k.p8"},
     "snowflake.private_key_file=/nonexistent/k.p8: cannot read it"),
])
def test_a_missing_credential_against_a_real_account_stops_the_start_naming_the_setting(
        changes: dict[str, Any], message: str, captured: dict[str, Any]) -> None:
    settings = Settings().with_overrides({"snowflake.account": ACCOUNT, **{
        f"snowflake.{name}": value for name, value in changes.items()}})
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_pipeline(settings.pipeline_config())
    assert captured == {}  # stopped before any connection


def test_a_wrong_or_missing_passphrase_is_named_without_the_key(
        tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "rsa_key.p8"
    path.write_bytes(encrypted_pkcs8(key))
    wrong_passphrase = re.escape("private_key_passphrase does not decrypt")
    with pytest.raises(ConfigError, match=wrong_passphrase) as wrong:
        SnowflakeConfig(auth="key_pair", private_key_file=str(path),
                        private_key_passphrase=Secret("nope")).connect_kwargs()
    assert "BEGIN" not in str(wrong.value)
    missing = re.escape("is encrypted: set snowflake.private_key_passphrase")
    with pytest.raises(ConfigError, match=missing):
        SnowflakeConfig(auth="key_pair", private_key_file=str(path)).connect_kwargs()


def test_only_the_local_emulator_logs_in_without_a_credential() -> None:
    local = SnowflakeConfig(host="127.0.0.1", port=8089, protocol="http").connect_kwargs()
    assert local["password"] == "local-emulator"
    with pytest.raises(ConfigError, match=re.escape("needs snowflake.password")):
        SnowflakeConfig(host="snowflake.internal.example", port=443).connect_kwargs()


def test_snowflake_credentials_come_from_the_environment_masked(tmp_path: Path) -> None:
    settings = load_settings(environ={
        "EVENTRAY_SNOWFLAKE__AUTH": "key_pair",
        "EVENTRAY_SNOWFLAKE__PRIVATE_KEY_FILE": "/etc/eventray/snowflake/rsa_key.p8",
        "EVENTRAY_SNOWFLAKE__PRIVATE_KEY_PASSPHRASE": "pass-marker",
        "EVENTRAY_SNOWFLAKE__TOKEN": "token-marker"})
    assert settings.snowflake.auth == "key_pair"
    items = dict(setting_items(settings.pipeline_config()))
    assert items["snowflake.private_key_passphrase"] == "**********"
    assert "marker" not in repr(settings) + str(to_builtins(settings)) + str(items)


# -- Kafka ----------------------------------------------------------------------------------

def test_oauthbearer_oidc_settings_reach_librdkafka_by_its_names() -> None:
    conn = load_settings(environ={
        "EVENTRAY_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "EVENTRAY_KAFKA__SASL_MECHANISM": "OAUTHBEARER",
        "EVENTRAY_KAFKA__SASL_OAUTHBEARER_METHOD": "oidc",
        "EVENTRAY_KAFKA__SASL_OAUTHBEARER_CLIENT_ID": "eventray",
        "EVENTRAY_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET": "oidc-marker",
        "EVENTRAY_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "https://idp.example/token",
        "EVENTRAY_KAFKA__SASL_OAUTHBEARER_SCOPE": "kafka",
    }).kafka
    conf = conn.client_config()
    assert {k: v for k, v in conf.items() if k.startswith("sasl.")} == {
        "sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.client.id": "eventray",
        "sasl.oauthbearer.client.secret": "oidc-marker",
        "sasl.oauthbearer.token.endpoint.url": "https://idp.example/token",
        "sasl.oauthbearer.scope": "kafka"}
    assert "oidc-marker" not in repr(conn)
    # librdkafka itself takes the properties (a wrong name would raise here).
    from confluent_kafka import Producer

    Producer({**conf, "bootstrap.servers": "127.0.0.1:1"}).flush(0)


def test_oidc_without_its_client_secret_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=re.escape("kafka.sasl_oauthbearer_client_secret")):
        load_settings(environ={"EVENTRAY_KAFKA__SASL_MECHANISM": "OAUTHBEARER",
                               "EVENTRAY_KAFKA__SASL_OAUTHBEARER_METHOD": "oidc",
                               "EVENTRAY_KAFKA__SASL_OAUTHBEARER_CLIENT_ID": "x",
                               "EVENTRAY_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "https://t"})


@pytest.mark.parametrize(("name", "secret"), [
    ("sasl.oauthbearer.client.secret", True), ("ssl.keystore.password", True),
    ("sasl.oauthbearer.config", True), ("ssl.key.pem", True), ("sasl.jaas.config", True),
    ("some.access.token", True), ("socket.keepalive.enable", False),
    ("ssl.endpoint.identification.algorithm", False), ("client.id", False)])
def test_extras_that_name_a_secret_are_masked(name: str, secret: bool) -> None:
    assert is_secret_property(name) == secret
    conn = msgspec.convert({"extra": {name: "extra-marker", "linger.ms": "5"}}, KafkaConnection)
    assert conn.client_config()[name] == "extra-marker"
    assert conn.client_config()["linger.ms"] == "5"
    assert ("extra-marker" in repr(conn)) == (not secret)
    settings = Settings().with_overrides({"kafka.extra": {name: "extra-marker"}})
    assert settings.kafka.client_config()[name] == "extra-marker"  # survives the round trip
    assert ("extra-marker" in str(to_builtins(settings))) == (not secret)


def test_every_secret_setting_is_a_masked_type() -> None:
    """Any setting whose name says it holds a secret is a Secret (or a mapping of them)."""
    secretish = re.compile(r"password|secret|token$|passphrase|private_key$|api_keys$")
    found = []

    def walk(struct: type[msgspec.Struct], prefix: str) -> None:
        for field in msgspec.structs.fields(struct):
            name = f"{prefix}{field.name}"
            kind = field.type
            if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
                walk(kind, f"{name}.")
            elif secretish.search(field.name):
                found.append(name)
                assert "Secret" in str(kind), (name, kind)

    walk(Settings, "")
    assert {"kafka.sasl_password", "kafka.sasl_oauthbearer_client_secret",
            "kafka.ssl_key_password", "kafka.extra_secrets", "snowflake.password",
            "snowflake.private_key", "snowflake.private_key_passphrase", "snowflake.token",
            "gateway.api_keys"} <= set(found)
