"""``eventray status`` / ``eventray stop`` through a dashboard address only (Ray's job and state
APIs), against a real local stack on free ports; the actors' reprs in the state API; and a
restarted supervisor's ``shutdown`` reaching its predecessor's consumers."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pipeline_helpers import (
    pipeline_settings,
    produce_events,
    ray_runtime_env,
    wait_for,
    wait_until_drained,
    workload,
)

from actors.kafka_admin import end_offsets
from cluster.local.processes import free_port
from cluster.local.stack import down, running_stack, stack_settings, status, up
from cluster.pipeline_actors import pipeline_actors
from cluster.settings import Settings, load_settings
from cluster.supervisor import (
    SUPERVISOR_NAME,
    start_pipeline,
    stop_pipeline,
    supervisor_actor,
)

pytestmark = pytest.mark.integration

EVENTRAY = str(Path(sys.executable).parent / "eventray")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A whole local stack (Kafka, emulator, Ray head) on free ports, never the defaults."""
    settings = load_settings(environ={}).with_overrides({
        "local.state_dir": str(tmp_path_factory.mktemp("control") / "state"),
        "local.kafka_port": 0,
        "local.kafka_controller_port": 0,
        "local.kafka_heap": "256m",
        "local.snowflake_port": 0,
        "local.cache_dir": str(load_settings().cache_path()),
        "ray.dashboard_port": free_port(),
        "ray.object_store_bytes": 150_000_000,
    })
    up(settings, out=io.StringIO())
    try:
        yield settings
    finally:
        down(settings, out=io.StringIO())


@pytest.fixture(scope="module")
def dashboard(stack: Settings) -> Iterator[str]:
    """The stack's dashboard URL, with this test process connected to its Ray as a driver
    (to start pipelines and to restart actors, as a fault would)."""
    import ray

    info = running_stack(stack)
    assert info is not None
    ray.init(address=info.ray_address, namespace="eventray-control-tests",
             runtime_env=ray_runtime_env(), log_to_driver=False)
    try:
        yield info.dashboard_url
    finally:
        ray.shutdown()


@pytest.fixture
def pipeline(stack: Settings, dashboard: str) -> Iterator[Settings]:
    """A pipeline of its own (topics, tables, namespace) on the stack's Kafka and emulator."""
    pointed = stack_settings(stack)
    settings = pipeline_settings(pointed.kafka, pointed.snowflake, partitions=4)
    start_pipeline(settings.pipeline_config())
    try:
        yield settings
    finally:
        stop_pipeline(settings.pipeline_config())  # a no-op once the test stopped it


