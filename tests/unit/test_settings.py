"""Settings loading: defaults, the TOML file, EVENTRAY_* env overrides, errors naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from actors.exceptions import ConfigError
from actors.secret import Secret
from cluster.settings import Settings, load_settings, to_builtins


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "eventray.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_env() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.ray.dashboard_port == 8265
    assert settings.local.kafka_version == "4.1.1"


def test_the_toml_file_sets_nested_values(tmp_path: Path) -> None:
    path = write(tmp_path, """
[kafka]
bootstrap_servers = "broker-1:9092,broker-2:9092"
[topics]
partitions = 12
[pipeline.consumer]
batch_max_events = 250
[local]
kafka_port = 0
""")
    settings = load_settings(path, environ={})
    assert settings.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.topics.partitions == 12
    assert settings.pipeline.consumer.batch_max_events == 250
    assert settings.local.kafka_port == 0
    # Untouched values keep their defaults.
    assert settings.topics.events == "events"


def test_the_config_env_var_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[ray]\nnamespace = "from-file"\n')
    settings = load_settings(environ={"EVENTRAY_CONFIG": str(path)})
    assert settings.ray.namespace == "from-file"


def test_env_overrides_beat_the_file_and_parse_as_toml_values(tmp_path: Path) -> None:
    path = write(tmp_path, "[topics]\npartitions = 12\n[ray]\nnum_cpus = 2\n")
    settings = load_settings(path, environ={
        "EVENTRAY_TOPICS__PARTITIONS": "6",                     # number
        "EVENTRAY_KAFKA__BOOTSTRAP_SERVERS": "10.0.0.1:9092",   # bare string
        "EVENTRAY_PIPELINE__CONSUMER__NUM_CPUS": "0.5",         # float, three levels deep
        "EVENTRAY_SNOWFLAKE__PROTOCOL": '"http"',               # quoted TOML string
        "EVENTRAY_LOCAL__STATE_DIR": "/tmp/state dir",          # spaces stay
        "OTHER_VARIABLE": "ignored",
    })
    assert settings.topics.partitions == 6
    assert settings.kafka.bootstrap_servers == "10.0.0.1:9092"
    assert settings.pipeline.consumer.num_cpus == 0.5
    assert settings.snowflake.protocol == "http"
    assert settings.local.state_dir == "/tmp/state dir"
    assert settings.ray.num_cpus == 2  # from the file, not overridden


def test_env_arrays_and_secrets() -> None:
    settings = load_settings(environ={
        "EVENTRAY_GATEWAY__API_KEYS": '["k1", "k2"]',
        "EVENTRAY_SNOWFLAKE__PASSWORD": "hunter2",
    })
    assert settings.gateway.api_keys == [Secret("k1"), Secret("k2")]
    assert settings.snowflake.password.reveal() == "hunter2"
    dumped = to_builtins(settings)
    assert "hunter2" not in str(dumped)
    assert to_builtins(settings, reveal=True)["snowflake"]["password"] == "hunter2"


@pytest.mark.parametrize(("environ", "key"), [
    ({"EVENTRAY_RAY__DASHBOARD_PORT": "70000"}, "ray.dashboard_port"),
    ({"EVENTRAY_TOPICS__PARTITIONS": "0"}, "topics.partitions"),
    ({"EVENTRAY_TOPICS__PARTITIONS": "many"}, "topics.partitions"),
    ({"EVENTRAY_KAFKA__SECURITY_PROTOCOL": "TLS"}, "kafka.security_protocol"),
    ({"EVENTRAY_KAFKA__NO_SUCH_KEY": "1"}, "kafka.no_such_key: unknown setting"),
    ({"EVENTRAY_NOSECTION__KEY": "1"}, "nosection: unknown setting"),
])
def test_an_invalid_setting_fails_naming_its_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"invalid setting {key}")):
        load_settings(environ=environ)


def test_an_invalid_value_in_the_file_names_its_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[pipeline.sink]\npool_size = -1\n")
    with pytest.raises(ConfigError, match=re.escape("invalid setting pipeline.sink.pool_size")):
        load_settings(path, environ={})


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})
    broken = write(tmp_path, "[kafka\n")
    with pytest.raises(ConfigError, match=str(broken)):
        load_settings(broken, environ={})


def test_env_key_errors() -> None:
    with pytest.raises(ConfigError, match="EVENTRAY_KAFKA____PORT"):
        load_settings(environ={"EVENTRAY_KAFKA____PORT": "1"})
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_settings(environ={"EVENTRAY_TOPICS__EVENTS__NAME": "x", "EVENTRAY_TOPICS__EVENTS":
                               "y"})


def test_with_overrides_is_a_validated_copy() -> None:
    settings = load_settings(environ={"EVENTRAY_SNOWFLAKE__PASSWORD": "s3cret"})
    pointed = settings.with_overrides({"kafka.bootstrap_servers": "127.0.0.1:1234",
                                       "snowflake.port": 8089, "snowflake.host": "127.0.0.1"})
    assert pointed.kafka.bootstrap_servers == "127.0.0.1:1234"
    assert pointed.snowflake.port == 8089
    assert pointed.snowflake.password.reveal() == "s3cret"  # secrets survive the round trip
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"  # the original is untouched
    with pytest.raises(ConfigError, match=re.escape("invalid setting ray.dashboard_port")):
        settings.with_overrides({"ray.dashboard_port": 0})


def test_shared_sections_are_copied_into_the_component_configs() -> None:
    settings = load_settings(environ={"EVENTRAY_TOPICS__PARTITIONS": "8",
                                      "EVENTRAY_RAY__NAMESPACE": "ns"})
    assert settings.gateway_config().topics.partitions == 8
    pipeline = settings.pipeline_config()
    assert pipeline.topics.partitions == 8
    assert pipeline.namespace == "ns"
    assert pipeline.kafka == settings.kafka


def test_paths_expand_the_home_directory(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings(environ={"EVENTRAY_LOCAL__CACHE_DIR": "~/cache"})
    assert settings.cache_path() == tmp_path / "cache"
    assert settings.state_path().is_absolute()
