"""The local stack: Kafka, the Snowflake emulator and a Ray head, started once, used by many.

``up`` starts what is not already running (per ``<state_dir>/stack.json``) and records each
service's pid, command line, ports and address; ``down`` stops exactly what is recorded (after
checking each pid still runs the recorded command line) and removes the record; ``status``
says what runs. ``stack_settings`` points a ``Settings`` at the running stack; the Ray head
starts with the same Kafka and emulator addresses as ``EVENTRAY_*`` variables in its
environment, which its workers and job drivers inherit (``ray_env``). Data lives under the
state dir: ``kafka/``, ``snowflake/``, ``logs/``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from actors.exceptions import EventrayError
from cluster.local.kafka_broker import LocalKafka
from cluster.local.processes import (
    ProcessRecord,
    ServiceProcess,
    ServiceStartError,
    ServiceStopError,
    free_port,
    port_in_use,
)
from cluster.local.ray_head import LocalRay
from cluster.local.snowflake_emulator import LocalSnowflake
from cluster.settings import ENV_PREFIX, SINGLE_BROKER_TOPICS, Settings
from gateway.serve_app import serve_env

log = logging.getLogger(__name__)

STATE_FILE = "stack.json"
STATE_VERSION = 1
SERVICES = ("kafka", "snowflake", "ray")  # start order; stopped in reverse
HOST = "127.0.0.1"


class StackNotRunningError(EventrayError):
    """There is no running local stack where the settings say (``eventray up`` first)."""


@dataclass(frozen=True)
class ServiceInfo:
    """One recorded service: its process, ports and the address clients use."""

    name: str
    process: ProcessRecord
    ports: dict[str, int]
    address: str
    extra: dict[str, str] = field(default_factory=dict)
    # EVENTRAY_* variables it was started with (the Ray head: the stack's addresses).
    env: dict[str, str] = field(default_factory=dict)

    def is_alive(self) -> bool:
        return self.process.matches()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **self.process.to_json(), "ports": self.ports,
                "address": self.address, "extra": self.extra, "env": self.env}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServiceInfo:
        return cls(name=str(data["name"]), process=ProcessRecord.from_json(data),
                   ports={k: int(v) for k, v in data["ports"].items()},
                   address=str(data["address"]),
                   extra={k: str(v) for k, v in data.get("extra", {}).items()},
                   env={k: str(v) for k, v in data.get("env", {}).items()})


@dataclass(frozen=True)
class StackInfo:
    """What ``up`` left running (or found running)."""

    state_dir: Path
    services: dict[str, ServiceInfo]

    @property
    def bootstrap_servers(self) -> str:
        return self.services["kafka"].address

    @property
    def snowflake_port(self) -> int:
        return self.services["snowflake"].ports["http"]

    @property
    def ray_address(self) -> str:
        return self.services["ray"].address

    @property
    def dashboard_url(self) -> str:
        return self.services["ray"].extra["dashboard_url"]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int
    address: str
    alive: bool
    log_path: str
    extra: dict[str, str] = field(default_factory=dict)


# -- the state file ----------------------------------------------------------------------------

def state_file(settings: Settings) -> Path:
    return settings.state_path() / STATE_FILE


def read_state(settings: Settings) -> dict[str, ServiceInfo]:
    """The recorded services ({} when nothing is recorded)."""
    path = state_file(settings)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise EventrayError(f"{path} is not valid JSON ({exc}); stop its processes by pid "
                            f"and remove it") from None
    return {name: ServiceInfo.from_json(info) for name, info in data["services"].items()}


def _write_state(settings: Settings, services: dict[str, ServiceInfo]) -> None:
    path = state_file(settings)
    tmp = path.with_suffix(".json.tmp")
    body = {"version": STATE_VERSION,
            "services": {name: services[name].to_json() for name in SERVICES
                         if name in services}}
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, path)  # atomic: a reader never sees half a record


@contextmanager
def _state_lock(settings: Settings) -> Iterator[None]:
    """One ``up``/``down`` at a time per state dir."""
    state_dir = settings.state_path()
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- starting ----------------------------------------------------------------------------------

def _start_kafka(settings: Settings) -> ServiceInfo:
    state, local = settings.state_path(), settings.local
    kafka = LocalKafka(state / "kafka", local.kafka_port, local.kafka_controller_port,
                       version=local.kafka_version, cache_dir=settings.cache_path(),
                       heap=local.kafka_heap, log_dir=state / "logs")
    kafka.start()
    assert kafka.process is not None
    return ServiceInfo("kafka", kafka.process.record,
                       {"broker": kafka.port, "controller": kafka.controller_port},
                       kafka.bootstrap_servers)


def _start_snowflake(settings: Settings) -> ServiceInfo:
    state = settings.state_path()
    snowflake = LocalSnowflake(state / "snowflake", settings.local.snowflake_port,
                               log_dir=state / "logs")
    snowflake.start()
    assert snowflake.process is not None
    return ServiceInfo("snowflake", snowflake.process.record, {"http": snowflake.port},
                       snowflake.address)


def _start_ray(settings: Settings) -> ServiceInfo:
    """The head, with the stack's addresses in its environment (``settings`` has its ports
    resolved by ``resolve_ports``): its workers and job drivers inherit them."""
    ray_settings = settings.ray
    env = ray_env(settings)
    head = LocalRay(dashboard_port=ray_settings.dashboard_port,
                    dashboard_host=ray_settings.dashboard_host,
                    object_store_bytes=ray_settings.object_store_bytes,
                    num_cpus=ray_settings.num_cpus, log_dir=settings.state_path() / "logs",
                    temp_dir=ray_temp_dir(settings),
                    # HAProxy's files and stats/metrics ports are the stack's own: with Ray's
                    # defaults (/tmp/haproxy-serve, 8404, 9101) a second stack on the machine
                    # (another state dir, a test) could not start its gateway.
                    extra_env={**serve_env(settings.gateway_config().serve, isolate=True,
                                         pick_port=free_port),
                               **env})
    head.start()
    assert head.process is not None
    return ServiceInfo("ray", head.process.record,
                       {"gcs": head.gcs_port, "dashboard": head.dashboard_port},
                       head.address, {"dashboard_url": head.dashboard_url}, env)


# Ray's longest socket path (<temp dir>/session_<time>_<pid>/sockets/dash_MetricsHead) adds up
# to 67 bytes to its temp dir, and AF_UNIX paths stop at 107.
_RAY_TEMP_DIR_MAX = 40


def ray_temp_dir(settings: Settings) -> Path:
    """The head's own Ray temp dir, ``<state dir>/ray`` (its session logs are in
    ``<state dir>/ray/session_latest/logs``).

    Not the shared ``/tmp/ray``: a job's driver finds its cluster through the address file in
    the head's temp dir, and in ``/tmp/ray`` that file names whichever Ray on the machine
    started last (measured: a job submitted to this head ran on another user's cluster). A state
    dir too long for Ray's socket paths gets a short directory in /tmp, linked from there.
    """
    path = settings.state_path() / "ray"
    if len(str(path)) <= _RAY_TEMP_DIR_MAX:
        return path
    digest = hashlib.sha256(str(settings.state_path()).encode()).hexdigest()[:10]
    short = Path(tempfile.gettempdir()) / f"eventray-{digest}"
    short.mkdir(exist_ok=True)
    if not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(short, target_is_directory=True)
    return short


def service_overrides(bootstrap_servers: str, snowflake_port: int) -> dict[str, Any]:
    """The settings that point a client at the stack's Kafka and Snowflake emulator, and say
    that its Kafka is one broker: topics get one replica, which is all there can be, and
    ``topics.durability = "local"`` accepts them (``actors.durability``)."""
    return {
        "kafka.bootstrap_servers": bootstrap_servers,
        "snowflake.host": HOST,
        "snowflake.port": snowflake_port,
        "snowflake.protocol": "http",
        **SINGLE_BROKER_TOPICS,
    }


def settings_env(overrides: Mapping[str, Any]) -> dict[str, str]:
    """``EVENTRAY_*`` variables that ``load_settings`` reads back as these dotted settings."""
    return {ENV_PREFIX + "__".join(dotted.upper().split(".")): str(value)
            for dotted, value in overrides.items()}


def ray_env(settings: Settings) -> dict[str, str]:
    """What the Ray head's environment carries so that a job submitted to it (``ray job
    submit``, the job SDK) reaches the stack with no flags: the Kafka and emulator addresses.
    No secrets: the emulator takes any password, so the default one is not passed. Variables are
    not on a command line (``ps``); ``/proc/<pid>/environ`` shows them to the same user only."""
    local = settings.local
    if not (local.kafka_port and local.snowflake_port):
        raise EventrayError("the Ray head's environment needs resolved Kafka and emulator ports")
    return settings_env(service_overrides(f"{HOST}:{local.kafka_port}", local.snowflake_port))


def resolve_ports(settings: Settings, recorded: Mapping[str, ServiceInfo],
                   running: Mapping[str, ServiceInfo]) -> Settings:
    """``settings`` with the ports Kafka and the emulator have (running) or will have, decided
    before anything starts so the Ray head, started beside them, knows their addresses.

    A recorded service that died comes back on its recorded ports when the setting says 0 (any
    port) and they are free: the Ray head and the pipeline's actors keep the right address.
    """
    local = settings.local

    def ports(name: str, keys: tuple[str, ...], configured: tuple[int, ...]) -> list[int]:
        if name in running:
            return [running[name].ports[k] for k in keys]
        dead = recorded.get(name)
        if dead is not None and not any(configured) and not any(
                port_in_use(dead.ports[k], HOST) for k in keys):
            return [dead.ports[k] for k in keys]
        chosen: list[int] = []
        for wanted in configured:
            port = wanted
            while port == 0 or (wanted == 0 and port in chosen):
                port = free_port(HOST)
            chosen.append(port)
        return chosen

    broker, controller = ports("kafka", ("broker", "controller"),
                               (local.kafka_port, local.kafka_controller_port))
    (snowflake,) = ports("snowflake", ("http",), (local.snowflake_port,))
    return settings.with_overrides({"local.kafka_port": broker,
                                    "local.kafka_controller_port": controller,
                                    "local.snowflake_port": snowflake})


STARTERS: dict[str, Callable[[Settings], ServiceInfo]] = {
    "kafka": _start_kafka, "snowflake": _start_snowflake, "ray": _start_ray,
}


def up(settings: Settings, out: TextIO | None = None) -> StackInfo:
    """Start the services not already running; record and print them. Idempotent."""
    stream = sys.stdout if out is None else out
    with _state_lock(settings):
        recorded = read_state(settings)
        running = {name: info for name, info in recorded.items() if info.is_alive()}
        for name, alive in running.items():
            print(f"{name}: already running (pid {alive.process.pid}) at {alive.address}",
                  file=stream, flush=True)
        missing = [name for name in SERVICES if name not in running]
        for name in missing:
            if name in recorded:
                # Its leader died; what is left of its group would hold the ports.
                stale = ServiceProcess(name, recorded[name].process)
                if _orphans(stale):
                    print(f"{name}: leader pid {stale.pid} is gone, stopping the rest of "
                          f"its process group", file=stream, flush=True)
                    stale.stop(timeout=10)
        resolved = resolve_ports(settings, recorded, running)
        if "ray" in running:
            _warn_if_stale_env(running["ray"], ray_env(resolved), stream)
        if missing:
            print(f"starting {', '.join(missing)} (state in {settings.state_path()}) ...",
                  file=stream, flush=True)
        started, errors = _start_all(resolved, missing)
        services = {**running, **started}
        _write_state(settings, services)
    for name in missing:
        if name in started:
            new = started[name]
            print(f"{name}: started (pid {new.process.pid}) at {new.address}", file=stream,
                  flush=True)
    if errors:
        detail = "\n".join(f"{name}: {exc}" for name, exc in errors.items())
        raise ServiceStartError(f"the local stack is incomplete ('eventray down' stops what "
                                f"did start):\n{detail}")
    stack = StackInfo(settings.state_path(), services)
    print(f"Kafka bootstrap servers: {stack.bootstrap_servers}\n"
          f"Snowflake emulator:      {stack.services['snowflake'].address}\n"
          f"Ray address:             {stack.ray_address}\n"
          f"Ray dashboard:           {stack.dashboard_url}", file=stream, flush=True)
    return stack


def _warn_if_stale_env(ray: ServiceInfo, wanted: dict[str, str], stream: TextIO) -> None:
    """A running head keeps the environment it started with; say so when the stack's addresses
    moved since (a service restarted on other ports, or a head started by an older eventray)."""
    if ray.env == wanted:
        return
    print(f"ray: its jobs see {ray.env or 'no stack addresses'}, the stack is at {wanted}; "
          f"restart it ('eventray down', then 'eventray up') for jobs to reach the stack",
          file=stream, flush=True)


def _start_all(settings: Settings, names: list[str]
               ) -> tuple[dict[str, ServiceInfo], dict[str, Exception]]:
    """Start services in parallel (each mostly waits); collect successes and failures.
    ``settings`` has every port resolved, so the Ray head knows the others' addresses."""
    started: dict[str, ServiceInfo] = {}
    errors: dict[str, Exception] = {}
    if not names:
        return started, errors
    with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="stack-up") as pool:
        futures = {name: pool.submit(STARTERS[name], settings) for name in names}
        for name, future in futures.items():
            try:
                started[name] = future.result()
            except EventrayError as exc:
                errors[name] = exc
    return started, errors


