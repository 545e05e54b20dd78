"""The chaos scenarios: one fault each, with what it needs before the load and after the count.

A scenario is made fresh for every run and has four steps:

* ``prepare``: before the load starts (e.g. start an extra Ray node and move victims onto it);
* ``inject``: the fault, while the load runs; returns once the fault's active part is over
  (a killed service restarted, a frozen node continued) with a line saying what it did;
* ``healthy``: the scenario's own recovery check (the broker answers, the killed actor runs
  again elsewhere, the new partitions have running consumers), polled from another thread;
* ``cleanup``: after the count (stop the extra node, restore the pool size).

Scenarios that need Ray's failover use an extra worker node (``cluster.chaos.ray_node``) joined
to the local head. Ray only re-creates an actor when its worker process or its node dies: a
frozen (SIGSTOPped) worker on a live node is waited for forever, nothing fails over. A frozen
node is another matter: the GCS stops hearing its raylet, declares the node dead after its
health checks fail (about 65 s with Ray's defaults; ``health_check_*`` settings), and Ray
restarts the node's actors elsewhere. That is "failover" here. When the node is continued, its
raylet learns it was declared dead and exits, and its workers with it; until then (about a second
measured) the old consumer and sink run on beside their replacements: zombies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import msgspec

from actors.config import PipelineConfig
from actors.consumer import consumer_name, sink_index, sink_name
from actors.exceptions import EventrayError
from cluster.chaos import faults, placement
from cluster.chaos.load import AckLog, Say
from cluster.settings import Settings

log = logging.getLogger(__name__)

_SERVICE_OUTAGE_S: Final = 3.0     # a killed service stays down this long before its restart
_ZOMBIE_LINGER_S: Final = 5.0      # frozen this long past failover: the replacements work
_ZOMBIE_RUN_S: Final = 5.0         # the old pair runs this long while its raylet stays frozen
_WRITE_CATCH_S: Final = 15.0       # how long the zombie waits for a warehouse call to freeze
_NODE_EXIT_TIMEOUT_S: Final = 30.0  # a continued node's raylet exits on its own within this
_READY_TIMEOUT_S: Final = 180.0
# The gateway's producer refreshes topic metadata every 2 s (``eventray chaos`` deploys it so).
_NEW_PARTITION_TIMEOUT_S: Final = 30.0


@dataclass
class ChaosContext:
    """What scenarios act on: the stack, the pipeline as it runs now, where to report."""

    settings: Settings          # pointed at the running local stack
    config: PipelineConfig      # the running pipeline's (resize-sinks replaces it)
    dashboard_url: str
    say: Say
    failover_timeout_s: float = 180.0
    acks: AckLog = field(default_factory=AckLog)  # the current run's (the runner sets it)


class Scenario(Protocol):
    name: str

    def prepare(self, ctx: ChaosContext) -> None: ...
    def inject(self, ctx: ChaosContext) -> str: ...
    def healthy(self, ctx: ChaosContext) -> bool: ...
    def cleanup(self, ctx: ChaosContext) -> None: ...


# -- checks shared by scenarios ------------------------------------------------------------


def _all_partitions_running(ctx: ChaosContext, partitions: int | None = None,
                            sinks: int | None = None) -> bool:
    """The supervisor reports every partition's consumer running (and, if given, that many
    partitions and sinks, every sink answering)."""
    import ray

    from cluster.supervisor import get_status

    try:
        status = get_status(ctx.config, timeout_s=15)
    except ray.exceptions.RayError as exc:
        log.debug("pipeline status unavailable: %s", exc)
        return False
    if status is None or not status.partitions:
        return False
    if partitions is not None and len(status.partitions) != partitions:
        return False
    if sinks is not None:
        live = [s for s in status.sinks if s.state != "retiring"]  # retired: on their way out
        if any(s.state != "running" for s in live):
            return False
        # With autoscaling on, the policy owns the size from then on: any size is healthy.
        if not ctx.config.autoscale.enabled and len(live) != sinks:
            return False
    return all(p.state == "running" for p in status.partitions)


def _wait_pipeline_ready(ctx: ChaosContext) -> None:
    placement.wait_until("every partition's consumer to run",
                         lambda: _all_partitions_running(ctx), _READY_TIMEOUT_S)


def _sink_of(ctx: ChaosContext, partition: int) -> str:
    """The sink ``partition`` writes through now, as its consumer reports it (the supervisor
    assigns partitions to sinks; ``p % pool_size`` only until it moves one)."""
    from cluster.supervisor import get_status

    status = get_status(ctx.config, timeout_s=15)
    reported = None if status is None else next(
        (p.sink for p in status.partitions if p.partition == partition), None)
    return reported or sink_name(sink_index(partition, ctx.config.sink.pool_size))


def _partitions(ctx: ChaosContext) -> int:
    from actors.kafka_admin import partition_count

    return partition_count(ctx.config.kafka, ctx.config.topics.events)


# -- services ------------------------------------------------------------------------------


@dataclass
class ServiceKill:
    """kill -9 a stack service's process group, leave it down briefly, restart it on its data
    and ports through ``eventray up``."""

    name: str
    service: str

    def prepare(self, ctx: ChaosContext) -> None:
        return None

    def inject(self, ctx: ChaosContext) -> str:
        pid = faults.kill_service(ctx.settings, self.service)
        ctx.say(f"  fault: killed {self.service} (pid {pid}) with SIGKILL; restarting it in "
                f"{_SERVICE_OUTAGE_S:g}s")
        time.sleep(_SERVICE_OUTAGE_S)
        started = time.monotonic()
        restarted = faults.restart_services(ctx.settings)
        ctx.say(f"  fault: {restarted or self.service + ' restarted'} "
                f"({time.monotonic() - started:.1f}s)")
        return f"killed {self.service} pid {pid}, restarted on its data after " \
               f"{_SERVICE_OUTAGE_S:g}s down"

    def healthy(self, ctx: ChaosContext) -> bool:
        if self.service == "kafka":
            from actors.kafka_admin import partition_counts

            try:
                return bool(partition_counts(ctx.config.kafka, [ctx.config.topics.events]))
            except EventrayError:
                return False
        from snowflake.connector import errors as sf_errors

        from cluster.local.snowflake_emulator import ping

        try:
            return ping(ctx.config.snowflake)
        except sf_errors.Error:
            return False

    def cleanup(self, ctx: ChaosContext) -> None:
        return None


# -- one actor -----------------------------------------------------------------------------


@dataclass
class ConsumerKill:
    """kill -9 the worker process of one partition's consumer; Ray restarts it."""

    run: int
    name: str = "consumer-kill"
    _victim: str = ""
    _pid: int = 0

    def prepare(self, ctx: ChaosContext) -> None:
        partition = (self.run - 1) % _partitions(ctx)
        self._victim = consumer_name(ctx.config.topics.events, partition)

    def inject(self, ctx: ChaosContext) -> str:
        place = placement.alive_actor(ctx.dashboard_url, ctx.config.namespace, self._victim)
        if place is None:
            raise faults.FaultError(f"{self._victim} is not alive")
        faults.kill_ray_worker(place.pid)
        self._pid = place.pid
        ctx.say(f"  fault: killed {self._victim} (worker pid {place.pid}) with SIGKILL")
        return f"killed {self._victim} worker pid {place.pid}"

    def healthy(self, ctx: ChaosContext) -> bool:
        place = placement.alive_actor(ctx.dashboard_url, ctx.config.namespace, self._victim)
        return place is not None and place.pid != self._pid

    def cleanup(self, ctx: ChaosContext) -> None:
        return None


