"""Ray's ``AutoscalingCluster`` (the fake multi-node provider: real raylets, the real autoscaler)
for the autoscaling test and ``eventray bench autoscale``, on a machine other people's Ray clusters
share.

``ray.cluster_utils.AutoscalingCluster`` as Ray ships it cannot run here as it is: its
``start()`` and ``shutdown()`` run ``ray stop --force``, which kills every Ray on the machine,
and it reads its base config from ``fake_multi_node/example.yaml``, which Ray's wheel leaves
out (2.60: the file is not installed). ``IsolatedAutoscalingCluster`` keeps the class and what
it generates (the fake provider, the head and worker node types, ``RAY_FAKE_CLUSTER=1``,
``AUTOSCALER_UPDATE_INTERVAL_S=1``) and differs in three things only: the base config is
inline (the example.yaml of Ray's repository), the head starts on free ports with a temp dir of
its own (the fake provider is told its GCS address instead of the default 6379), and it runs
as ``ray start --head --block`` in a session of its own: the nodes the autoscaler launches are
its children, and stopping is SIGTERM, then SIGKILL, to that process group alone.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from ray.cluster_utils import AutoscalingCluster

from cluster.local.processes import free_port

HOST: Final = "127.0.0.1"
# fake_multi_node/example.yaml of Ray's repository, without its example node types.
_BASE_CONFIG: Final[dict[str, Any]] = {
    "cluster_name": "fake_multinode",
    "max_workers": 8,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                 "disable_node_updaters": True, "disable_launch_config_check": True},
    "available_node_types": {},
    "head_node_type": "ray.head.default",
    "auth": {},
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.1,
    "docker": {},
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
}


class IsolatedAutoscalingCluster(AutoscalingCluster):
    """``AutoscalingCluster`` that starts and stops only its own processes (module docstring)."""

    def __init__(self, head_resources: dict[str, Any], worker_node_types: dict[str, Any],
                 state_dir: Path, **config_kwargs: Any) -> None:
        self._state_dir = state_dir
        self.gcs_port = free_port(HOST)
        self.dashboard_port = free_port(HOST)
        self._process: subprocess.Popen[bytes] | None = None
        config_kwargs.setdefault("provider", {**_BASE_CONFIG["provider"],
                                              "gcs_address": f"{HOST}:{self.gcs_port}"})
        super().__init__(head_resources, worker_node_types, **config_kwargs)

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def address(self) -> str:
        return f"{HOST}:{self.gcs_port}"

    def _generate_config(self, head_resources: dict[str, Any],
                         worker_node_types: dict[str, Any], autoscaler_v2: bool = False,
                         **config_kwargs: Any) -> dict[str, Any]:
        config = copy.deepcopy(_BASE_CONFIG)
        config["available_node_types"] = copy.deepcopy(worker_node_types)
        config["available_node_types"]["ray.head.default"] = {
            "resources": dict(head_resources), "node_config": {}, "max_workers": 0}
        config.update(config_kwargs)
        return config

    def start(self, _system_config: dict[str, Any] | None = None,
              override_env: dict[str, str] | None = None) -> None:
        self._state_dir.mkdir(parents=True, exist_ok=True)
        # Ray's socket paths live under its temp dir and must stay under 108 bytes.
        self._ray_dir = Path(tempfile.mkdtemp(prefix="er-as-", dir="/tmp"))
        config_path = self._state_dir / "autoscaling.json"
        config_path.write_text(json.dumps(self._config))
        head = dict(self._head_resources)
        ray_script = str(Path(sys.executable).parent / "ray")
        cmd = [sys.executable, ray_script, "start", "--head", "--block",
               "--disable-usage-stats", "--node-ip-address", HOST,
               "--port", str(self.gcs_port), "--dashboard-port", str(self.dashboard_port),
               "--ray-client-server-port", str(free_port(HOST)),
               "--dashboard-agent-listen-port", str(free_port(HOST)),
               "--temp-dir", str(self._ray_dir),
               f"--autoscaling-config={config_path}",
               "--num-cpus", str(int(head.pop("CPU", 0)))]
        if "object_store_memory" in head:
            cmd += ["--object-store-memory", str(head.pop("object_store_memory"))]
        if head:
            cmd += ["--resources", json.dumps(head)]
        if _system_config is not None:
            cmd.append(f"--system-config={json.dumps(_system_config, separators=(',', ':'))}")
        env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1",
               "RAY_AUTH_MODE": "disabled", **(override_env or {})}
        self.log_path = self._state_dir / "head.log"
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until the head's GCS port accepts connections; ``RuntimeError`` with the end of its
        log if the head exited or did not get there in time."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"the autoscaling head exited: {self._log_tail()}")
            try:
                socket.create_connection((HOST, self.gcs_port), timeout=1.0).close()
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the autoscaling head's GCS did not listen within "
                                       f"{timeout_s:g}s: {self._log_tail()}") from None
                time.sleep(0.5)
            else:
                return

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def shutdown(self) -> None:
        """SIGTERM to the head's process group (the head and every node it launched), then
        SIGKILL to whatever is left of it after 10 s."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            self._stop_group(process)
        finally:
            shutil.rmtree(self._ray_dir, ignore_errors=True)

    @staticmethod
    def _stop_group(process: subprocess.Popen[bytes]) -> None:
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _group_alive(process):
                time.sleep(0.2)
            if not _group_alive(process):
                break
        process.wait(timeout=10)


def _group_alive(leader: subprocess.Popen[bytes]) -> bool:
    """Whether any process of the leader's group is left (the leader reaped first: a zombie
    leader would keep the group alive)."""
    leader.poll()
    try:
        os.killpg(leader.pid, 0)
    except ProcessLookupError:
        return False
    return True
