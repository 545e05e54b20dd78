"""ray-cluster.yaml's worker group and what the pipeline's actors reserve agree: the sinks scale
on lag and request real resources, each fits a worker pod, and the group's largest size holds
every consumer and the largest pool (so the autoscaler can start a pod for any pending sink)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cluster.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
UNITS = {"Gi": 2**30, "Mi": 2**20, "Ki": 2**10, "m": 1e-3}


def quantity(value: str) -> float:
    for suffix, factor in UNITS.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def ray_cluster() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())["spec"]
    return spec


def pod_settings(tmp_path: Path) -> Settings:
    """The settings file of cluster/k8s/settings.yaml with the plain EVENTRAY_* values of the
    head pod's environment (where `ray job submit` runs cluster.job)."""
    configmap = next(doc for doc in yaml.safe_load_all(
        (ROOT / "cluster/k8s/settings.yaml").read_text()) if doc and doc["kind"] == "ConfigMap")
    ((name, text),) = configmap["data"].items()
    (tmp_path / name).write_text(text)
    container = ray_cluster()["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: str(e["value"]) for e in container["env"]
           if e["name"].startswith("EVENTRAY_") and "value" in e
           and e["name"] != "EVENTRAY_CONFIG"}
    return load_settings(tmp_path / name, environ=env)


def test_the_worker_group_holds_the_pipeline_at_its_largest(tmp_path: Path) -> None:
    settings = pod_settings(tmp_path)
    consumer, sink = settings.pipeline.consumer, settings.pipeline.sink
    autoscale = settings.pipeline.autoscale
    assert autoscale.enabled
    assert sink.num_cpus >= 1 and sink.memory_bytes >= 2**30  # real resources
    (group,) = ray_cluster()["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpus, memory = quantity(limits["cpu"]), quantity(limits["memory"])
    ray_memory = memory - int(group["rayStartParams"]["object-store-memory"])
    # One sink fits a pod, and a pod filled with sinks by CPU has their memory too.
    assert sink.num_cpus <= cpus
    assert (cpus // sink.num_cpus) * sink.memory_bytes <= ray_memory
    # At maxReplicas: every partition's consumer and the largest pool the policy may ask for.
    partitions = settings.topics.partitions
    largest = min(autoscale.max_sinks, partitions)
    assert largest > settings.pipeline.sink.pool_size
    assert group["maxReplicas"] * cpus >= partitions * consumer.num_cpus + largest * sink.num_cpus
    assert group["maxReplicas"] * ray_memory >= (partitions * consumer.memory_bytes
                                                 + largest * sink.memory_bytes)
    assert ray_cluster()["enableInTreeAutoscaling"] is True
