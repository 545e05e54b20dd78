"""Detached service processes: spawn, wait until ready, stop, kill, and check by pid.

One implementation for every local service (Kafka, the Snowflake emulator, the Ray head).
Each service runs in its own session (so its process group id is its pid), writes stdout and
stderr to a log file, and is recorded as pid + command line. A recorded pid counts as ours only
while ``/proc/<pid>/cmdline`` still matches the recorded command line, so a reused pid is never
signalled. Processes are found by pid, never by name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.exceptions import EventrayError

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
_POLL_S = 0.2


class ServiceStartError(EventrayError):
    """A local service did not start; the message quotes the end of its log."""


class ServiceStopError(EventrayError):
    """A local service (or part of its process group) survived SIGKILL."""


# Below Linux's ephemeral range (32768-60999), where outgoing connections take their local
# ports: a port picked there can be taken by a client socket before our server binds it
# (seen: the Ray head's GCS port lost to a readiness probe's connection). Above Ray's worker
# port range (10002-19999).
_FREE_PORT_RANGE = (20000, 32767)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing is bound to right now, outside the ephemeral range."""
    rng = random.Random()  # noqa: S311 - spreading ports, not secrets
    for _ in range(200):
        port = rng.randint(*_FREE_PORT_RANGE)
        if not port_in_use(port, host):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # crowded: let the OS pick
        sock.bind((host, 0))
        picked: int = sock.getsockname()[1]
        return picked


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether binding ``host:port`` fails, as it would for the service we are about to start.

    SO_REUSEADDR as servers (the JVM, uvicorn) set it: a port only in TIME_WAIT counts as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_free_ports(service: str, ports: Mapping[str, int], host: str = "127.0.0.1") -> None:
    """Raise ``ServiceStartError`` naming the first of ``ports`` that is already taken."""
    for name, port in ports.items():
        if port and port_in_use(port, host):
            raise ServiceStartError(
                f"{service}: {name} {host}:{port} is already in use; "
                f"stop what holds it or configure another port"
            )


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def start_error(message: str, log_path: Path) -> ServiceStartError:
    """A ``ServiceStartError`` whose message ends with the tail of ``log_path``."""
    tail = log_tail(log_path)
    quoted = "\n".join(f"    {line}" for line in tail.splitlines()) or "    (log is empty)"
    return ServiceStartError(f"{message}\n  last lines of {log_path}:\n{quoted}")


def read_cmdline(pid: int) -> list[str] | None:
    """The command line of a live process, None if there is none (or it is a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not raw:  # zombies and kernel threads have an empty cmdline
        return None
    return raw.rstrip(b"\0").decode("utf-8", errors="replace").split("\0")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group or session is ``pgid``.

    Services start as session leaders (pid == pgid == sid). Some of their descendants move to
    a process group of their own but stay in the session -- Ray Serve's HAProxy does -- so the
    session is what holds everything a service started.
    """
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        # pid (comm) state ppid pgrp session ...; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 3 and fields[0] != "Z" and pgid in (int(fields[2]), int(fields[3])):
            members.append(int(entry.name))
    return members


@dataclass(frozen=True)
class ProcessRecord:
    """What identifies a process we started: its pid (= its process group) and command line."""

    pid: int
    cmdline: tuple[str, ...]
    log_path: str

    def matches(self) -> bool:
        """The pid is alive and still runs the command we started (no pid reuse)."""
        current = read_cmdline(self.pid)
        return current is not None and tuple(current) == self.cmdline

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "cmdline": list(self.cmdline), "log_path": self.log_path}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(pid=int(data["pid"]), cmdline=tuple(str(a) for a in data["cmdline"]),
                   log_path=str(data["log_path"]))


