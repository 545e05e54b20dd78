"""Autoscaling on a real autoscaling Ray cluster: Ray's ``AutoscalingCluster`` (the fake
multi-node provider, real raylets, the real autoscaler) with a head and a worker node type.

The head holds the four consumers and one sink and nothing more (2 CPUs: 4 x 0.25 + 1). A
burst builds lag the one sink cannot drain within ``target_drain_s``; the policy grows the pool;
the new sinks (1 CPU each) do not fit, so their pending demand makes the autoscaler launch
worker nodes; once a new sink answers it takes partitions. Then the lag drains, the policy
shrinks the pool back to one sink, the retired sinks are killed, and the autoscaler removes the
idle nodes. Every event lands exactly once throughout.

The worker node type declares CPUs only: the fake provider hands any other resource to the
node as a custom one, and Ray refuses ``memory`` there, so sinks request no memory here (the
KubeRay autoscaler reads a worker group's memory from its pod's limits).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from pipeline_helpers import (
    assert_exactly_once,
    landed,
    pipeline_settings,
    produce_events,
    ray_runtime_env,
    wait_for,
    wait_until_drained,
    workload,
)

from actors.config import KafkaConnection, PipelineConfig, SnowflakeConfig
from cluster.bench.autoscaling_ray import IsolatedAutoscalingCluster
from cluster.supervisor import PipelineStatus, get_status, start_pipeline, stop_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 40_000
SINK_NODE = {"resources": {"CPU": 1, "object_store_memory": 100_000_000}, "node_config": {},
             "min_workers": 0, "max_workers": 3}


@pytest.fixture(scope="module")
def autoscaling_ray(tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[IsolatedAutoscalingCluster]:
    cluster = IsolatedAutoscalingCluster(
        head_resources={"CPU": 2, "object_store_memory": 200_000_000},
        worker_node_types={"ray.worker.sink": SINK_NODE},
        state_dir=Path(tmp_path_factory.mktemp("autoscaling")), idle_timeout_minutes=0.1)
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    cluster.start()
    try:
        cluster.wait_ready()
        wait_for("the autoscaling head", lambda: _connect(cluster.address), timeout=120,
                 interval=1.0)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def _connect(address: str) -> bool:
    try:
        ray.init(address=address, namespace="eventray-autoscaling-tests",
                 runtime_env=ray_runtime_env(), log_to_driver=False)
    except ConnectionError:
        return False
    return True


def alive_nodes() -> list[str]:
    return [str(n["NodeID"]) for n in ray.nodes() if n["Alive"]]


class Watch:
    """Samples the pipeline's status and the cluster's nodes every second, in a thread."""

    def __init__(self, config: PipelineConfig, head: str) -> None:
        self._config, self._head = config, head
        self.max_pool = 0
        self.max_nodes = 0
        self.sink_on_worker_took_partitions = False
        self.last: PipelineStatus | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                status = get_status(self._config, timeout_s=10)
            except ray.exceptions.RayError:
                continue
            if status is None:
                continue
            self.last = status
            self.max_pool = max(self.max_pool, status.pool_size)
            self.max_nodes = max(self.max_nodes, len(alive_nodes()))
            if any(s.node_id not in (None, self._head) and s.partitions
                   for s in status.sinks):
                self.sink_on_worker_took_partitions = True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @contextlib.contextmanager
    def explaining(self) -> Iterator[None]:
        """A wait that times out says what the policy last decided, and why."""
        try:
            yield
        except AssertionError as exc:
            last = None if self.last is None else self.last.autoscale
            raise AssertionError(f"{exc}; max pool {self.max_pool}, max nodes "
                                 f"{self.max_nodes}; last decision: {last}") from exc


def pool_back_to_one(config: PipelineConfig) -> bool:
    status = get_status(config, timeout_s=10)
    return (status is not None and status.pool_size == 1 and len(status.sinks) == 1
            and status.sinks[0].partitions == [0, 1, 2, 3])


def test_a_backlog_grows_the_pool_and_the_cluster_and_both_shrink_after_it_drained(
        autoscaling_ray: IsolatedAutoscalingCluster, kafka_connection: KafkaConnection,
        snowflake_config: SnowflakeConfig) -> None:
    # Batches of 20 events: one sink then needs about a warehouse round trip per 20 events,
    # so the burst outlasts the policy's reaction on a quiet machine too (with 100 per batch
    # one sink drained it before the pool grew: measured on a fresh clone).
    settings = pipeline_settings(kafka_connection, snowflake_config, partitions=4, pool_size=1,
                                 batch_max_events=20, extra={
                                     "pipeline.consumer.num_cpus": 0.25,
                                     "pipeline.sink.num_cpus": 1,
                                     "pipeline.metrics_interval_s": 1.0,
                                     "pipeline.autoscale.enabled": True,
                                     "pipeline.autoscale.target_drain_s": 3.0,
                                     "pipeline.autoscale.min_sinks": 1,
                                     "pipeline.autoscale.max_sinks": 4,
                                     "pipeline.autoscale.cooldown_s": 3.0,
                                 })
    config = settings.pipeline_config()
    (head,) = alive_nodes()
    start_pipeline(config)
    watch = Watch(config, head)
    try:
        work = workload(EVENTS, seed=15)
        for batch in [*work.batches, *work.retry_batches]:  # the burst, client retries last
            produce_events(config.kafka, config.topics.events, batch)
        with watch.explaining():
            wait_for("the pool to grow", lambda: watch.max_pool >= 2, timeout=120)
            wait_for("a worker node to start", lambda: watch.max_nodes >= 2, timeout=120)
            wait_for("a sink on a worker node to take partitions",
                     lambda: watch.sink_on_worker_took_partitions, timeout=120)
            wait_until_drained(config)
            wait_for("the pool to shrink back to one sink", lambda: pool_back_to_one(config),
                     timeout=180)
        wait_for("the idle worker nodes to be removed", lambda: alive_nodes() == [head],
                 timeout=120)
        assert_exactly_once(landed(settings), work.valid_ids, work.invalid_ids)
        last = get_status(config)
        assert last is not None and last.autoscale is not None
        assert last.autoscale.decision is not None
    finally:
        watch.stop()
        stop_pipeline(config)
