from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import pytest

from actors.config import KafkaConnection
from cluster.settings import load_settings
from gateway.config import GatewayConfig, ProducerTuning, ServeConfig
from gateway.producer import producer_config
from gateway.serve_app import deployment_options, serve_env


def test_the_producer_is_idempotent_acks_all_and_times_out_at_the_request_deadline() -> None:
    config = GatewayConfig(
        kafka=KafkaConnection(bootstrap_servers="b:1", extra={"socket.keepalive.enable": "true"}),
        producer=ProducerTuning(linger_ms=7, delivery_timeout_s=2.5),
    )
    conf = producer_config(config)
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["message.timeout.ms"] == 2500
    assert conf["request.timeout.ms"] <= 2500
    assert conf["linger.ms"] == 7
    assert conf["bootstrap.servers"] == "b:1"
    assert conf["socket.keepalive.enable"] == "true"


def test_fixed_replicas_or_autoscaling_from_settings() -> None:
    fixed = deployment_options(ServeConfig(num_replicas=3, replica_num_cpus=0.25))
    assert fixed["num_replicas"] == 3
    assert "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 0.25}
    scaled = deployment_options(ServeConfig(autoscaling=True, min_replicas=2, max_replicas=5))
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"]["min_replicas"] == 2
    assert scaled["autoscaling_config"]["max_replicas"] == 5


def test_haproxy_and_throughput_mode_are_on_by_default() -> None:
    assert serve_env(ServeConfig()) == {
        "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0", "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "15"}
    isolated = serve_env(ServeConfig(), isolate=True)
    base = Path(isolated["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
    try:
        assert isolated["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"].startswith(str(base))
        # Ray nests a 56-char node id under it; HAProxy allows 97 bytes per socket path.
        assert len(isolated["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"]) + 57 <= 97
        assert int(isolated["RAY_SERVE_HAPROXY_STATS_PORT"]) > 0
    finally:
        shutil.rmtree(base)
    off = serve_env(ServeConfig(haproxy=False, throughput_optimized=False), isolate=True)
    assert off == {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
                   "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0"}
    metered = serve_env(ServeConfig(haproxy_request_metrics=True))
    assert metered["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "1"


def test_settings_carry_the_gateway_producer_settings() -> None:
    settings = load_settings(environ={
        "EVENTRAY_GATEWAY__PRODUCER__DELIVERY_TIMEOUT_S": "3.5",
        "EVENTRAY_GATEWAY__PRODUCER__RETRY_AFTER_S": "4",
        "EVENTRAY_KAFKA__BOOTSTRAP_SERVERS": "k:9",
    })
    config = settings.gateway_config()
    assert config.producer.delivery_timeout_s == 3.5
    assert config.producer.retry_after_s == 4
    assert config.kafka.bootstrap_servers == "k:9"


def test_a_request_limit_above_the_producer_queue_is_refused() -> None:
    # Such a request could never be queued: every attempt would be 429.
    with pytest.raises(msgspec.ValidationError, match=r"exceeds producer\.queue_max_messages"):
        msgspec.convert({"max_events_per_request": 100, "producer": {"queue_max_messages": 50}},
                        GatewayConfig)


def test_the_body_bounds_come_from_the_settings() -> None:
    config = load_settings(environ={
        "EVENTRAY_GATEWAY__BODY_TIMEOUT_S": "2.5",
        "EVENTRAY_GATEWAY__MAX_INFLIGHT_BODY_BYTES": str(32 * 1024 * 1024),
    }).gateway_config()
    assert config.body_timeout_s == 2.5
    assert config.max_inflight_body_bytes == 32 * 1024 * 1024
    defaults = GatewayConfig()
    assert (defaults.body_timeout_s, defaults.max_inflight_body_bytes) == (10.0, 64 * 1024 * 1024)


def test_a_body_larger_than_the_inflight_bound_is_refused() -> None:
    # A body of the largest allowed size could never be admitted: every attempt would be 429.
    with pytest.raises(msgspec.ValidationError, match="exceeds max_inflight_body_bytes"):
        msgspec.convert({"max_body_bytes": 2048, "max_inflight_body_bytes": 1024}, GatewayConfig)


def test_haproxy_must_wait_longer_for_a_client_than_the_gateway_waits_for_a_body() -> None:
    # Otherwise HAProxy answers a stalled body first, with its own bare page.
    with pytest.raises(msgspec.ValidationError, match="must exceed body_timeout_s"):
        msgspec.convert({"body_timeout_s": 20, "serve": {"haproxy_client_timeout_s": 15}},
                        GatewayConfig)
    no_haproxy = {"body_timeout_s": 20, "serve": {"haproxy": False}}
    assert msgspec.convert(no_haproxy, GatewayConfig).body_timeout_s == 20
    assert "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S" not in serve_env(ServeConfig(haproxy=False))
