"""A local Ray head node that outlives the command that started it.

``ray start --head --block`` runs as a child in its own session: its process group holds the
GCS, raylet, dashboard and the rest, and stopping it means SIGTERM to that group, then SIGKILL
to whatever remains of it. Never by process name, never ``ray stop`` (which stops every Ray on
the machine, other people's included).

The dashboard (``http://127.0.0.1:<dashboard port>``) is where users inspect actors and submit
``ray job submit``; Serve's ingress settings (HAProxy, throughput mode) are environment variables
read when Ray starts, so the caller passes them in ``extra_env``. Every port the
head would otherwise take from a fixed default (client server, dashboard agent) is picked free,
so a test stack never collides with a user's.

Ray 2.60 turns token authentication on for a new local cluster, but a driver calling
``ray.init(address=...)`` without ``RAY_AUTH_MODE=token`` in its own environment is then refused
(measured). The local head therefore starts with ``RAY_AUTH_MODE=disabled`` -- as every Ray
before 2.5x did -- unless ``RAY_AUTH_MODE`` is set in the environment of ``eventray up``, which
is passed through (then set it for drivers too; the token is in ``~/.ray/auth_token``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from cluster.local.processes import (
    LocalService,
    ServiceProcess,
    ServiceStartError,
    free_port,
    require_free_ports,
)

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_NUM_CPUS = 8  # logical CPUs: the fractional-CPU actors all fit on a 2-core machine
RAY_ENV: Mapping[str, str] = {
    # On SIGTERM a node first drains (up to 30 s) so replicas can move to other nodes; the
    # local head is the whole cluster and there is nowhere to move, so stop at once.
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
}


def ray_cli() -> list[str]:
    """``ray`` from this interpreter's environment, run as [python, script] so the kernel's
    command line is exactly what we record (a shebang would prepend the interpreter)."""
    script = Path(sys.executable).parent / "ray"
    if not script.exists():
        raise ServiceStartError(f"the ray command is not installed next to {sys.executable}")
    return [sys.executable, str(script)]


class LocalRay(LocalService):
    """``ray start --head --block`` on 127.0.0.1."""

    LOG_NAME = "ray.log"

    def __init__(self, *, gcs_port: int = 0, dashboard_port: int = 8265,
                 dashboard_host: str = HOST, object_store_bytes: int = 1_000_000_000,
                 num_cpus: int | None = None, log_dir: Path, temp_dir: Path | None = None,
                 extra_env: Mapping[str, str] | None = None) -> None:
        self._gcs_port = gcs_port
        self._dashboard_port = dashboard_port
        self.dashboard_host = dashboard_host
        self.object_store_bytes = object_store_bytes
        self.num_cpus = num_cpus if num_cpus is not None else DEFAULT_NUM_CPUS
        self.log_dir = log_dir.resolve()
        self.temp_dir = temp_dir
        self.extra_env = dict(extra_env or {})
        self._process: ServiceProcess | None = None

    @property
    def gcs_port(self) -> int:
        return self._gcs_port

    @property
    def dashboard_port(self) -> int:
        return self._dashboard_port

    @property
    def address(self) -> str:
        """The GCS address for ``ray.init(address=...)``."""
        return f"{HOST}:{self._gcs_port}"

    @property
    def dashboard_url(self) -> str:
        host = HOST if self.dashboard_host in ("0.0.0.0", "") else self.dashboard_host  # noqa: S104
        return f"http://{host}:{self._dashboard_port}"

    def start(self, timeout: float = 120.0) -> None:
        """Start the head; return once the dashboard and its job server answer."""
        if self.is_running():
            return
        if self._gcs_port == 0:
            self._gcs_port = free_port(HOST)
        if self._dashboard_port == 0:
            self._dashboard_port = free_port(HOST)
        require_free_ports("ray", {"GCS port": self._gcs_port,
                                   "dashboard port": self._dashboard_port}, HOST)
        cmd = [
            *ray_cli(), "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", HOST, "--port", str(self._gcs_port),
            "--dashboard-host", self.dashboard_host,
            "--dashboard-port", str(self._dashboard_port),
            "--ray-client-server-port", str(free_port(HOST)),
            "--dashboard-agent-listen-port", str(free_port(HOST)),
            "--object-store-memory", str(self.object_store_bytes),
            "--num-cpus", str(self.num_cpus),
        ]
        if self.temp_dir is not None:
            cmd += ["--temp-dir", str(self.temp_dir)]
        # Job entrypoints ("python my_job.py") run with the head's PATH: put this
        # environment's interpreter first, as an activated virtualenv would.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**RAY_ENV, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
               "PATH": path, **self.extra_env}
        self._process = ServiceProcess.spawn("ray head", cmd, log_path=self.log_path, env=env)
        try:
            self._process.wait_ready(self._dashboard_ok, timeout=timeout,
                                     what=f"dashboard and job server on {self.dashboard_url}")
        except ServiceStartError as exc:
            raise ServiceStartError(f"ray head (GCS port {self._gcs_port}, dashboard port "
                                    f"{self._dashboard_port}): {exc}") from None
        log.info("ray head ready address=%s dashboard=%s pid=%s", self.address,
                 self.dashboard_url, self.pid)

    def _dashboard_ok(self) -> bool:
        return dashboard_answers(self.dashboard_url)


def auth_headers() -> dict[str, str]:
    """The bearer token for the dashboard when token auth was asked for (``RAY_AUTH_MODE``)."""
    if os.environ.get("RAY_AUTH_MODE", "disabled").lower() != "token":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        try:
            token = path.read_text().strip()
        except FileNotFoundError:
            return {}
    return {"Authorization": f"Bearer {token}"}


def dashboard_answers(url: str) -> bool:
    """The dashboard's version endpoint and its job server both answer 200."""
    import httpx

    with httpx.Client(base_url=url, timeout=3.0, headers=auth_headers()) as client:
        if client.get("/api/version").status_code != 200:
            return False
        return client.get("/api/jobs/").status_code == 200


def use_loopback_for_in_process_ray() -> None:
    """For an in-process ``ray.init(address="local")`` (benchmarks): advertise 127.0.0.1 rather
    than the machine's external address, and keep Ray's token auth off for that private
    instance (``ray.init`` would otherwise turn it on in ``os.environ`` for later Rays)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
