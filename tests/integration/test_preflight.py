"""The pipeline's start-up checks against the real broker and emulator, and against a port
where nothing listens: the error names the setting, and comes within the probe's timeout."""

from __future__ import annotations

import logging

import pytest
from msgspec.structs import replace

from actors.config import KafkaConnection, PipelineConfig, SnowflakeConfig
from actors.secret import Secret
from cluster.local.processes import free_port
from cluster.preflight import (
    ServiceUnreachableError,
    check_kafka,
    check_pipeline,
    check_snowflake,
)

pytestmark = pytest.mark.integration


def test_the_running_broker_and_emulator_pass(kafka_connection: KafkaConnection,
                                              snowflake_config: SnowflakeConfig,
                                              caplog: pytest.LogCaptureFixture) -> None:
    config = PipelineConfig(kafka=kafka_connection, snowflake=replace(
        snowflake_config, password=Secret("do-not-print-me")))
    with caplog.at_level(logging.INFO, logger="cluster.preflight"):
        check_pipeline(config)
    logged = [r.getMessage() for r in caplog.records if r.name == "cluster.preflight"]
    assert len(logged) == 1
    assert f"kafka.bootstrap_servers={kafka_connection.bootstrap_servers}" in logged[0]
    assert "snowflake.password=**********" in logged[0]
    assert "do-not-print-me" not in logged[0]


def test_kafka_on_a_closed_port_names_kafka_bootstrap_servers() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ServiceUnreachableError) as raised:
        check_kafka(KafkaConnection(bootstrap_servers=address), timeout_s=2)
    assert str(raised.value).startswith(
        f"cannot reach Kafka at kafka.bootstrap_servers={address} "
        f"(kafka.security_protocol=PLAINTEXT) within 2s: ")


def test_snowflake_on_a_closed_port_names_the_snowflake_settings(
        snowflake_config: SnowflakeConfig) -> None:
    port = free_port()
    closed = replace(snowflake_config, port=port)
    with pytest.raises(ServiceUnreachableError) as raised:
        check_snowflake(closed, timeout_s=2)
    assert str(raised.value).startswith(
        f"cannot reach Snowflake at snowflake.host=127.0.0.1 snowflake.port={port} "
        f"snowflake.protocol=http snowflake.account={closed.account} "
        f"snowflake.user={closed.user}: ")
    assert "Could not connect to Snowflake backend" in str(raised.value)


def test_the_pipeline_check_stops_at_the_first_service_that_does_not_answer(
        kafka_connection: KafkaConnection, snowflake_config: SnowflakeConfig) -> None:
    closed = replace(snowflake_config, port=free_port())
    with pytest.raises(ServiceUnreachableError, match="cannot reach Snowflake"):
        check_pipeline(PipelineConfig(kafka=kafka_connection, snowflake=closed), timeout_s=2)
