"""The local stack: Kafka, the Snowflake emulator and a Ray head, started once, used by many.

``up`` starts what is not already running (per ``<state_dir>/stack.json``) and records each
service's pid, command line, ports and address; ``down`` stops exactly what is recorded (after
checking each pid still runs the recorded command line) and removes the record; ``status``
says what runs. ``stack_settings`` points a ``Settings`` at the running stack. Data lives under
the state dir: ``kafka/``, ``snowflake/``, ``logs/``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
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
)
from cluster.local.ray_head import LocalRay
from cluster.local.snowflake_emulator import LocalSnowflake
from cluster.settings import Settings
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

    def is_alive(self) -> bool:
        return self.process.matches()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **self.process.to_json(), "ports": self.ports,
                "address": self.address, "extra": self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServiceInfo:
        return cls(name=str(data["name"]), process=ProcessRecord.from_json(data),
                   ports={k: int(v) for k, v in data["ports"].items()},
                   address=str(data["address"]),
                   extra={k: str(v) for k, v in data.get("extra", {}).items()})


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
    ray_settings = settings.ray
    head = LocalRay(dashboard_port=ray_settings.dashboard_port,
                    dashboard_host=ray_settings.dashboard_host,
                    object_store_bytes=ray_settings.object_store_bytes,
                    num_cpus=ray_settings.num_cpus, log_dir=settings.state_path() / "logs",
                    extra_env=serve_env(settings.gateway_config().serve))
    head.start()
    assert head.process is not None
    return ServiceInfo("ray", head.process.record,
                       {"gcs": head.gcs_port, "dashboard": head.dashboard_port},
                       head.address, {"dashboard_url": head.dashboard_url})


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
        if missing:
            print(f"starting {', '.join(missing)} (state in {settings.state_path()}) ...",
                  file=stream, flush=True)
        started, errors = _start_all(settings, missing)
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


def _start_all(settings: Settings, names: list[str]
               ) -> tuple[dict[str, ServiceInfo], dict[str, Exception]]:
    """Start services in parallel (each mostly waits); collect successes and failures."""
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
        "kafka.bootstrap_servers": info.bootstrap_servers,
        "snowflake.host": HOST,
        "snowflake.port": info.snowflake_port,
        "snowflake.protocol": "http",
        "ray.address": info.ray_address,
        "ray.dashboard_port": info.services["ray"].ports["dashboard"],
    })


def ensure_up(settings: Settings, out: TextIO | None = None) -> Settings:
    """``up`` unless the whole stack already runs; then ``stack_settings``."""
    if running_stack(settings) is None:
        up(settings, out)
    return stack_settings(settings)
