"""An extra Ray worker node on this machine, joined to the local stack's head, for node faults.

``ray start --address <head GCS> --block`` in a session of its own (``ServiceProcess``): its
raylet and every worker process it starts stay in that session, so the node can be stopped
(SIGSTOP), continued (SIGCONT) or killed (SIGKILL) as a whole, which is what a frozen or a lost
machine looks like to the rest of the cluster. Each node advertises a custom resource of its own
(``eventray_chaos_<token>``), by which it is found in the GCS; nothing schedules onto it.

It starts with the head's environment (the stack's ``EVENTRAY_*`` addresses, Serve's ingress
switches, ``RAY_AUTH_MODE``) and the head's Ray temp dir: nodes on one host share it. Drivers that
connect later still attach to the head (Ray prefers the head node among the nodes of a host).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from actors.exceptions import EventrayError
from cluster.local.processes import (
    LocalService,
    ServiceProcess,
    ServiceStartError,
    free_port,
    group_members,
)
from cluster.local.ray_head import RAY_ENV, ray_cli

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# Ray's smallest object store: the node only hosts a few actors and holds no objects.
_OBJECT_STORE_BYTES = 80_000_000


class RayNodeError(EventrayError):
    """The extra worker node could not be started, signalled or found."""


class LocalRayWorker(LocalService):
    """One ``ray start --address ... --block`` worker node on 127.0.0.1."""

    LOG_NAME = "ray-worker.log"

    def __init__(self, head_address: str, *, num_cpus: int, temp_dir: Path, log_dir: Path,
                 extra_env: Mapping[str, str] | None = None) -> None:
        self.head_address = head_address
        self.num_cpus = num_cpus
        self.temp_dir = temp_dir
        self.log_dir = log_dir.resolve()
        self.extra_env = dict(extra_env or {})
        self.marker = f"eventray_chaos_{uuid.uuid4().hex[:8]}"
        self._process: ServiceProcess | None = None

    def start(self, joined: Callable[[str], bool], timeout: float = 120.0) -> None:
        """Start the node; return once ``joined(marker)`` says the GCS lists it alive."""
        cmd = [
            *ray_cli(), "start", "--address", self.head_address, "--block",
            "--disable-usage-stats", "--node-ip-address", HOST,
            "--num-cpus", str(self.num_cpus),
            "--object-store-memory", str(_OBJECT_STORE_BYTES),
            # Its default (52365) may be another node's on a shared machine.
            "--dashboard-agent-listen-port", str(free_port(HOST)),
            "--resources", f'{{"{self.marker}": 1}}',
            "--temp-dir", str(self.temp_dir),
        ]
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**RAY_ENV, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
               "PATH": path, **self.extra_env,
               # Tests and drivers set it to 0 (loopback only), which makes `ray start`
               # refuse to join a head; the node still binds 127.0.0.1 (--node-ip-address).
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
        self._process = ServiceProcess.spawn("ray worker node", cmd, log_path=self.log_path,
                                             env=env)
        try:
            self._process.wait_ready(lambda: joined(self.marker), timeout=timeout,
                                     what=f"joining the head at {self.head_address}")
        except ServiceStartError as exc:
            raise RayNodeError(f"extra ray worker node: {exc}") from None
        log.info("ray worker node joined head=%s pid=%s marker=%s", self.head_address,
                 self.pid, self.marker)

    def pids(self) -> list[int]:
        """Every live process of the node: ``ray start``, its raylet and the raylet's workers
        (workers take process groups of their own but stay in the session)."""
        process = self._require_process()
        if not process.is_alive() and not group_members(process.pid):
            return []
        return sorted({process.pid, *group_members(process.pid)})

    def freeze(self) -> list[int]:
        """SIGSTOP every process of the node (a machine that stops answering); the pids."""
        return self._signal_all(signal.SIGSTOP)

    def thaw(self, only: Collection[int] | None = None) -> list[int]:
        """SIGCONT every process of the node, or those of ``only`` that belong to it; the
        pids."""
        return self._signal_all(signal.SIGCONT, only)

    def _signal_all(self, sig: signal.Signals, only: Collection[int] | None = None
                    ) -> list[int]:
        pids = [pid for pid in self.pids() if only is None or pid in only]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue  # exited between listing and signalling
        return pids

    def _require_process(self) -> ServiceProcess:
        process = self._process
        if process is None or process.pid <= 1:
            raise RayNodeError("the extra ray worker node was never started")
        return process
