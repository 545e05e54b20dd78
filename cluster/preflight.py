"""Before the pipeline starts: log the settings it runs with and check that Kafka and Snowflake
answer, so a wrong address fails in seconds with the setting's dotted name instead of after
the sinks' and consumers' retries deep inside the actors.

``check_pipeline(config)`` is what ``start_pipeline`` calls; ``check_kafka`` and
``check_snowflake`` probe one service each (a metadata request; a login and ``SELECT 1``).
"""

from __future__ import annotations

import logging
from typing import Any, Final

import msgspec

from actors.config import KafkaConnection, PipelineConfig, SnowflakeConfig
from actors.exceptions import EventrayError
from actors.secret import secret_enc_hook

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S: Final = 10.0

# Where PipelineConfig's fields come from in the settings tree
# (cluster.settings.Settings.pipeline_config): these from their own sections, the rest from
# [pipeline].
SETTING_NAMES: Final = {
    "kafka": "kafka",
    "topics": "topics",
    "snowflake": "snowflake",
    "namespace": "ray.namespace",
}


class ServiceUnreachableError(EventrayError):
    """Kafka or Snowflake did not answer where the settings say; the message names them."""


def check_pipeline(config: PipelineConfig, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Log the pipeline's effective settings (secrets masked), then probe Kafka and Snowflake.

    Raises ``ServiceUnreachableError`` for the first that does not answer.
    """
    log.info("pipeline settings: %s", " ".join(
        f"{name}={value}" for name, value in setting_items(config)))
    # The chosen Snowflake credential is there and usable (a key that decrypts) before any
    # network probe: ConfigError naming the setting (actors.snowflake_auth).
    config.snowflake.connect_kwargs()
    check_kafka(config.kafka, timeout_s)
    check_snowflake(config.snowflake, timeout_s)


def setting_items(config: PipelineConfig) -> list[tuple[str, str]]:
    """(dotted setting name, value as text) for every leaf of ``config`` that is set (not
    None), secrets masked."""
    tree: dict[str, Any] = msgspec.to_builtins(config, enc_hook=secret_enc_hook)
    items: list[tuple[str, str]] = []
    for key, value in tree.items():
        _flatten(SETTING_NAMES.get(key, f"pipeline.{key}"), value, items)
    return items


def _flatten(name: str, value: Any, items: list[tuple[str, str]]) -> None:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            _flatten(f"{name}.{key}", child, items)
    elif value is not None:
        text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
        items.append((name, text))


def check_kafka(conn: KafkaConnection, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """A metadata request (list topics) within ``timeout_s``."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    # librdkafka would print a connection error per retry to stderr; the exception says it.
    conf: dict[str, Any] = {**conn.client_config(), "logger": _DebugLogger()}
    admin = AdminClient(conf)
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        reason = error.str() if isinstance(error, KafkaError) else str(error)
        raise ServiceUnreachableError(
            f"cannot reach Kafka at kafka.bootstrap_servers={conn.bootstrap_servers} "
            f"(kafka.security_protocol={conn.security_protocol}) within {timeout_s:g}s: "
            f"{reason}") from None


def check_snowflake(config: SnowflakeConfig, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """A login and ``SELECT 1``, the login bounded by ``timeout_s``."""
    import snowflake.connector

    kwargs = config.connect_kwargs()
    # The probe only logs in: with a database named, the emulator would create it.
    kwargs.pop("database", None)
    kwargs.pop("schema", None)
    kwargs["login_timeout"] = min(timeout_s, config.login_timeout_s)
    kwargs["network_timeout"] = timeout_s
    try:
        with snowflake.connector.connect(**kwargs) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except snowflake.connector.errors.Error as exc:
        raise ServiceUnreachableError(
            f"cannot reach Snowflake at {snowflake_location(config)}: {exc}") from None


def snowflake_location(config: SnowflakeConfig) -> str:
    """The settings that decide where the connector goes, by dotted name."""
    if config.host is None:
        where = (f"snowflake.account={config.account} "
                 f"(https://{config.account}.snowflakecomputing.com)")
    else:
        where = (f"snowflake.host={config.host} snowflake.port={config.port} "
                 f"snowflake.protocol={config.protocol} snowflake.account={config.account}")
    return f"{where} snowflake.user={config.user}"


class _DebugLogger:
    """What confluent-kafka calls for librdkafka's log lines (``logger`` property)."""

    def log(self, _level: int, message: str, *args: Any) -> None:
        log.debug(message, *args)
