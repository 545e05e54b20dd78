"""Where the pipeline's actors run, and moving some of them onto a chosen node.

The supervisor places actors itself (consumers spread, sinks beside their owner) and offers no
placement control, so a node fault cannot choose its victims directly. To put named actors on
the extra node, ``move_actors`` reserves every CPU the head has left with placement groups
pinned to the head (its ``node:__internal_head__`` resource), kills the actors for good, so the
supervisor re-creates them where there is room (the extra node), and releases the reservation.
The move is a kill of those actors, made before the measured load starts.

Actors are found with Ray's state API (name, state, node, worker pid) through the dashboard.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from actors.exceptions import EventrayError

log = logging.getLogger(__name__)

_HEAD_RESOURCE: Final = "node:__internal_head__"
_POLL_S: Final = 0.5
# How long CPU freed by killed actors is reserved before the supervisor re-creates them
# (its reconcile interval is 2 s by default).
_ABSORB_S: Final = 2.5


class PlacementError(EventrayError):
    """Actors could not be found or moved where a scenario needs them."""


@dataclass(frozen=True)
class ActorPlace:
    """A live actor: its name, node and worker process."""

    name: str
    actor_id: str
    node_id: str
    pid: int


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    alive: bool
    is_head: bool
    resources: dict[str, float]


def alive_actor(dashboard_url: str, namespace: str, name: str) -> ActorPlace | None:
    """The ALIVE actor called ``name`` in ``namespace``, None while there is none (restarting,
    dead, or not created yet)."""
    from ray.util.state import list_actors

    rows = list_actors(address=dashboard_url, filters=[("name", "=", name),
                                                        ("state", "=", "ALIVE")],
                       detail=True, limit=100, raise_on_missing_output=False)
    for row in rows:
        if row.ray_namespace == namespace and row.pid:
            return ActorPlace(name=name, actor_id=str(row.actor_id), node_id=str(row.node_id),
                              pid=int(row.pid))
    return None


def nodes(dashboard_url: str) -> list[NodeInfo]:
    """Every node the GCS knows (dead ones too)."""
    from ray.util.state import list_nodes

    return [NodeInfo(node_id=str(n.node_id), alive=str(n.state) == "ALIVE",
                     is_head=bool(n.is_head_node),
                     resources={k: float(v) for k, v in (n.resources_total or {}).items()})
            for n in list_nodes(address=dashboard_url, limit=1000, detail=True,
                                raise_on_missing_output=False)]


def node_with_resource(dashboard_url: str, resource: str) -> NodeInfo | None:
    """The alive node that advertises ``resource`` (an extra node's marker)."""
    return next((n for n in nodes(dashboard_url) if n.alive and resource in n.resources), None)


def node_is_dead(dashboard_url: str, node_id: str) -> bool:
    return any(n.node_id == node_id and not n.alive for n in nodes(dashboard_url))


def wait_until(what: str, predicate: Callable[[], bool], timeout_s: float) -> float:
    """Poll ``predicate`` until true; the seconds it took. ``PlacementError`` at the deadline."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise PlacementError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(_POLL_S)
    return time.monotonic() - started


def move_actors(dashboard_url: str, namespace: str, names: Sequence[str], target_node: str,
                *, timeout_s: float = 120.0) -> list[ActorPlace]:
    """Re-create the named actors on ``target_node`` (the only other alive node than the head);
    returns where they run afterwards.

    Each round kills the actors still elsewhere for good, so that the supervisor re-creates
    them at its next reconciliation, and meanwhile reserves the CPU their deaths freed on the
    head: a Ray restart would take that CPU straight back (seen). An actor the supervisor still
    re-created on the head is killed again in the next round.
    """
    import ray

    others = [n.node_id for n in nodes(dashboard_url)
              if n.alive and not n.is_head and n.node_id != target_node]
    if others:
        raise PlacementError(f"cannot steer actors to {target_node[:12]}: other worker nodes "
                             f"are alive too ({', '.join(o[:12] for o in others)})")
    deadline = time.monotonic() + timeout_s
    ballast = _HeadBallast()
    places: dict[str, ActorPlace] = {}
    try:
        ballast.absorb_free_cpu()
        pending = list(names)
        while pending:
            if time.monotonic() > deadline:
                raise PlacementError(f"{', '.join(pending)} did not move to node "
                                     f"{target_node[:12]} within {timeout_s:g}s")
            for name in pending:
                ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)
            ballast.absorb_free_cpu(for_s=_ABSORB_S)

            def recreated(pending: list[str] = pending) -> bool:
                for name in pending:
                    place = alive_actor(dashboard_url, namespace, name)
                    if place is None:
                        return False
                    places[name] = place
                return True

            wait_until(f"the supervisor to re-create {', '.join(pending)}", recreated,
                       max(deadline - time.monotonic(), 0.0))
            pending = [n for n in pending if places[n].node_id != target_node]
    finally:
        ballast.release()
    log.info("moved actors=%s node=%s", ",".join(names), target_node)
    return [places[n] for n in names]


class _HeadBallast:
    """Placement groups pinned to the head that hold CPU nothing else may take meanwhile."""

    def __init__(self) -> None:
        self._groups: list[Any] = []

    def absorb_free_cpu(self, for_s: float = 0.0) -> None:
        """Reserve whatever CPU the head has free, now and again for ``for_s`` seconds."""
        until = time.monotonic() + for_s
        while True:
            self._reserve_once()
            if time.monotonic() >= until:
                return
            time.sleep(0.05)

    def release(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for group in self._groups:
            remove_placement_group(group)
        self._groups.clear()

    def _reserve_once(self) -> None:
        import ray
        from ray._private.state import available_resources_per_node
        from ray.util.placement_group import placement_group, remove_placement_group

        per_node: dict[str, dict[str, float]] = available_resources_per_node()  # type: ignore[no-untyped-call]
        free = next((res.get("CPU", 0.0) for res in per_node.values()
                     if _HEAD_RESOURCE in res), 0.0)
        # Ray counts resources in 1/10000 units; never ask for more than is free.
        cpus = math.floor(free * 10_000) / 10_000
        if cpus <= 0:
            return
        group = placement_group([{"CPU": cpus, _HEAD_RESOURCE: 0.0001}], strategy="STRICT_PACK")
        ready, _ = ray.wait([group.ready()], timeout=5)
        if ready:
            self._groups.append(group)
        else:  # the head's free CPU went elsewhere meanwhile: measured again next time
            remove_placement_group(group)
