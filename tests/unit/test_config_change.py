"""What a second start_pipeline with other settings changes (``cluster.config_change``)."""

from __future__ import annotations

import msgspec

from actors.config import PipelineConfig
from actors.secret import Secret
from cluster.config_change import config_change, refusal_message
from cluster.settings import Settings

RUNNING = Settings().pipeline_config()


def changed(**overrides: object) -> PipelineConfig:
    return Settings().with_overrides(overrides).pipeline_config()


def test_the_same_settings_change_nothing() -> None:
    change = config_change(RUNNING, Settings().pipeline_config())
    assert (change.changed, change.refused, change.replaces_actors) == ([], [], False)


def test_batching_is_applied_by_replacing_the_actors() -> None:
    change = config_change(RUNNING, changed(**{"pipeline.sink.pool_size": 3,
                                               "pipeline.consumer.batch_max_events": 100}))
    assert change.changed == ["pipeline.consumer.batch_max_events", "pipeline.sink.pool_size"]
    assert change.refused == []
    assert change.replaces_actors


def test_the_pool_size_and_its_scaling_policy_replace_only_the_supervisor() -> None:
    # The new supervisor resizes the running pool online (cluster.sink_pool).
    change = config_change(RUNNING, changed(**{"pipeline.sink.pool_size": 3,
                                               "pipeline.autoscale.enabled": True,
                                               "pipeline.autoscale.max_sinks": 4}))
    assert change.changed == ["pipeline.autoscale.enabled", "pipeline.autoscale.max_sinks",
                              "pipeline.sink.pool_size"]
    assert not change.replaces_actors


def test_a_rotated_password_is_a_change_that_shows_no_value() -> None:
    rotated = msgspec.structs.replace(
        RUNNING, snowflake=msgspec.structs.replace(RUNNING.snowflake,
                                                   password=Secret("new-secret")))
    change = config_change(RUNNING, rotated)
    assert change.changed == ["snowflake.password"]
    assert change.replaces_actors and change.refused == []
    assert "new-secret" not in repr(change)


def test_supervisor_settings_replace_only_the_supervisor() -> None:
    change = config_change(RUNNING, changed(**{"pipeline.reconcile_interval_s": 7.0,
                                               "pipeline.metrics_interval_s": 9.0}))
    assert change.changed == ["pipeline.metrics_interval_s", "pipeline.reconcile_interval_s"]
    assert not change.replaces_actors


def test_what_identifies_the_data_is_refused_by_its_dotted_name() -> None:
    change = config_change(RUNNING, changed(**{"topics.events": "orders",
                                               "snowflake.events_table": "ORDERS",
                                               "pipeline.sink.pool_size": 3}))
    assert change.refused == ["snowflake.events_table", "topics.events"]
    message = refusal_message(change, "eventray")
    assert message.startswith("the pipeline in namespace eventray runs with other settings "
                              "that cannot change while it runs: snowflake.events_table (")
    assert "topics.events (the consumers are named after the topic" in message
    assert "also changed, applicable online: pipeline.sink.pool_size" in message
    assert "stop the pipeline first (eventray stop)" in message


def test_nested_and_added_keys_are_named() -> None:
    change = config_change(RUNNING, changed(**{"kafka.extra": {"socket.keepalive.enable":
                                                               "true"},
                                               "kafka.bootstrap_servers": "other:9092"}))
    assert change.changed == ["kafka.bootstrap_servers", "kafka.extra",
                              "kafka.extra.socket.keepalive.enable"]
    assert change.refused == ["kafka.bootstrap_servers"]
