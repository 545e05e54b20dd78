"""What differs between the settings a pipeline runs with and those it is started with again.

``start_pipeline(config)`` against a namespace whose supervisor runs with other settings never
keeps the running ones silently: ``config_change`` names every changed setting (dotted, as in
the settings file) and sorts it into one of three kinds.

* **Refused** (``REFUSED``): what identifies the pipeline's data. The consumers, their
  dead-letter watermarks and the warehouse's committed offsets belong to one events topic, one
  dead-letter topic, one Kafka cluster and one pair of tables; pointing a running pipeline at
  others would restart it from the beginning of another topic or write a topic into a table
  that does not know its offsets. Topic shape settings are read only when topics are created.
  Changing any of these is an explicit act: stop the pipeline, then start it.
* **Supervisor only** (``SUPERVISOR_ONLY``): read by the supervisor alone; the supervisor is
  replaced, the consumers and sinks keep running. The sink pool's size and its scaling policy
  are among them: the new supervisor resizes the running pool online (``cluster.sink_pool``).
* **Everything else** (batching, rules, credentials, actor resources, ...): applied by
  replacing the supervisor, every consumer and every sink, in order (``cluster.supervisor``).

Secrets are compared by digest: a rotated password is a change, and no value is ever shown.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import msgspec

from actors.config import PipelineConfig
from actors.exceptions import ConfigError
from actors.secret import Secret
from cluster.preflight import SETTING_NAMES

_STOP_FIRST: Final = "stop the pipeline first (eventray stop) and start it with the new settings"
_CREATION_ONLY: Final = ("read only when the topics are created; change the existing topic with "
                         "Kafka's tools (the supervisor picks up added partitions)")
_DATA: Final = ("the warehouse's committed offsets belong to one Kafka cluster, topic and pair "
                "of tables")

# Setting (or section prefix) -> why it cannot change while the pipeline runs.
REFUSED: Final[dict[str, str]] = {
    "ray.namespace": "the namespace is where the pipeline's actors are found",
    "topics.events": f"the consumers are named after the topic and {_DATA}",
    "topics.dead_letter": "each consumer's dead-letter watermark is read from this topic",
    "topics.partitions": _CREATION_ONLY,
    "topics.replication_factor": _CREATION_ONLY,
    "topics.min_insync_replicas": _CREATION_ONLY,
    "kafka.bootstrap_servers": _DATA,
    "snowflake.account": _DATA,
    "snowflake.database": _DATA,
    "snowflake.schema": _DATA,
    "snowflake.events_table": _DATA,
    "snowflake.offsets_table": _DATA,
    "snowflake.owners_table": "each partition's owner epoch is kept there",
}
# Settings (or section prefixes) only the supervisor reads (topics.durability: the start-time
# topic check; the pool size and the scaling policy: cluster.sink_pool applies them online).
SUPERVISOR_ONLY: Final = frozenset({"pipeline.reconcile_interval_s",
                                    "pipeline.metrics_interval_s", "topics.durability",
                                    "pipeline.sink.pool_size", "pipeline.autoscale"})


class ConfigChangeRefusedError(ConfigError):
    """A running pipeline was started again with settings it cannot take while it runs."""


class ConfigChange(msgspec.Struct, frozen=True):
    changed: list[str]  # every changed setting, dotted, sorted
    refused: list[str]  # those that cannot be applied to the running pipeline

    @property
    def replaces_actors(self) -> bool:
        """Whether consumers and sinks must be re-created (not only the supervisor)."""
        return any(not _supervisor_only(name) for name in self.changed)


def config_change(running: PipelineConfig, wanted: PipelineConfig) -> ConfigChange:
    """The settings that differ between ``running`` and ``wanted``."""
    before, after = _leaves(running), _leaves(wanted)
    changed = sorted(name for name in before.keys() | after.keys()
                     if before.get(name, _MISSING) != after.get(name, _MISSING))
    return ConfigChange(changed=changed,
                        refused=[name for name in changed if _refusal(name) is not None])


def refusal_message(change: ConfigChange, namespace: str) -> str:
    """Names each refused setting with its reason, and what to do."""
    reasons = "; ".join(f"{name} ({_refusal(name)})" for name in change.refused)
    others = [name for name in change.changed if name not in change.refused]
    also = f" (also changed, applicable online: {', '.join(others)})" if others else ""
    return (f"the pipeline in namespace {namespace} runs with other settings that cannot "
            f"change while it runs: {reasons}{also}. Nothing was changed: {_STOP_FIRST}, or "
            f"start it with the running values")


def _supervisor_only(name: str) -> bool:
    return any(name == key or name.startswith(key + ".") for key in SUPERVISOR_ONLY)


def _refusal(name: str) -> str | None:
    for key, reason in REFUSED.items():
        if name == key or name.startswith(key + "."):
            return reason
    return None


_MISSING: Final = object()


def _leaves(config: PipelineConfig) -> dict[str, Any]:
    """Dotted setting name -> value, for every leaf of ``config`` (secrets as digests)."""
    tree: dict[str, Any] = msgspec.to_builtins(config, enc_hook=_digest_secret)
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        _flatten(SETTING_NAMES.get(key, f"pipeline.{key}"), value, leaves)
    return leaves


def _flatten(name: str, value: Any, leaves: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            _flatten(f"{name}.{key}", child, leaves)
    else:
        leaves[name] = value


def _digest_secret(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return "sha256:" + hashlib.sha256(obj.reveal().encode()).hexdigest()
    raise NotImplementedError(f"cannot encode {type(obj)!r}")