# -- a node --------------------------------------------------------------------------------


@dataclass
class _OnExtraNode:
    """Victims moved onto an extra worker node before the load; the node is removed after."""

    run: int
    _node: faults.ExtraNode | None = None
    _victims: list[str] = field(default_factory=list)

    def victims(self, ctx: ChaosContext) -> list[str]:
        raise NotImplementedError

    def prepare(self, ctx: ChaosContext) -> None:
        self._victims = self.victims(ctx)
        ctx.say(f"  prepare: starting an extra Ray worker node for {', '.join(self._victims)}")
        self._node = faults.start_extra_node(ctx.settings, ctx.dashboard_url)
        placement.move_actors(ctx.dashboard_url, ctx.config.namespace, self._victims,
                              self._node.node_id)
        _wait_pipeline_ready(ctx)
        ctx.say(f"  prepare: {', '.join(self._victims)} run on node {self._node.node_id[:12]}")

    def node(self) -> faults.ExtraNode:
        if self._node is None:
            raise faults.FaultError("the extra node was not started")
        return self._node

    def replaced(self, ctx: ChaosContext) -> bool:
        """Every victim runs again, on another node than the extra one."""
        node_id = self.node().node_id
        for name in self._victims:
            place = placement.alive_actor(ctx.dashboard_url, ctx.config.namespace, name)
            if place is None or place.node_id == node_id:
                return False
        return True

    def healthy(self, ctx: ChaosContext) -> bool:
        return self.replaced(ctx)

    def cleanup(self, ctx: ChaosContext) -> None:
        if self._node is not None:
            faults.remove_extra_node(self._node)


