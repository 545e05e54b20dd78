"""The settings tree: one msgspec Struct, loaded from a TOML file, overridden by env vars.

Sources, lowest to highest precedence: defaults in the Structs, the TOML file
(``EVENTRAY_CONFIG`` or ``--config``), then ``EVENTRAY_<SECTION>__<KEY>`` environment
variables (``__`` separates nesting levels, e.g. ``EVENTRAY_KAFKA__BOOTSTRAP_SERVERS``).
Env values are parsed as TOML values when they parse (numbers, booleans, arrays) and taken as
strings otherwise. Any invalid setting fails at load with its dotted key and the reason.

Kafka, topic and Snowflake settings are given once and copied into the gateway's and the
pipeline's own config Structs, which is all those packages ever see.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from actors.config import (
    AutoscaleConfig,
    ConsumerConfig,
    KafkaConnection,
    PipelineConfig,
    SinkConfig,
    SnowflakeConfig,
    TopicsConfig,
    ValidationRules,
)
from actors.exceptions import ConfigError
from actors.secret import Secret, secret_dec_hook, secret_enc_hook
from gateway.config import GatewayConfig, ProducerTuning, ServeConfig

ENV_PREFIX = "EVENTRAY_"
CONFIG_ENV = "EVENTRAY_CONFIG"
# A single-broker Kafka (the local stack, tests, benchmarks): topics can only have one replica,
# and durability "local" accepts that (``actors.durability``); production keeps 3 and 2.
SINGLE_BROKER_TOPICS: Mapping[str, Any] = {
    "topics.replication_factor": 1,
    "topics.min_insync_replicas": 1,
    "topics.durability": "local",
}


class RayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the Ray cluster is and how the local head node starts."""

    address: str = "auto"
    namespace: str = "eventray"
    # The address this driver's node is known by; set to 127.0.0.1 for the local stack
    # (None: Ray picks the address it routes to other nodes with).
    node_ip_address: str | None = None
    dashboard_host: str = "127.0.0.1"
    dashboard_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8265
    object_store_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1_000_000_000
    num_cpus: int | None = None


class LocalConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The embedded local stack (``eventray up``)."""

    state_dir: str = ".eventray"
    kafka_version: str = "4.1.1"
    kafka_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9092
    kafka_controller_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9093
    kafka_heap: str = "1g"
    snowflake_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8089
    cache_dir: str = "~/.cache/eventray"


class GatewaySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[gateway]`` section: gateway settings without the shared Kafka/topic ones."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    max_events_per_request: Annotated[int, msgspec.Meta(gt=0)] = 10_000
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 8 * 1024 * 1024
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    max_inflight_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 64 * 1024 * 1024
    api_keys: list[Secret] = []
    api_keys_file: str = ""
    api_keys_reload_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    producer: ProducerTuning = ProducerTuning()
    serve: ServeConfig = ServeConfig()


class PipelineSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[pipeline]`` section: consumers, sinks and rules."""

    consumer: ConsumerConfig = ConsumerConfig()
    sink: SinkConfig = SinkConfig()
    rules: ValidationRules = ValidationRules()
    reconcile_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    metrics_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    autoscale: AutoscaleConfig = AutoscaleConfig()


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole settings tree."""

    kafka: KafkaConnection = KafkaConnection()
    topics: TopicsConfig = TopicsConfig()
    snowflake: SnowflakeConfig = SnowflakeConfig()
    ray: RayConfig = RayConfig()
    gateway: GatewaySection = GatewaySection()
    pipeline: PipelineSection = PipelineSection()
    local: LocalConfig = LocalConfig()

    def gateway_config(self) -> GatewayConfig:
        g = self.gateway
        return GatewayConfig(
            host=g.host, port=g.port, max_events_per_request=g.max_events_per_request,
            max_body_bytes=g.max_body_bytes, body_timeout_s=g.body_timeout_s,
            max_inflight_body_bytes=g.max_inflight_body_bytes, api_keys=g.api_keys,
            api_keys_file=g.api_keys_file, api_keys_reload_s=g.api_keys_reload_s,
            kafka=self.kafka, topics=self.topics, producer=g.producer, serve=g.serve,
        )

    def pipeline_config(self) -> PipelineConfig:
        p = self.pipeline
        return PipelineConfig(
            kafka=self.kafka, topics=self.topics, snowflake=self.snowflake,
            consumer=p.consumer, sink=p.sink, rules=p.rules, namespace=self.ray.namespace,
            reconcile_interval_s=p.reconcile_interval_s, metrics_interval_s=p.metrics_interval_s,
            autoscale=p.autoscale,
        )

    def connect_ray(self, **kwargs: Any) -> Any:
        """``ray.init`` against the configured cluster, in the configured namespace.

        The actors this driver creates (the supervisor, and through it the sinks and consumers)
        log at INFO to their worker's ``.err`` file; Ray's workers otherwise have no handler
        and keep only warnings. The driver's own logging is left alone.
        """
        import ray
        from ray.job_config import JobConfig

        job_config = JobConfig()
        job_config.set_py_logging_config(ray.LoggingConfig(encoding="TEXT", log_level="INFO"))
        options: dict[str, Any] = {"address": self.ray.address, "namespace": self.ray.namespace,
                                   "job_config": job_config}
        if self.ray.node_ip_address is not None:
            options["_node_ip_address"] = self.ray.node_ip_address
            if self.ray.node_ip_address.startswith("127."):
                # Ray otherwise rewrites a loopback GCS address to the machine's external one.
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        return ray.init(**options, **kwargs)

    def state_path(self) -> Path:
        return Path(self.local.state_dir).expanduser().resolve()

    def cache_path(self) -> Path:
        return Path(self.local.cache_dir).expanduser().resolve()

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """A copy with dotted-key overrides applied, e.g. ``{"kafka.bootstrap_servers": ...}``."""
        tree = to_builtins(self, reveal=True)
        for dotted, value in overrides.items():
            _set_path(tree, dotted.split("."), value, source=dotted)
        return _convert(tree)


def to_builtins(settings: Settings, *, reveal: bool = False) -> dict[str, Any]:
    """The settings as plain data; secrets masked unless ``reveal``."""

    def enc(obj: Any) -> Any:
        if isinstance(obj, Secret):
            return obj.reveal() if reveal else str(obj)
        return secret_enc_hook(obj)

    result = msgspec.to_builtins(settings, enc_hook=enc)
    assert isinstance(result, dict)
    return result


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Defaults, then the TOML file, then ``EVENTRAY_*`` env vars. Raises ``ConfigError``."""
    env = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    file_path = path if path is not None else env.get(CONFIG_ENV)
    if file_path:
        tree = _read_toml(Path(file_path))
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        keys = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        if not all(keys):
            raise ConfigError(f"{name}: empty key segment (use __ between levels)")
        _set_path(tree, keys, _parse_env_value(raw), source=name)
    return _convert(tree)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"settings file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file {path}: {exc}") from None


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_path(tree: dict[str, Any], keys: list[str], value: Any, *, source: str) -> None:
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {key} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _convert(tree: dict[str, Any]) -> Settings:
    try:
        return msgspec.convert(tree, Settings, dec_hook=secret_dec_hook, str_keys=True)
    except msgspec.ValidationError as exc:
        # msgspec says "... - at `$.kafka.port`"; make it "kafka.port: ...".
        message = str(exc)
        reason, _, where = message.partition(" - at `")
        key = where.rstrip("`").removeprefix("$.").removeprefix("$")
        unknown = re.search(r"unknown field `([^`]+)`", reason)
        if unknown:  # name the offending key itself, not only its section
            key = f"{key}.{unknown[1]}" if key else unknown[1]
            reason = "unknown setting"
        raise ConfigError(f"invalid setting {key or '(root)'}: {reason}") from None
