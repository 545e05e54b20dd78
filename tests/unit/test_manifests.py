"""Kubernetes manifests validated offline against the operators' CRD schemas.

The API server prunes unknown fields rather than rejecting them, so a plain JSON-schema check
would let a misspelt key through; like ``kubectl apply --validate=strict`` we treat every object
schema that lists ``properties`` (and does not preserve unknown fields) as closed.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.config import ServeConfig
from gateway.serve_app import serve_env

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = Path(os.environ.get("EVENTRAY_CRD_DIR", ROOT.parent / "shared" / "schemas"))


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema, for every CRD under SCHEMA_DIR."""
    if not SCHEMA_DIR.is_dir():
        pytest.fail(f"CRD schemas not found at {SCHEMA_DIR} (set EVENTRAY_CRD_DIR)")
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(SCHEMA_DIR.rglob("*.yaml")):
        # The C loader: the CRDs are megabytes of YAML.
        for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def _closed(schema: Any) -> Any:
    """A copy of ``schema`` in which object schemas with ``properties`` refuse unknown keys."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _closed(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def validate_manifest(manifest: dict[str, Any], schemas: dict[tuple[str, str], Any]) -> None:
    key = (manifest["apiVersion"], manifest["kind"])
    assert key in schemas, f"no CRD for {key}"
    schema = _closed(schemas[key])
    # metadata is validated by the API server's ObjectMeta, not by the CRD.
    schema["properties"]["metadata"] = {"type": "object"}
    jsonschema.validate(manifest, schema)


@pytest.fixture(scope="module")
def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    return _crd_schemas()


def _load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((ROOT / name).read_text()) if doc]


def test_ray_cluster_manifest_matches_the_kuberay_crd(schemas: dict[Any, Any]) -> None:
    (manifest,) = _load("ray-cluster.yaml")
    validate_manifest(manifest, schemas)


def test_ray_cluster_runs_serve_with_haproxy_on_every_node() -> None:
    (manifest,) = _load("ray-cluster.yaml")
    spec = manifest["spec"]
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        group["template"]["spec"]["containers"][0] for group in spec["workerGroupSpecs"]
    ]
    for container in containers:
        env = {item["name"]: item.get("value") for item in container["env"]}
        # The same Serve environment the settings' defaults give (serve_env).
        for name, value in serve_env(ServeConfig()).items():
            assert env[name] == value, name
        # Secrets come from a Secret, never inline.
        assert env["EVENTRAY_SNOWFLAKE__PASSWORD"] is None


def test_a_misspelt_field_is_refused(schemas: dict[Any, Any]) -> None:
    (manifest,) = _load("ray-cluster.yaml")
    broken = copy.deepcopy(manifest)
    broken["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        validate_manifest(broken, schemas)
