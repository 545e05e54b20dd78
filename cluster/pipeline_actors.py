"""The pipeline's actors in a Ray namespace, found by name in the GCS.

A supervisor knows its partitions only after its first reconciliation, so whatever must reach
every actor of the pipeline (``eventray stop``, a restarted supervisor's ``shutdown``) asks Ray
for the named actors of the namespace instead of trusting any actor's memory.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from actors.consumer import consumer_name, sink_name

_CONSUMER_PREFIX = consumer_name("", 0).split(":", 1)[0] + ":"  # "consumer:"
_SINK_PREFIX = sink_name(0).rsplit(":", 1)[0] + ":"             # "sink:"


class PipelineActorNames(msgspec.Struct, frozen=True):
    consumers: list[str]
    sinks: list[str]


def classify(names: Iterable[str], topic: str | None = None) -> PipelineActorNames:
    """The consumer (of ``topic``, or of any topic) and sink names among ``names``, sorted."""
    consumer_prefix = _CONSUMER_PREFIX if topic is None else consumer_name(topic, 0)[:-1]
    consumers = [n for n in names
                 if n.startswith(consumer_prefix) and n.rsplit(":", 1)[-1].isdigit()]
    sinks = [n for n in names if n.startswith(_SINK_PREFIX) and n[len(_SINK_PREFIX):].isdigit()]
    return PipelineActorNames(consumers=sorted(consumers, key=_by_number),
                              sinks=sorted(sinks, key=_by_number))


def _by_number(name: str) -> tuple[str, int]:
    head, _, number = name.rpartition(":")
    return head, int(number)


def named_actors(namespace: str) -> list[str]:
    """Names of the live, pending or restarting named actors in ``namespace`` (a dead actor's
    name is released, so it is not listed)."""
    import ray

    return sorted(str(entry["name"])
                  for entry in ray.util.list_named_actors(all_namespaces=True)
                  if entry["namespace"] == namespace)


def pipeline_actors(namespace: str, topic: str | None = None) -> PipelineActorNames:
    return classify(named_actors(namespace), topic)