@dataclass
class Zombie(_OnExtraNode):
    """A node cut off from the cluster while its processes run on: SIGSTOP the node that runs
    one consumer and its sink until Ray has failed them over, 5 s more, then SIGCONT the old
    consumer and sink alone. For 5 s they run beside their replacements (actor calls go from
    worker to worker, not through the raylet) while their raylet stays frozen, unreachable as
    the GCS saw it; then the raylet is continued, learns it was declared dead and exits with its
    workers. (Continuing the whole node at once gives the old pair no time: its raylet kills
    them within moments; seen: 0 of 3 runs duplicated before the warehouse was fenced.)

    The node is frozen the moment the sink is seen inside a warehouse call (its main thread
    blocked on a socket, sampled every millisecond): under load that is mostly a write
    transaction, left open while its replacement writes the same batch. At a random moment the
    sink is idle most of the time (a write takes tens of milliseconds a second)."""

    name: str = "zombie"

    def victims(self, ctx: ChaosContext) -> list[str]:
        partition = (self.run - 1) % _partitions(ctx)
        return [consumer_name(ctx.config.topics.events, partition), _sink_of(ctx, partition)]

    def inject(self, ctx: ChaosContext) -> str:
        node = self.node()
        places = [placement.alive_actor(ctx.dashboard_url, ctx.config.namespace, name)
                  for name in self._victims]
        old_pids = {place.pid for place in places if place is not None}
        sink = places[1]
        caught = sink is not None and faults.wait_until_on_socket(sink.pid, _WRITE_CATCH_S)
        frozen = node.worker.freeze()
        during = "inside a warehouse call" if caught else "not seen in a warehouse call"
        ctx.say(f"  fault: SIGSTOP node {node.node_id[:12]} ({len(frozen)} processes: raylet "
                f"and workers of {', '.join(self._victims)}), the sink {during}; waiting for "
                f"Ray's failover")
        started = time.monotonic()
        try:
            placement.wait_until("the GCS to declare the frozen node dead",
                                 lambda: placement.node_is_dead(ctx.dashboard_url,
                                                                node.node_id),
                                 ctx.failover_timeout_s)
            dead_after = time.monotonic() - started
            placement.wait_until(f"{', '.join(self._victims)} to run on another node",
                                 lambda: self.replaced(ctx), ctx.failover_timeout_s)
            failover = time.monotonic() - started
            ctx.say(f"  fault: node declared dead after {dead_after:.0f}s, victims restarted "
                    f"elsewhere after {failover:.0f}s; the old ones continue in "
                    f"{_ZOMBIE_LINGER_S:g}s")
            time.sleep(_ZOMBIE_LINGER_S)
            running = node.worker.thaw(only=old_pids)
            ctx.say(f"  fault: SIGCONT to the old {', '.join(self._victims)} (pids "
                    f"{', '.join(map(str, running))}); their raylet stays frozen "
                    f"{_ZOMBIE_RUN_S:g}s")
            time.sleep(_ZOMBIE_RUN_S)
        finally:
            node.worker.thaw()
        exited = _wait_node_exit(node)
        gone = "were killed" if exited is None else f"exited after {exited:.1f}s"
        ctx.say(f"  fault: SIGCONT to the rest of the node; its processes {gone}")
        return (f"froze the node of {', '.join(self._victims)} ({self._victims[1]} {during}) "
                f"for {failover + _ZOMBIE_LINGER_S:.0f}s (failover after {failover:.0f}s), "
                f"then ran the old pair {_ZOMBIE_RUN_S:g}s beside the new one")


@dataclass
class NodeLoss(_OnExtraNode):
    """kill -9 a worker node that hosts two partitions' consumers."""

    name: str = "node-loss"

    def victims(self, ctx: ChaosContext) -> list[str]:
        count = _partitions(ctx)
        first = (self.run - 1) % count
        partitions = sorted({first, (first + 1) % count})
        return [consumer_name(ctx.config.topics.events, p) for p in partitions]

    def inject(self, ctx: ChaosContext) -> str:
        node = self.node()
        node.worker.kill()
        ctx.say(f"  fault: killed node {node.node_id[:12]} (its whole process group) with "
                f"SIGKILL; Ray restarts {', '.join(self._victims)} elsewhere")
        return f"killed the node running {', '.join(self._victims)}"


def _wait_node_exit(node: faults.ExtraNode) -> float | None:
    """Seconds until the continued node's processes are gone; None if they had to be killed."""
    started = time.monotonic()
    while node.worker.pids():
        if time.monotonic() - started > _NODE_EXIT_TIMEOUT_S:
            node.worker.kill()
            return None
        time.sleep(0.1)
    return time.monotonic() - started


# -- reconfiguration -----------------------------------------------------------------------


def _with_pool_size(config: PipelineConfig, pool_size: int) -> PipelineConfig:
    return msgspec.structs.replace(config, sink=msgspec.structs.replace(config.sink,
                                                                        pool_size=pool_size))


