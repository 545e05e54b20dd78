"""Fault injectors: the blunt operations scenarios are made of.

Every process is found by a record we trust, never by name: the stack's services by the pid and
command line ``eventray up`` recorded (``cluster.local.stack``), an actor's worker by the pid
Ray's state API reports for it (and only when that pid runs a Ray worker), the extra node by the
process we started. A killed service comes back through ``up``, on its data and its ports.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from actors.exceptions import EventrayError
from cluster.chaos.ray_node import LocalRayWorker
from cluster.local.processes import ServiceProcess, read_cmdline
from cluster.local.stack import ray_temp_dir, read_state, up
from cluster.settings import Settings
from gateway.serve_app import serve_env

log = logging.getLogger(__name__)


# Where the kernel shows a thread blocked on a socket with a timeout (Python's socket module
# polls before recv/send when a timeout is set, as the Snowflake connector's HTTP client does).
_SOCKET_WAITS: Final = ("poll_schedule_timeout", "do_sys_poll", "do_poll", "sk_wait_data",
                        "wait_woken", "do_select", "core_sys_select")


class FaultError(EventrayError):
    """A fault could not be injected as asked (nothing was harmed)."""


def kill_service(settings: Settings, name: str) -> int:
    """SIGKILL the stack service ``name`` (kafka, snowflake) and its whole process group, as a
    crash would; returns its pid. The recorded command line must still match the pid."""
    info = read_state(settings).get(name)
    if info is None or not info.is_alive():
        raise FaultError(f"{name} is not running in the local stack ({settings.state_path()})")
    ServiceProcess(name, info.process).kill()
    log.info("killed service=%s pid=%d", name, info.process.pid)
    return info.process.pid


def restart_services(settings: Settings) -> str:
    """``eventray up``: start what is recorded but dead, on its data dir and recorded ports.
    Returns what ``up`` said about the restarted services."""
    out = io.StringIO()
    up(settings, out=out)
    return "; ".join(line for line in out.getvalue().splitlines() if ": started" in line)


def kill_ray_worker(pid: int) -> None:
    """SIGKILL one Ray worker process (an actor's), after checking that ``pid`` is one."""
    cmdline = read_cmdline(pid)
    if not cmdline or not cmdline[0].startswith("ray::"):
        raise FaultError(f"pid {pid} is not a Ray worker process (command line: {cmdline})")
    os.kill(pid, signal.SIGKILL)
    log.info("killed ray worker pid=%d (%s)", pid, cmdline[0])


def waiting_on_socket(pid: int) -> bool:
    """Whether the main thread of ``pid`` is blocked on a socket right now (``wchan``). A
    synchronous Ray actor runs its calls on its main thread and idles in ``epoll_wait``: a sink
    blocked on a socket is inside a warehouse call."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return wchan.startswith(_SOCKET_WAITS)


def wait_until_on_socket(pid: int, timeout_s: float) -> bool:
    """Poll every millisecond until ``pid`` waits on a socket; False at the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if waiting_on_socket(pid):
            return True
        time.sleep(0.001)
    return False


@dataclass(frozen=True)
class ExtraNode:
    """A started extra worker node and its id in the GCS."""

    worker: LocalRayWorker
    node_id: str


def start_extra_node(settings: Settings, dashboard_url: str, *, num_cpus: int = 2
                     ) -> ExtraNode:
    """A worker node joined to the stack's Ray head, with the head's environment."""
    from cluster.chaos.placement import node_with_resource

    head = read_state(settings).get("ray")
    if head is None or not head.is_alive():
        raise FaultError("the local stack's Ray head is not running")
    env = {**serve_env(settings.gateway_config().serve), **head.env}
    worker = LocalRayWorker(head.address, num_cpus=num_cpus, temp_dir=ray_temp_dir(settings),
                            log_dir=settings.state_path() / "logs", extra_env=env)
    worker.start(lambda marker: node_with_resource(dashboard_url, marker) is not None)
    node = node_with_resource(dashboard_url, worker.marker)
    if node is None:
        worker.kill()
        raise FaultError("the extra worker node joined and left again")
    return ExtraNode(worker=worker, node_id=node.node_id)


def remove_extra_node(node: ExtraNode) -> None:
    """Continue (if frozen) and kill whatever is left of the node."""
    node.worker.thaw()
    node.worker.kill()

