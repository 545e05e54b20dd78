"""``up`` / ``status`` / ``down`` of the whole local stack, for real, on free ports only."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import pytest
from pipeline_helpers import local_stack_settings

from cluster.local.processes import ServiceProcess, group_members, read_cmdline
from cluster.local.snowflake_emulator import ping
from cluster.local.stack import (
    SERVICES,
    StackNotRunningError,
    down,
    read_state,
    stack_settings,
    state_file,
    status,
    up,
)
from cluster.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return local_stack_settings(tmp_path / "state")


def alive_pids(pgid: int) -> list[int]:
    return [pid for pid in group_members(pgid) if read_cmdline(pid) is not None]


@pytest.mark.timeout(420)
def test_up_is_idempotent_status_reports_and_down_leaves_nothing(settings: Settings) -> None:
    with pytest.raises(StackNotRunningError):
        stack_settings(settings)
    assert status(settings) == []

    try:
        out = io.StringIO()
        info = up(settings, out=out)
        first = read_state(settings)
        assert set(first) == set(SERVICES)
        assert all(s.alive for s in status(settings))
        assert info.bootstrap_servers in out.getvalue()
        assert info.dashboard_url in out.getvalue()
        # The state file holds what the kernel shows for each recorded pid.
        for service in first.values():
            assert tuple(read_cmdline(service.process.pid) or ()) == service.process.cmdline
        data = json.loads(state_file(settings).read_text())
        assert set(data["services"]) == set(SERVICES)
        assert (settings.state_path() / "kafka" / "server.properties").exists()
        assert (settings.state_path() / "logs" / "kafka.log").exists()

        # The stack answers where stack_settings points.
        pointed = stack_settings(settings)
        assert pointed.kafka.bootstrap_servers == info.bootstrap_servers
        assert pointed.ray.address == info.ray_address
        assert pointed.snowflake.port == info.snowflake_port
        assert ping(pointed.snowflake)
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient(pointed.kafka.client_config()).list_topics(timeout=10)
        assert len(metadata.brokers) == 1
        assert httpx.get(f"{info.dashboard_url}/api/version", timeout=5).status_code == 200

        # A job submitted to the dashboard runs with this environment's Python (and Ray).
        from ray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient(info.dashboard_url)
        job = client.submit_job(
            entrypoint="python -c \"import ray; ray.init(); print('job-cpus', "
                       "ray.cluster_resources()['CPU'])\"")
        deadline = time.monotonic() + 120
        while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                 JobStatus.STOPPED}:
            assert time.monotonic() < deadline, "job did not finish"
            time.sleep(1)
        logs = client.get_job_logs(job)
        assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs
        assert "job-cpus 8.0" in logs

        # Twice: nothing new starts.
        again = io.StringIO()
        up(settings, out=again)
        assert read_state(settings) == first
        assert again.getvalue().count("already running") == 3

        # A dead service is reported, and the next up restarts only that one.
        ServiceProcess("snowflake", first["snowflake"].process).kill()
        by_name = {s.name: s for s in status(settings)}
        assert not by_name["snowflake"].alive
        assert by_name["kafka"].alive and by_name["ray"].alive
        with pytest.raises(StackNotRunningError):
            stack_settings(settings)
        up(settings, out=io.StringIO())
        second = read_state(settings)
        assert second["kafka"] == first["kafka"]
        assert second["ray"] == first["ray"]
        assert second["snowflake"].process.pid != first["snowflake"].process.pid
        assert ping(stack_settings(settings).snowflake)
    finally:
        recorded = read_state(settings)
        members = {name: alive_pids(s.process.pid) for name, s in recorded.items()}
        down(settings, out=io.StringIO())

    assert members["ray"], "the Ray head has a process group"
    assert not state_file(settings).exists()
    assert status(settings) == []
    for name, service in recorded.items():
        assert not service.is_alive(), name
        assert alive_pids(service.process.pid) == [], name
        for pid in members[name]:
            assert read_cmdline(pid) is None, f"{name}: pid {pid} of its group still runs"
    # Nothing recorded: down again is a no-op.
    down(settings, out=io.StringIO())


def test_down_does_not_signal_a_pid_that_now_runs_something_else(settings: Settings) -> None:
    # A record whose pid was reused (here: by this very test process) must be left alone.
    import os

    settings.state_path().mkdir(parents=True)
    state_file(settings).write_text(json.dumps({"version": 1, "services": {"kafka": {
        "name": "kafka", "pid": os.getpid(), "cmdline": ["java", "kafka.Kafka", "x"],
        "log_path": "/nonexistent", "ports": {"broker": 1, "controller": 2},
        "address": "127.0.0.1:1", "extra": {}}}}))
    assert [s.alive for s in status(settings)] == [False]
    out = io.StringIO()
    down(settings, out=out)  # we are still here
    assert "not running" in out.getvalue()
    assert not state_file(settings).exists()
