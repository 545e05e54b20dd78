"""Exactly once across the loss of a Ray node.

A ``ray.cluster_utils.Cluster`` with a head that runs no work (num_cpus=0) and two worker nodes;
mid-run, the worker hosting some consumers is removed (its processes killed, as in a crash).
Ray re-places the actors on the surviving node (the supervisor re-creates any Ray gave up on),
and the table and the dead-letter topic still hold every event exactly once. Node failure
detection is tuned down to about two seconds via ``_system_config``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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
from ray.cluster_utils import Cluster

from actors.config import KafkaConnection, SnowflakeConfig
from cluster.settings import Settings
from cluster.supervisor import PipelineStatus, get_status, start_pipeline, stop_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST_FAILURE_DETECTION = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": FAST_FAILURE_DETECTION,
    })
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="eventray-node-tests",
                 runtime_env=ray_runtime_env(), log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def settings(cluster: Cluster, kafka_connection: KafkaConnection,
             snowflake_config: SnowflakeConfig) -> Iterator[Settings]:
    settings = pipeline_settings(kafka_connection, snowflake_config, partitions=4,
                                 pool_size=2, batch_max_events=200)
    start_pipeline(settings.pipeline_config())
    try:
        yield settings
    finally:
        stop_pipeline(settings.pipeline_config())


def current_status(settings: Settings) -> PipelineStatus:
    status = get_status(settings.pipeline_config())
    assert status is not None
    return status


def test_removing_a_node_that_hosts_consumers_keeps_exactly_once(
        cluster: Cluster, settings: Settings) -> None:
    config = settings.pipeline_config()
    work = workload(2000, seed=31)
    half = len(work.batches) // 2
    produce_events(config.kafka, config.topics.events,
                   [e for b in work.batches[:half] for e in b])
    wait_for("the first rows", lambda: current_status(settings).totals.rows_written > 0,
             timeout=120, interval=0.1)

    placement = {p.partition: p.node_id for p in current_status(settings).partitions}
    workers: dict[str, Any] = {node.node_id: node for node in cluster.worker_nodes}
    victim_id = next(node_id for node_id in placement.values() if node_id in workers)
    moved = sorted(p for p, node_id in placement.items() if node_id == victim_id)
    cluster.remove_node(workers[victim_id], allow_graceful=False)

    produce_events(config.kafka, config.topics.events,
                   [e for b in work.batches[half:] for e in b])
    produce_events(config.kafka, config.topics.events,
                   [e for b in work.retry_batches for e in b])

    def replaced() -> bool:
        try:
            status = current_status(settings)
        except ray.exceptions.RayError:
            return False  # the supervisor itself may be moving
        return all(p.state == "running" and p.node_id not in (None, victim_id)
                   for p in status.partitions)

    wait_for(f"partitions {moved} to run again off the removed node", replaced, timeout=180)
    wait_until_drained(config)
    assert_exactly_once(landed(settings), work.valid_ids, work.invalid_ids)
    assert victim_id not in {p.node_id for p in current_status(settings).partitions}