# -- stopping and inspecting -------------------------------------------------------------------

def down(settings: Settings, out: TextIO | None = None, timeout: float = 30.0) -> None:
    """Stop exactly what ``up`` recorded, by pid (cmdline checked), then drop the record."""
    stream = sys.stdout if out is None else out
    with _state_lock(settings):
        recorded = read_state(settings)
        if not recorded:
            print(f"nothing recorded in {state_file(settings)}; nothing to stop", file=stream)
            return
        failures: list[str] = []
        for name in reversed(SERVICES):
            info = recorded.get(name)
            if info is None:
                continue
            process = ServiceProcess(name, info.process)
            if not info.is_alive() and not _orphans(process):
                print(f"{name}: not running (pid {info.process.pid})", file=stream, flush=True)
                continue
            try:
                process.stop(timeout)
            except ServiceStopError as exc:
                failures.append(str(exc))
                continue
            print(f"{name}: stopped (pid {info.process.pid})", file=stream, flush=True)
        if failures:
            raise ServiceStopError("; ".join(failures))
        state_file(settings).unlink(missing_ok=True)


def _orphans(process: ServiceProcess) -> bool:
    from cluster.local.processes import group_members, read_cmdline

    # The leader died but members of its group may remain (only if its pid is not reused).
    return read_cmdline(process.pid) is None and bool(group_members(process.pid))


