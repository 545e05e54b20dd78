"""``eventray chaos`` against a local stack of its own: every scenario once, every acknowledged
event counted against the table and the dead-letter topic.

One stack (Kafka, the emulator, a Ray head) on free ports for the module, the gateway on Serve
and the pipeline as ``eventray run`` deploys them, small runs (a few thousand events). The head
starts with Ray's node health checks tuned down (``RAY_health_check_*``), so a frozen or killed
extra node is declared dead in about two seconds instead of about a minute.

A scenario that loses or duplicates an event fails here: the promise is the accounting, and the
accounting is not relaxed for a scenario that is known to break it (those are ``xfail``, strict,
naming the issue; they turn into failures once fixed, to have the marker removed).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import REPO, local_stack_settings

from cluster.chaos.report import RunResult
from cluster.chaos.runner import RunSpec, run_scenario
from cluster.chaos.scenarios import SCENARIOS, ChaosContext
from cluster.local.processes import free_port
from cluster.local.stack import down, running_stack, settings_env, stack_settings, up
from cluster.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEAD_ENV = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
    # As a user's `eventray up` starts it (conftest sets 0 for the in-process Rays): a head
    # in single-machine mode listens on 127.0.0.1 only, and a `ray start` worker node, which
    # needs cluster mode, looks for it on the machine's external address.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
}
# Small runs: the fault lands after ~600 acknowledged events, the load goes on 4 s after it.
SPEC = RunSpec(events=2000, batch_size=100, rate=400.0, concurrency=4, fault_after=0.3,
               tail_s=4.0, drain_timeout_s=180.0, recovery_timeout_s=180.0,
               give_up_after_s=120.0)


@dataclass(frozen=True)
class Chaos:
    settings: Settings        # pointed at the running stack
    overrides: dict[str, Any]  # what makes load_settings() describe this stack
    ctx: ChaosContext
    url: str


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    import ray

    from actors.kafka_admin import ensure_topics
    from cluster.cli.chaos import gateway_config
    from cluster.supervisor import start_pipeline, stop_pipeline
    from gateway.serve_app import deploy

    base = local_stack_settings(tmp_path_factory.mktemp("chaos") / "state")
    overrides: dict[str, Any] = {
        "local.state_dir": base.local.state_dir, "local.kafka_heap": "256m",
        "local.cache_dir": base.local.cache_dir, "ray.dashboard_port": base.ray.dashboard_port,
        "ray.object_store_bytes": base.ray.object_store_bytes, "gateway.port": free_port(),
        "topics.partitions": 3, "pipeline.consumer.batch_max_events": 200,
        "pipeline.consumer.batch_max_wait_s": 0.3, "pipeline.consumer.poll_timeout_s": 0.1,
        "pipeline.sink.retry_backoff_s": 0.2, "pipeline.reconcile_interval_s": 1.0,
    }
    settings = base.with_overrides(overrides)
    try:
        up_with_fast_node_failure(settings)
        pointed = stack_settings(settings)
        stack = running_stack(settings)
        assert stack is not None
        pointed.connect_ray(log_to_driver=False)
        try:
            ensure_topics(pointed.kafka, pointed.topics)
            url = deploy(gateway_config(pointed))
            start_pipeline(pointed.pipeline_config())
            ctx = ChaosContext(settings=pointed, config=pointed.pipeline_config(),
                               dashboard_url=stack.dashboard_url, say=say,
                               failover_timeout_s=120.0)
            yield Chaos(settings=pointed, overrides=overrides, ctx=ctx, url=url)
            stop_pipeline(ctx.config)
        finally:
            ray.shutdown()
    finally:
        down(settings, out=io.StringIO())


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # the run's progress, shown when a test fails


def up_with_fast_node_failure(settings: Settings) -> None:
    saved = {name: os.environ.get(name) for name in HEAD_ENV}
    os.environ.update(HEAD_ENV)  # the head's processes read them when they start
    try:
        up(settings, out=io.StringIO())
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_once(chaos: Chaos, name: str) -> RunResult:
    factory, _ = SCENARIOS[name]
    result = run_scenario(chaos.ctx, factory(1), 1, spec=SPEC, gateway_url=chaos.url)
    assert result.error is None, result.error
    assert result.acknowledged >= SPEC.events * SPEC.fault_after, result
    assert result.drained, result
    return result


def assert_kept_the_promise(result: RunResult) -> None:
    assert (result.lost, result.duplicated) == (0, 0), result
    assert result.rows + result.dead_lettered == result.acknowledged, result
    assert result.recovery_s is not None, result


@pytest.mark.parametrize("name", ["broker-kill", "emulator-kill", "consumer-kill"])
def test_a_killed_service_or_actor_loses_and_duplicates_nothing(chaos: Chaos,
                                                                name: str) -> None:
    result = run_once(chaos, name)
    assert result.fault.startswith("killed"), result
    assert_kept_the_promise(result)


@pytest.mark.parametrize("name", ["zombie", "node-loss"])
def test_a_frozen_or_lost_node_loses_and_duplicates_nothing(chaos: Chaos, name: str) -> None:
    result = run_once(chaos, name)
    assert_kept_the_promise(result)


def test_resizing_the_sink_pool_loses_and_duplicates_nothing(chaos: Chaos) -> None:
    result = run_once(chaos, "resize-sinks")
    assert result.fault.startswith("sink pool 2->3"), result
    assert chaos.ctx.config.sink.pool_size == 2  # restored after the count
    assert_kept_the_promise(result)


def test_adding_partitions_online_loses_and_duplicates_nothing(chaos: Chaos) -> None:
    result = run_once(chaos, "add-partitions")
    assert result.fault.startswith("partitions 3->4"), result
    assert result.lost == 0, result
    assert result.recovery_s is not None, result
    assert_kept_the_promise(result)


def test_the_command_prints_the_table_writes_json_and_exits_by_the_count(
        chaos: Chaos, tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTRAY_")}
    env.update(settings_env(chaos.overrides))
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "eventray"), "chaos", "--scenario", "consumer-kill",
         "--events", "1500", "--rate", "400", "--batch-size", "100", "--tail", "3",
         "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr[-5000:]
    assert "injecting after" in completed.stderr  # progress lines while it runs
    table = completed.stdout
    assert "SCENARIO" in table and "RECOVERY" in table and "consumer-kill" in table
    assert "recovery: seconds from the fault's injection" in table
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == 1
    assert list(runs[0])[:8] == ["scenario", "run", "acknowledged", "rows", "dead_lettered",
                                 "lost", "duplicated", "recovery_s"]
    assert runs[0]["scenario"] == "consumer-kill" and runs[0]["lost"] == 0
