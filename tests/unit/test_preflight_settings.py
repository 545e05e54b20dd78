"""The settings the pipeline logs at start (``cluster.preflight.setting_items``) carry their
real dotted names and values, secrets masked; the Ray head's environment reads back as the
stack's addresses."""

from __future__ import annotations

from typing import Any

import msgspec

from cluster.local.stack import ray_env, service_overrides, settings_env
from cluster.preflight import setting_items, snowflake_location
from cluster.settings import Settings, load_settings, to_builtins


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            found.update(leaves(value, f"{name}."))
        else:
            found[name] = value
    return found


def test_logged_settings_use_the_settings_names_and_values() -> None:
    settings = Settings().with_overrides({
        "kafka.bootstrap_servers": "broker:9093",
        "kafka.sasl_password": "kafka-secret",
        "snowflake.password": "sf-secret",
        "snowflake.host": "127.0.0.1",
        "pipeline.consumer.batch_max_events": 123,
        "pipeline.sink.pool_size": 3,
        "pipeline.rules.max_past_age_days": 9,
        "pipeline.reconcile_interval_s": 4.5,
        "ray.namespace": "ns-x",
    })
    items = dict(setting_items(settings.pipeline_config()))
    expected = leaves(to_builtins(settings))
    for name, text in items.items():
        assert name in expected, name
        value = expected[name]
        assert text == (value if isinstance(value, str)
                        else msgspec.json.encode(value).decode()), name
    assert items["kafka.bootstrap_servers"] == "broker:9093"
    assert items["pipeline.consumer.batch_max_events"] == "123"
    assert items["pipeline.sink.pool_size"] == "3"
    assert items["pipeline.rules.max_past_age_days"] == "9"
    assert items["pipeline.reconcile_interval_s"] == "4.5"
    assert items["ray.namespace"] == "ns-x"
    assert items["kafka.sasl_password"] == "**********"
    assert items["snowflake.password"] == "**********"
    assert "secret" not in " ".join(items.values())
    # Unset settings are left out rather than printed as null.
    assert "snowflake.warehouse" not in items


def test_snowflake_location_names_the_settings_that_decide_where() -> None:
    emulator = Settings().with_overrides({"snowflake.host": "127.0.0.1", "snowflake.port": 1,
                                          "snowflake.protocol": "http"}).snowflake
    assert snowflake_location(emulator) == (
        "snowflake.host=127.0.0.1 snowflake.port=1 snowflake.protocol=http "
        "snowflake.account=eventray snowflake.user=eventray")
    account = Settings().with_overrides({"snowflake.account": "org-acct"}).snowflake
    assert snowflake_location(account).startswith(
        "snowflake.account=org-acct (https://org-acct.snowflakecomputing.com)")


def test_the_ray_heads_environment_reads_back_as_the_stacks_addresses() -> None:
    overrides = service_overrides("127.0.0.1:29092", 28089)
    env = settings_env(overrides)
    assert env == {
        "EVENTRAY_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:29092",
        "EVENTRAY_SNOWFLAKE__HOST": "127.0.0.1",
        "EVENTRAY_SNOWFLAKE__PORT": "28089",
        "EVENTRAY_SNOWFLAKE__PROTOCOL": "http",
        # One broker: topics with one replica, accepted as local durability.
        "EVENTRAY_TOPICS__REPLICATION_FACTOR": "1",
        "EVENTRAY_TOPICS__MIN_INSYNC_REPLICAS": "1",
        "EVENTRAY_TOPICS__DURABILITY": "local",
    }
    loaded = load_settings(environ=env)
    assert loaded == Settings().with_overrides(overrides)
    resolved = Settings().with_overrides({"local.kafka_port": 29092,
                                          "local.snowflake_port": 28089})
    assert ray_env(resolved) == env
