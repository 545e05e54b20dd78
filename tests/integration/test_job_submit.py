"""The README's "Running on a Ray cluster" command, as written, against a local stack of the
test's own (``eventray up`` on free ports): the job reaches the stack's Kafka and emulator with
no flags because the Ray head carries their addresses in its environment; events produced to
the topic land in the table. A job pointed at a closed port fails fast naming the setting."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_helpers import (
    REPO,
    assert_exactly_once,
    dead_letters,
    landed,
    local_stack_settings,
    produce_events,
    wait_for,
    warehouse_rows,
    workload,
)

from cluster.local.processes import ServiceProcess, free_port
from cluster.local.stack import StackInfo, down, ray_env, read_state, stack_settings, up
from cluster.settings import Settings

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).parent / "ray")
README_ENTRYPOINT = ["python", "-m", "cluster.job", "--once"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, StackInfo]]:
    settings = local_stack_settings(tmp_path_factory.mktemp("job-submit") / "state")
    try:
        info = up(settings, out=io.StringIO())
        yield settings, info
    finally:
        down(settings, out=io.StringIO())


def ray_job_submit(dashboard_url: str, *options: str, entrypoint: list[str],
                   timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``ray job submit --address URL --working-dir . [options] -- ENTRYPOINT`` from the repo,
    waiting for the job to end (the CLI's default), as a user types it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "EVENTRAY_"))}
    return subprocess.run(
        [RAY, "job", "submit", "--address", dashboard_url, "--working-dir", ".", *options, "--",
         *entrypoint],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def test_the_readme_command_runs_the_pipeline_on_the_local_stack(
        stack: tuple[Settings, StackInfo]) -> None:
    settings, info = stack
    result = ray_job_submit(info.dashboard_url, entrypoint=README_ENTRYPOINT)
    assert result.returncode == 0, output(result)[-5000:]
    text = output(result)
    assert "pipeline started topic=events namespace=eventray" in text
    # The settings the job ran with are logged once, pointing at the stack, secrets masked.
    assert text.count("pipeline settings: ") == 1
    assert f"kafka.bootstrap_servers={info.bootstrap_servers}" in text
    assert f"snowflake.port={info.snowflake_port}" in text
    # The emulator needs no credential (a loopback host): none set, none logged.
    assert "snowflake.auth=password" in text and "snowflake.password" not in text

    # What a user's producer writes to the topic lands: rows in the table, dead letters.
    pointed = stack_settings(settings)
    config = pointed.pipeline_config()
    work = workload(3000, seed=11)
    produce_events(config.kafka, config.topics.events,
                   [event for batch in work.batches for event in batch])

    def arrived() -> bool:
        rows = warehouse_rows(config.snowflake, config.snowflake.events_table,
                              config.topics.events)
        return (len(rows) >= len(work.valid_ids)
                and len(dead_letters(config.kafka, config.topics.dead_letter))
                >= len(work.invalid_ids))

    wait_for("the events to land in the emulator's table", arrived, timeout=240)
    assert_exactly_once(landed(pointed), work.valid_ids, work.invalid_ids)

    # Stop the pipeline the same way: a job on the head, with no flags.
    stop = ray_job_submit(info.dashboard_url, entrypoint=[
        "python", "-c",
        "from cluster.settings import load_settings; from cluster.supervisor import "
        "stop_pipeline; s = load_settings(); s.connect_ray(); "
        "print('pipeline stopped:', stop_pipeline(s.pipeline_config()))"])
    assert stop.returncode == 0, output(stop)[-5000:]
    assert "pipeline stopped: True" in output(stop)
    from ray.util.state import list_actors

    live = [a.name for a in list_actors(address=info.dashboard_url,
                                        filters=[("ray_namespace", "=", "eventray")])
            if a.state != "DEAD"]
    assert live == []


@pytest.mark.parametrize(("variables", "message"), [
    ({"EVENTRAY_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:{port}"},
     "cannot reach Kafka at kafka.bootstrap_servers=127.0.0.1:{port}"),
    ({"EVENTRAY_SNOWFLAKE__PORT": "{port}"},
     "cannot reach Snowflake at snowflake.host=127.0.0.1 snowflake.port={port}"),
], ids=["kafka", "snowflake"])
def test_a_job_pointed_at_a_closed_port_fails_naming_the_setting(
        stack: tuple[Settings, StackInfo], variables: dict[str, str], message: str) -> None:
    _, info = stack
    closed = free_port()  # nothing listens there
    runtime_env = {"env_vars": {k: v.format(port=closed) for k, v in variables.items()}}
    result = ray_job_submit(info.dashboard_url, "--runtime-env-json", json.dumps(runtime_env),
                            entrypoint=README_ENTRYPOINT)
    text = output(result)
    assert result.returncode != 0, text[-5000:]
    assert f"python -m cluster.job: error: {message.format(port=closed)}" in text, text[-5000:]
    assert "Traceback" not in text, text[-5000:]
    # The supervisor created while the services were probed (so that its process starts
    # meanwhile) created nothing and is gone.
    from ray.util.state import list_actors

    def nothing_left() -> bool:
        return [a.name for a in list_actors(address=info.dashboard_url,
                                            filters=[("ray_namespace", "=", "eventray")])
                if a.state != "DEAD"] == []

    wait_for("the failed job's supervisor to be gone", nothing_left, timeout=60)


def test_a_restarted_ray_head_gets_the_stacks_addresses_again(
        stack: tuple[Settings, StackInfo]) -> None:
    settings, info = stack
    before = read_state(settings)["ray"]
    ServiceProcess("ray", before.process).kill()
    up(settings, out=io.StringIO())
    after = read_state(settings)["ray"]
    assert after.process.pid != before.process.pid
    resolved = settings.with_overrides({"local.kafka_port": info.services["kafka"].ports["broker"],
                                        "local.snowflake_port": info.snowflake_port})
    assert after.env == ray_env(resolved)
    environ = Path(f"/proc/{after.process.pid}/environ").read_bytes().split(b"\0")
    for name, value in after.env.items():
        assert f"{name}={value}".encode() in environ
    # And a job's driver sees them (it inherits the head's environment).
    job = ray_job_submit(after.extra["dashboard_url"], entrypoint=[
        "python", "-c",
        "import os; print('seen', os.environ['EVENTRAY_KAFKA__BOOTSTRAP_SERVERS'])"])
    assert job.returncode == 0, output(job)[-3000:]
    assert f"seen {info.bootstrap_servers}" in output(job)