def eventray(settings: Settings, stack: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process, with the pipeline's namespace and the stack's
    state dir as its only settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTRAY_")}
    env["EVENTRAY_RAY__NAMESPACE"] = settings.ray.namespace
    env["EVENTRAY_LOCAL__STATE_DIR"] = stack.local.state_dir
    return subprocess.run([EVENTRAY, *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def live_actors(dashboard: str, namespace: str) -> list[Any]:
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard, filters=[("ray_namespace", "=", namespace)],
                         detail=True, limit=1000)
    return [a for a in actors if a.state != "DEAD"]


def stack_is_up(stack: Settings, dashboard: str) -> None:
    from confluent_kafka.admin import AdminClient

    assert all(service.alive for service in status(stack))
    assert httpx.get(f"{dashboard}/api/version", timeout=5).status_code == 200
    pointed = stack_settings(stack)
    assert len(AdminClient(pointed.kafka.client_config()).list_topics(timeout=10).brokers) == 1


def restart_supervisor_without_reconciling(settings: Settings) -> Any:
    """Kill the supervisor for good and create a new one that has not reconciled (and will
    not during the test): it knows no partitions, while its predecessor's actors run on."""
    import ray

    config = settings.pipeline_config()
    namespace = config.namespace
    ray.kill(ray.get_actor(SUPERVISOR_NAME, namespace=namespace), no_restart=True)
    wait_for("the supervisor's name to be released",
             lambda: SUPERVISOR_NAME not in {a["name"] for a in ray.util.list_named_actors(
                 all_namespaces=True) if a["namespace"] == namespace}, timeout=60)
    patient = settings.with_overrides({"pipeline.reconcile_interval_s": 3600.0})
    supervisor = supervisor_actor().options(
        name=SUPERVISOR_NAME, namespace=namespace, lifetime="detached", max_restarts=-1,
        max_concurrency=8, num_cpus=0,
    ).remote(patient.pipeline_config())
    assert ray.get(supervisor.ready.remote(), timeout=60) is False  # no partitions known
    assert len(pipeline_actors(namespace).consumers) == 4
    return supervisor


# --------------------------------------------------------------------------- tests


@pytest.mark.timeout(600)
def test_status_and_stop_by_dashboard_address_leave_the_stack_running(
        stack: Settings, dashboard: str, pipeline: Settings) -> None:
    import ray

    config = pipeline.pipeline_config()
    topic, namespace = config.topics.events, config.namespace
    work = workload(1200, seed=5)
    produce_events(config.kafka, topic, [e for batch in work.batches for e in batch])
    wait_until_drained(config)
    ends = end_offsets(config.kafka, topic)
    # Ray restarts a crashed consumer; the restarted one's repr carries the offset it resumes at.
    ray.kill(ray.get_actor(f"consumer:{topic}:0", namespace=namespace), no_restart=False)
    wait_for("consumer 0 to restart", lambda: any(
        a.name == f"consumer:{topic}:0" and a.state == "ALIVE" and a.num_restarts == 1
        for a in live_actors(dashboard, namespace)), timeout=120)

    shown = eventray(pipeline, stack, "status", "--address", dashboard)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "local stack" not in shown.stdout  # --address: the remote view only
    assert f"pipeline topic={topic} namespace={namespace}" in shown.stdout
    for p, end in ends.items():
        row = next(line for line in shown.stdout.splitlines()
                   if line.startswith(f"{p} ") and f"consumer:{topic}:{p}" in line)
        assert row.split()[4:7] == [str(end), str(end), "0"]  # committed, end, lag
    assert f"consumer({topic}/0 committed={ends[0]})" in shown.stdout

    # The reprs, as the dashboard's actor list and the state API show them.
    reprs = {a.name: a.repr_name for a in live_actors(dashboard, namespace)}
    assert reprs[f"consumer:{topic}:0"] == f"consumer({topic}/0 committed={ends[0]})"
    for p in (1, 2, 3):  # created on empty tables
        assert reprs[f"consumer:{topic}:{p}"] == f"consumer({topic}/{p} committed=none)"
    assert reprs["sink:0"] == "sink(0 wrote=-)"  # its partitions: the supervisor's to say
    assert reprs["sink:1"] == "sink(1 wrote=-)"
    assert reprs[SUPERVISOR_NAME] == f"supervisor(namespace={namespace} topic={topic} sinks=2)"

    stopped = eventray(pipeline, stack, "stop", "--address", dashboard)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    expected = [SUPERVISOR_NAME, *(f"consumer:{topic}:{p}" for p in range(4)), "sink:0",
                "sink:1"]
    for name in expected:
        assert f"  stopped {name}\n" in stopped.stdout
    assert f"stopped 7 actors: {', '.join(expected)}" in stopped.stdout
    assert live_actors(dashboard, namespace) == []
    stack_is_up(stack, dashboard)

    after = eventray(pipeline, stack, "status", "--address", dashboard)
    assert after.returncode == 0, after.stdout + after.stderr
    assert f"no pipeline is running in namespace {namespace}" in after.stdout
    assert f"actors: none in namespace {namespace}" in after.stdout
    again = eventray(pipeline, stack, "stop", "--address", dashboard)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to stop" in again.stdout


@pytest.mark.timeout(600)
def test_stop_after_a_supervisor_restart_stops_the_consumers_it_does_not_know(
        stack: Settings, dashboard: str, pipeline: Settings) -> None:
    namespace = pipeline.ray.namespace
    restart_supervisor_without_reconciling(pipeline)

    # Without --address: the local stack's table, then the pipeline through its dashboard.
    shown = eventray(pipeline, stack, "status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "local stack" in shown.stdout and f"Ray dashboard: {dashboard}" in shown.stdout

    stopped = eventray(pipeline, stack, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "found 4 consumers and 2 sinks" in stopped.stdout
    assert live_actors(dashboard, namespace) == []
    stack_is_up(stack, dashboard)


@pytest.mark.timeout(600)
def test_stop_pipeline_after_a_supervisor_restart_stops_every_consumer(
        dashboard: str, pipeline: Settings) -> None:
    # The supervisor's own shutdown (``stop_pipeline``, ``cluster.job --stop-on-exit``) finds
    # the consumers by name: before, a restarted supervisor stopped only the sinks.
    namespace = pipeline.ray.namespace
    restart_supervisor_without_reconciling(pipeline)
    assert stop_pipeline(pipeline.pipeline_config()) is True
    wait_for("every pipeline actor to be gone", lambda: live_actors(dashboard, namespace) == [],
             timeout=60)


def test_an_unreachable_address_fails_with_a_clear_message(stack: Settings) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    for command in ("status", "stop"):
        result = eventray(stack, stack, command, "--address", address)
        assert result.returncode == 1
        assert re.search(rf"eventray {command}: error: the Ray dashboard at {re.escape(address)}"
                         r" does not answer", result.stderr), result.stderr


def test_a_control_job_refuses_to_act_on_another_ray_session(dashboard: str) -> None:
    # Several Ray instances on one machine: the job's driver may reach another one; then it
    # must do nothing (not stop someone else's pipeline) and say so.
    from ray.job_submission import JobStatus, JobSubmissionClient

    from cluster.cli.dashboard_client import job_runtime_env, parse_control_log

    client = JobSubmissionClient(dashboard)
    job = client.submit_job(
        entrypoint="python -m cluster.control stop --namespace eventray-control-tests "
                   "--session session_not_this_one",
        runtime_env=job_runtime_env(upload=True))
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    wait_for("the control job to end", lambda: client.get_job_status(job) in terminal,
             timeout=120)
    progress, result, error = parse_control_log(client.get_job_logs(job))
    assert client.get_job_status(job) == JobStatus.FAILED
    assert (progress, result) == ([], None)
    assert error is not None and "not session_not_this_one" in error
