"""What the Kubernetes manifests say, run on a local stack of the module's own (``eventray up``
on free ports), with Ray's token authentication on as KubeRay's ``authOptions`` turns it on
(``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` in the head's environment).

* The RayJob's ``entrypoint`` and ``runtimeEnvYAML`` are taken out of ``rayjob.yaml`` and given
  as they stand to ``ray job submit`` (what KubeRay's submitter runs); the pipeline comes up with
  the per-actor resources they ask for, and ``ray job stop`` leaves no actor of it behind.
* The ``serveConfigV2`` text of ``rayservice.yaml`` is deployed with ``serve deploy``; events
  posted to it get 202 and land in the table or the dead-letter topic, exactly once.

Substituted, and only this: the cluster's settings. In a pod they come from ConfigMap
eventray-settings and the Strimzi/Snowflake Secrets as ``EVENTRAY_*`` variables; here the local
head carries the stack's addresses in the same ``EVENTRAY_*`` variables (``cluster.local.stack``)
and job drivers, actors and Serve's builder inherit them. And Serve's port: ``http_options.port``
(8000 in the manifest) becomes a free port, since other stacks may share this machine.
"""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pipeline_helpers import (
    REPO,
    assert_exactly_once,
    dead_letters,
    landed,
    local_stack_settings,
    post_events,
    wait_for,
    warehouse_rows,
    workload,
)

from actors.kafka_admin import ensure_topics
from cluster.local.processes import free_port
from cluster.local.stack import StackInfo, down, stack_settings, up
from cluster.settings import Settings

pytestmark = pytest.mark.integration

K8S = REPO / "cluster" / "k8s"
BIN = Path(sys.executable).parent
TOKEN = secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def manifest(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d and d["kind"] == kind]
    return doc


@contextmanager
def token_auth() -> Iterator[None]:
    """RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in this process's environment while the head
    starts (it inherits them, as KubeRay's pods get them) and stops; restored afterwards."""
    wanted = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cli_env() -> dict[str, str]:
    """A user's shell for the ray/serve commands: the token, none of the test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "EVENTRAY_"))}
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}


def run(*cmd: str, timeout: float = 300) -> str:
    result = subprocess.run(list(cmd), cwd=REPO, env=cli_env(), capture_output=True, text=True,
                            timeout=timeout, check=False)
    text = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)}\n{text[-5000:]}"
    return text


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, StackInfo]]:
    settings = local_stack_settings(tmp_path_factory.mktemp("k8s-local") / "state")
    try:
        with token_auth():
            info = up(settings, out=io.StringIO())
        pointed = stack_settings(settings)
        # Strimzi's Topic Operator makes the topics from kafka-topics.yaml; here, the settings.
        ensure_topics(pointed.kafka, pointed.topics)
        yield pointed, info
    finally:
        with token_auth():
            down(settings, out=io.StringIO())


def dashboard(info: StackInfo) -> httpx.Client:
    return httpx.Client(base_url=info.dashboard_url, headers=AUTH, timeout=30)


def live_actors(info: StackInfo, namespace: str) -> list[dict[str, Any]]:
    """The namespace's actors that are not dead, with their required resources (state API)."""
    with dashboard(info) as client:
        response = client.get("/api/v0/actors", params={
            "filter_keys": "ray_namespace", "filter_predicates": "=",
            "filter_values": namespace, "detail": "true", "limit": 1000})
    response.raise_for_status()
    actors: list[dict[str, Any]] = response.json()["data"]["result"]["result"]
    return [actor for actor in actors if actor["state"] != "DEAD"]


def ray_memory(info: StackInfo) -> float:
    """The Ray ``memory`` resource of the stack's node(s), once the dashboard reports it."""
    nodes: list[dict[str, Any]] = []

    def reported() -> bool:
        nonlocal nodes
        with dashboard(info) as client:
            nodes = client.get("/nodes", params={"view": "summary"}).json()["data"]["summary"]
        return bool(nodes) and all("raylet" in node for node in nodes)

    wait_for("the dashboard's node summary", reported, timeout=60)
    return float(sum(node["raylet"]["resourcesTotal"]["memory"] for node in nodes))