def status(settings: Settings) -> list[ServiceStatus]:
    """Each recorded service with its pid, address and whether it still runs."""
    return [ServiceStatus(name, info.process.pid, info.address, info.is_alive(),
                          info.process.log_path, dict(info.extra))
            for name, info in read_state(settings).items()]


def running_stack(settings: Settings) -> StackInfo | None:
    """The recorded stack if every service in it is alive, else None."""
    recorded = read_state(settings)
    if set(recorded) != set(SERVICES) or not all(i.is_alive() for i in recorded.values()):
        return None
    return StackInfo(settings.state_path(), recorded)


def stack_settings(settings: Settings) -> Settings:
    """``settings`` pointed at the running stack (Kafka, the emulator, Ray)."""
    info = running_stack(settings)
    if info is None:
        raise StackNotRunningError(f"no running local stack recorded in {state_file(settings)}"
                                   f" (run 'eventray up')")
    return settings.with_overrides({
        **service_overrides(info.bootstrap_servers, info.snowflake_port),
        "ray.address": info.ray_address,
        "ray.dashboard_port": info.services["ray"].ports["dashboard"],
    })


def ensure_up(settings: Settings, out: TextIO | None = None) -> Settings:
    """``up`` unless the whole stack already runs; then ``stack_settings``."""
    if running_stack(settings) is None:
        up(settings, out)
    return stack_settings(settings)