def resize_pool(ctx: ChaosContext, pool_size: int) -> str:
    """Change the sink pool size of the running pipeline; how it was done.

    Through the supervisor: ``start_pipeline`` with the new config, which replaces the
    supervisor alone; the new one resizes the running pool online (``cluster.sink_pool``:
    partitions move between live sinks). A supervisor that keeps the config it started with
    (before issue 12's supervisor work) shows an unchanged pool size; then the pipeline is
    stopped and started again with the new size, said so in the result.
    """
    from cluster.supervisor import get_status, start_pipeline, stop_pipeline

    wanted = _with_pool_size(ctx.config, pool_size)
    start_pipeline(wanted)
    status = get_status(wanted)
    if status is not None and status.pool_size == pool_size:
        ctx.config = wanted
        return "start_pipeline with the new size (the supervisor applied it online)"
    running = status.pool_size if status is not None else "?"
    ctx.say(f"  the supervisor kept pool_size={running}; stopping and starting the pipeline "
            f"with pool_size={pool_size} (a restart, not an online resize)")
    stop_pipeline(ctx.config)
    start_pipeline(wanted)
    ctx.config = wanted
    return "stop_pipeline and start_pipeline (RESTART: the supervisor kept its config)"


@dataclass
class ResizeSinks:
    """Grow the sink pool by one while the load runs; shrink it back after the count."""

    name: str = "resize-sinks"
    _before: int = 0
    _after: int = 0

    def prepare(self, ctx: ChaosContext) -> None:
        self._before = ctx.config.sink.pool_size
        self._after = self._before + 1

    def inject(self, ctx: ChaosContext) -> str:
        ctx.say(f"  fault: sink pool {self._before} -> {self._after}")
        how = resize_pool(ctx, self._after)
        return f"sink pool {self._before}->{self._after} by {how}"

    def healthy(self, ctx: ChaosContext) -> bool:
        return _all_partitions_running(ctx, sinks=self._after)

    def cleanup(self, ctx: ChaosContext) -> None:
        if self._before and ctx.config.sink.pool_size != self._before:
            ctx.say(f"  cleanup: sink pool back to {self._before}")
            resize_pool(ctx, self._before)


@dataclass
class AddPartitions:
    """Grow the events topic by one partition while the load runs (for good: Kafka does not
    shrink topics). The supervisor gives it a consumer and grows the dead-letter topic."""

    name: str = "add-partitions"
    _after: int = 0

    def prepare(self, ctx: ChaosContext) -> None:
        return None

    def inject(self, ctx: ChaosContext) -> str:
        from actors.kafka_admin import grow_topic

        before = _partitions(ctx)
        self._after = before + 1
        grow_topic(ctx.config.kafka, ctx.config.topics.events, self._after)
        ctx.say(f"  fault: topic {ctx.config.topics.events} grown {before} -> {self._after} "
                f"partitions; waiting for the gateway to write to the new one")
        # The load's re-sends come after this: they then hash over the new partition count.
        if ctx.acks.wait_for_partition(before, _NEW_PARTITION_TIMEOUT_S):
            return f"partitions {before}->{self._after}"
        return (f"partitions {before}->{self._after}; the gateway wrote nothing to the new "
                f"partition within {_NEW_PARTITION_TIMEOUT_S:g}s")

    def healthy(self, ctx: ChaosContext) -> bool:
        return _all_partitions_running(ctx, partitions=self._after)

    def cleanup(self, ctx: ChaosContext) -> None:
        return None


# -- the registry --------------------------------------------------------------------------

# Scenarios whose workload breaks no business rule, whatever --invalid-share says. A zombie
# consumer's next batch with a dead letter fails on its fenced dead-letter producer, so it stops
# before it writes again; only batches without dead letters reach the warehouse race (issue 12,
# item 1). Measured before the warehouse was fenced (be7eaa3), zombie, 10,000 events: 0 of 6
# runs duplicated with 3% invalid events, 2 of 3 (243 and 195 rows) with none.
INVALID_SHARE: dict[str, float] = {"zombie": 0.0}

# name -> (factory taking the run number, one line for --help)
SCENARIOS: dict[str, tuple[Callable[[int], Scenario], str]] = {
    "broker-kill": (lambda run: ServiceKill("broker-kill", "kafka"),
                    "kill -9 the Kafka broker, restart it on its data"),
    "emulator-kill": (lambda run: ServiceKill("emulator-kill", "snowflake"),
                      "kill -9 the Snowflake emulator, restart it on its data"),
    "consumer-kill": (ConsumerKill,
                      "kill -9 one consumer actor's worker process"),
    "zombie": (Zombie,
               "SIGSTOP a node with a consumer and its sink past failover, then SIGCONT"),
    "node-loss": (NodeLoss,
                  "kill -9 a Ray worker node that hosts consumers"),
    "resize-sinks": (lambda run: ResizeSinks(),
                     "grow the sink pool by one through start_pipeline"),
    "add-partitions": (lambda run: AddPartitions(),
                       "grow the events topic by one partition"),
}