def test_the_dashboard_and_job_api_refuse_requests_without_the_token(
        stack: tuple[Settings, StackInfo]) -> None:
    _, info = stack
    assert httpx.get(f"{info.dashboard_url}/api/jobs/", timeout=10).status_code == 401
    wrong = {"Authorization": f"Bearer {secrets.token_hex(16)}"}
    assert httpx.get(f"{info.dashboard_url}/api/jobs/", headers=wrong,
                     timeout=10).status_code in (401, 403)
    with dashboard(info) as client:
        assert client.get("/api/jobs/").status_code == 200


@pytest.fixture(scope="module")
def pipeline_job(stack: tuple[Settings, StackInfo],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The RayJob's entrypoint and runtimeEnvYAML submitted as they stand; its submission id
    once the pipeline is up."""
    settings, info = stack
    spec = manifest("rayjob.yaml", "RayJob")["spec"]
    runtime_env = tmp_path_factory.mktemp("rayjob") / "runtime_env.yaml"
    runtime_env.write_text(spec["runtimeEnvYAML"])
    wanted = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    consumers = settings.topics.partitions * int(
        wanted["EVENTRAY_PIPELINE__CONSUMER__MEMORY_BYTES"])
    sinks = settings.pipeline.sink.pool_size * int(wanted["EVENTRAY_PIPELINE__SINK__MEMORY_BYTES"])
    need = consumers + sinks
    memory = ray_memory(info)
    if memory < need:
        pytest.fail(f"the local head offers {memory / 2**30:.1f} GiB of Ray memory; the RayJob's "
                    f"actors reserve {need / 2**30:.1f} GiB")
    submission_id = f"eventray-pipeline-{uuid.uuid4().hex[:8]}"
    # KubeRay's submitter: ray job submit --runtime-env-json <runtimeEnvYAML> -- <entrypoint>.
    run(str(BIN / "ray"), "job", "submit", "--address", info.dashboard_url, "--no-wait",
        "--submission-id", submission_id, "--runtime-env", str(runtime_env), "--",
        *spec["entrypoint"].split())

    def status() -> str:
        with dashboard(info) as client:
            return str(client.get(f"/api/jobs/{submission_id}").json()["status"])

    def started() -> bool:
        with dashboard(info) as client:
            logs = client.get(f"/api/jobs/{submission_id}/logs").json()["logs"]
        assert status() in ("PENDING", "RUNNING"), logs[-5000:]
        return "pipeline started topic=" in logs

    try:
        wait_for("the RayJob's pipeline to start", started, timeout=240)
        yield submission_id
    finally:
        if status() in ("PENDING", "RUNNING"):
            run(str(BIN / "ray"), "job", "stop", "--address", info.dashboard_url, submission_id)


def test_the_rayjob_brings_the_pipeline_up_with_the_resources_it_asks_for(
        stack: tuple[Settings, StackInfo], pipeline_job: str) -> None:
    settings, info = stack
    spec = manifest("rayjob.yaml", "RayJob")["spec"]
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    actors = {a["name"]: a for a in live_actors(info, settings.ray.namespace)}
    partitions, pool = settings.topics.partitions, settings.pipeline.sink.pool_size
    assert set(actors) == {"eventray-supervisor", *(f"sink:{i}" for i in range(pool)),
                           *(f"consumer:{settings.topics.events}:{p}" for p in range(partitions))}
    assert all(actor["state"] == "ALIVE" for actor in actors.values()), actors
    consumer = actors[f"consumer:{settings.topics.events}:0"]["required_resources"]
    assert consumer == {"CPU": float(env["EVENTRAY_PIPELINE__CONSUMER__NUM_CPUS"]),
                        "memory": float(env["EVENTRAY_PIPELINE__CONSUMER__MEMORY_BYTES"])}
    sink = actors["sink:0"]["required_resources"]
    assert sink == {"CPU": float(env["EVENTRAY_PIPELINE__SINK__NUM_CPUS"]),
                    "memory": float(env["EVENTRAY_PIPELINE__SINK__MEMORY_BYTES"])}


def test_the_rayservice_serve_config_deploys_and_its_events_land(
        stack: tuple[Settings, StackInfo], pipeline_job: str, tmp_path: Path) -> None:
    settings, info = stack
    config = yaml.safe_load(manifest("rayservice.yaml", "RayService")["spec"]["serveConfigV2"])
    port = free_port()
    config["http_options"]["port"] = port  # the one substitution (see the module docstring)
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    run(str(BIN / "serve"), "deploy", str(path), "--address", info.dashboard_url)
    (app,) = config["applications"]
    (deployment,) = app["deployments"]

    def running() -> bool:
        with dashboard(info) as client:
            apps = client.get("/api/serve/applications/").json()["applications"]
        state = apps.get(app["name"], {})
        assert state.get("status") not in ("DEPLOY_FAILED", "UNHEALTHY"), state.get("message")
        return state.get("status") == "RUNNING"

    wait_for("the gateway application to run", running, timeout=240)
    with dashboard(info) as client:
        details = client.get("/api/serve/applications/").json()["applications"][app["name"]]
    deployed = details["deployments"][deployment["name"]]["deployment_config"]
    wanted_scaling = deployment["autoscaling_config"]
    for key, value in wanted_scaling.items():
        assert deployed["autoscaling_config"][key] == value, key
    assert deployed["ray_actor_options"]["memory"] == deployment["ray_actor_options"]["memory"]
    assert len(details["deployments"][deployment["name"]]["replicas"]) >= (
        wanted_scaling["min_replicas"])

    work = workload(1200, seed=14)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        assert client.get("/readyz").status_code == 200
        for batch in work.batches:
            post_events(client, batch)  # asserts 202, retrying 429/503 as a client would

    config_p = settings.pipeline_config()

    def arrived() -> bool:
        rows = warehouse_rows(config_p.snowflake, config_p.snowflake.events_table,
                              config_p.topics.events)
        return (len(rows) >= len(work.valid_ids) and len(
            dead_letters(config_p.kafka, config_p.topics.dead_letter)) >= len(work.invalid_ids))

    wait_for("the gateway's events to land", arrived, timeout=240)
    assert_exactly_once(landed(settings), work.valid_ids, work.invalid_ids)


def test_ray_job_stop_stops_the_pipeline_and_leaves_no_actor(
        stack: tuple[Settings, StackInfo], pipeline_job: str) -> None:
    settings, info = stack
    assert live_actors(info, settings.ray.namespace)
    run(str(BIN / "ray"), "job", "stop", "--address", info.dashboard_url, pipeline_job,
        timeout=180)
    with dashboard(info) as client:
        job = client.get(f"/api/jobs/{pipeline_job}").json()
        logs = client.get(f"/api/jobs/{pipeline_job}/logs").json()["logs"]
    assert job["status"] == "STOPPED", job
    assert "signal=SIGINT: leaving" in logs and "pipeline stopped" in logs, logs[-3000:]

    def gone() -> bool:
        return live_actors(info, settings.ray.namespace) == []

    wait_for("the pipeline's actors to be gone", gone, timeout=60)


def test_no_secret_value_reaches_the_job_logs(stack: tuple[Settings, StackInfo],
                                              pipeline_job: str) -> None:
    _, info = stack
    with dashboard(info) as client:
        logs = client.get(f"/api/jobs/{pipeline_job}/logs").json()["logs"]
    assert TOKEN not in logs
    assert "snowflake.auth=password" in logs, logs[-3000:]
