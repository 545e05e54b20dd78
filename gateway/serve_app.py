"""The gateway as a Ray Serve deployment.

The ASGI app is built inside each replica (``__serve_build_asgi_app__``): only the
``GatewayConfig`` Struct is pickled, the msgspec decoders and the Kafka producer are created
where they run. ``deploy(config)`` starts Serve's HTTP ingress on ``config.host:config.port``
and runs the app.

HAProxy ingress and throughput-optimized mode are switched on by environment variables that
must be in the environment of the Ray cluster when it starts (``serve_env`` gives them); Serve
cannot change them afterwards. With them, HAProxy listens on the ingress port and forwards
straight to the replicas' own HTTP servers (direct ingress).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.durability import check_durability
from gateway.app import create_app
from gateway.config import GatewayConfig, ServeConfig
from gateway.metrics import RayGatewayMetrics

log = logging.getLogger(__name__)

HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
THROUGHPUT_ENV = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
HAPROXY_METRICS_ENV = "RAY_SERVE_HAPROXY_METRICS_ENABLED"
HAPROXY_CLIENT_TIMEOUT_ENV = "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"
_HAPROXY_CONFIG_ENV = "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"
_DEFAULT_HAPROXY_CONFIG = "/tmp/haproxy-serve/haproxy.cfg"  # noqa: S108 - Ray's own default


def serve_env(serve: ServeConfig, *, isolate: bool = False,
              pick_port: Callable[[], int] | None = None) -> dict[str, str]:
    """Environment variables to set before the Ray cluster starts.

    With ``isolate``, HAProxy's config, sockets and state files go to a fresh directory and its
    stats and metrics listeners take free ports, so several Serve instances can share one
    machine (tests, benchmarks); without it Ray's defaults (/tmp/haproxy-serve, ports
    8404/9101) apply. The directory is short and under /tmp on purpose: Ray nests a 56-char
    node id in it and HAProxy refuses socket paths over 97 bytes. ``pick_port`` chooses those
    ports (default: the OS's pick, from the ephemeral range, where Ray's own workers may take
    one before HAProxy binds it: callers that can, pass a picker outside that range).
    """
    pick = pick_port or free_port
    env = {HAPROXY_ENV: "1" if serve.haproxy else "0",
           THROUGHPUT_ENV: "1" if serve.throughput_optimized else "0",
           HAPROXY_METRICS_ENV: "1" if serve.haproxy_request_metrics else "0"}
    if serve.haproxy:
        env[HAPROXY_CLIENT_TIMEOUT_ENV] = str(serve.haproxy_client_timeout_s)
    if serve.haproxy and isolate:
        base = Path(tempfile.mkdtemp(prefix="erhap-", dir="/tmp"))
        env.update({
            _HAPROXY_CONFIG_ENV: str(base / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(base / "metrics.sock"),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(pick()),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(pick()),
        })
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (bind to 0 and release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def haproxy_pids(config_file: str | None = None) -> list[int]:
    """Running haproxy processes started for ``config_file`` (default: this process's
    setting). Ray puts the real file in a per-node directory beside the configured path.

    How to check that HAProxy ingress is really active, not just requested.
    """
    path = (config_file or os.environ.get(_HAPROXY_CONFIG_ENV) or _DEFAULT_HAPROXY_CONFIG)
    directory, name = (part.encode() for part in os.path.split(path))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"haproxy") and any(
                arg.startswith(directory + b"/") and arg.endswith(b"/" + name) for arg in argv):
            pids.append(int(entry))
    return pids


class GatewayDeployment:
    """The Serve replica: holds only the config; the app is built on the replica."""

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config

    def __serve_build_asgi_app__(self) -> Any:
        # Serve's own middleware already answers with X-Request-Id (the id we adopt). Metrics
        # go to Ray's export, labelled with this replica: a scrape through HAProxy would
        # reach any one replica.
        return create_app(self._config, request_id_header=False, metrics=RayGatewayMetrics)


def deployment_options(serve: ServeConfig) -> dict[str, Any]:
    """``serve.deployment`` options from the settings (replicas or autoscaling)."""
    options: dict[str, Any] = {
        "name": "gateway",
        "max_ongoing_requests": serve.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": serve.replica_num_cpus},
        "logging_config": {"enable_access_log": serve.access_log, "log_level": serve.log_level},
    }
    if serve.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": serve.min_replicas,
            "max_replicas": serve.max_replicas,
            "target_ongoing_requests": serve.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = serve.num_replicas
    return options


def build_application(config: GatewayConfig) -> Any:
    """The bound Serve application (needs ``ray.serve``; the caller has connected to Ray)."""
    from ray import serve

    ingress = serve.ingress()(GatewayDeployment)
    deployment = serve.deployment(**deployment_options(config.serve))(ingress)
    return deployment.bind(config)


def deploy(config: GatewayConfig) -> str:
    """Start Serve's ingress on ``config.host:config.port`` (if not started) and run the
    gateway; returns its base URL. Call after ``ray.init``. Refuses a topic whose replication
    makes acks=all meaningless (``DurabilityError``) unless ``topics.durability`` is local."""
    from ray import serve

    check_durability(config.kafka, config.topics, [config.topics.events])
    for name, wanted in serve_env(config.serve).items():
        if os.environ.get(name, "0") != wanted:
            log.warning("%s=%s is wanted but this process has %s; the Ray cluster's own "
                        "environment decides", name, wanted, os.environ.get(name, "unset"))
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_application(config), name=config.serve.app_name,
              route_prefix=config.serve.route_prefix, blocking=False)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host  # noqa: S104
    url = f"http://{host}:{config.port}{config.serve.route_prefix.rstrip('/')}"
    log.info("gateway deployed app=%s url=%s", config.serve.app_name, url)
    return url