class ServiceProcess:
    """A detached process: started here (with a handle) or adopted from a record."""

    def __init__(self, name: str, record: ProcessRecord,
                 popen: subprocess.Popen[bytes] | None = None) -> None:
        self.name = name
        self.record = record
        self._popen = popen

    @classmethod
    def spawn(cls, name: str, cmd: Sequence[str], *, log_path: Path,
              env: Mapping[str, str] | None = None, cwd: Path | None = None) -> ServiceProcess:
        """Start ``cmd`` in its own session, stdout+stderr appended to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with log_path.open("ab") as log_file:
            log_file.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: "
                           f"{' '.join(cmd)}\n".encode())
            log_file.flush()
            popen = subprocess.Popen(
                list(cmd), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env=full_env, cwd=cwd, start_new_session=True, close_fds=True,
            )
        # The kernel shows argv as passed once exec completes (just after Popen returns it may
        # still show ours): record argv. Scripts must be run as [interpreter, script, ...] so a
        # shebang does not change what the kernel shows.
        record = ProcessRecord(pid=popen.pid, cmdline=tuple(cmd), log_path=str(log_path))
        log.info("spawned service=%s pid=%d log=%s", name, popen.pid, log_path)
        return cls(name, record, popen)

    @property
    def pid(self) -> int:
        return self.record.pid

    @property
    def log_path(self) -> Path:
        return Path(self.record.log_path)

    def is_alive(self) -> bool:
        if self._popen is not None:
            # Our own unreaped child: its pid cannot have been reused.
            return self._popen.poll() is None
        return self.record.matches()

    def exit_code(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def wait_ready(self, ready: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll ``ready()`` until it is true; fail early if the process dies, or at the deadline.

        On failure the process is stopped and the error quotes its log tail.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_alive():
                code = self.exit_code()
                self.stop(timeout=10)  # whatever is left of its process group
                raise start_error(
                    f"{self.name} exited during start-up (exit code {code}) before {what}",
                    self.log_path)
            try:
                if ready():
                    return
            except EventrayError:
                raise
            except Exception as exc:  # noqa: BLE001 - a probe failing just means "not yet"
                log.debug("not ready service=%s reason=%s", self.name, exc)
            if time.monotonic() >= deadline:
                self.stop(timeout=10)
                raise start_error(f"{self.name} did not become ready ({what}) within "
                                  f"{timeout:.0f}s", self.log_path)
            time.sleep(_POLL_S)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process group, wait up to ``timeout``, then SIGKILL what remains."""
        if not self._group_alive():
            self._reap()
            return
        log.info("stopping service=%s pid=%d", self.name, self.pid)
        self._signal_group(signal.SIGTERM)
        if not self._wait_group_gone(timeout):
            log.warning("service=%s pid=%d ignored SIGTERM for %.0fs; sending SIGKILL",
                        self.name, self.pid, timeout)
            self.kill()
            return
        self._reap()

    def kill(self) -> None:
        """SIGKILL the whole process group (fault tests; or after SIGTERM timed out)."""
        if not self._group_alive():
            self._reap()
            return
        self._signal_group(signal.SIGKILL)
        if not self._wait_group_gone(10.0):
            raise ServiceStopError(f"{self.name}: process group {self.pid} survived SIGKILL: "
                                   f"{group_members(self.pid)}")
        self._reap()

    def _group_alive(self) -> bool:
        if self.is_alive():
            return True
        if _pid_exists(self.pid):
            # The pid now belongs to another process: its group is not ours to signal.
            return False
        # The leader is gone; the kernel does not reuse a pid as long as a process group with
        # that id has members, so members left in the group are our orphans.
        return bool(group_members(self.pid))

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)
        for member in group_members(self.pid):  # session members in groups of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, sig)

    def _wait_group_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._reap()
            if not self.is_alive() and not group_members(self.pid):
                return True
            time.sleep(0.1)
        self._reap()
        return not self.is_alive() and not group_members(self.pid)

    def _reap(self) -> None:
        if self._popen is not None:
            self._popen.poll()


def _pid_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and read_cmdline(pid) is not None


class LocalService:
    """What every local service (broker, emulator, Ray head) shares: its process and log."""

    LOG_NAME = "service.log"
    log_dir: Path
    _process: ServiceProcess | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def process(self) -> ServiceProcess | None:
        return self._process

    @property
    def log_path(self) -> Path:
        return self.log_dir / self.LOG_NAME

    def is_running(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown), SIGKILL after ``timeout``."""
        if self._process is not None:
            self._process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL, no shutdown: what a crash looks like (for fault tests)."""
        if self._process is not None:
            self._process.kill()
