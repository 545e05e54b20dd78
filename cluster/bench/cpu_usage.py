"""Where the CPU went during a benchmark phase, by role (Linux ``/proc``).

``CpuUsage.snapshot()`` reads every process's user+system CPU time; the difference of two
snapshots, grouped by what each process is (partition consumers, sinks, the emulator, the
broker, ...), says which part of the machine a phase spent its time in. On a 2-core machine
with every part local, that is the question behind each throughput figure.

A process that exits between the two snapshots is not counted (its time is gone from /proc),
so take the second snapshot while the phase's processes still run; one started in between
counts its whole life, start-up included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# (substring of the command line, role); the first match wins.
ROLES: Final[tuple[tuple[str, str], ...]] = (
    ("ray::PartitionConsumer", "consumer actors"),
    ("ray::SnowflakeSink", "sink actors"),
    ("ray::Supervisor", "supervisor"),
    ("cluster.local.snowflake_emulator", "snowflake emulator"),
    ("fakesnow", "snowflake emulator"),
    ("kafka.Kafka", "kafka broker"),
    ("gateway.server", "gateway (uvicorn)"),
    ("ray::ServeReplica", "gateway (Serve replica)"),
    ("haproxy", "haproxy"),
    ("gcs_server", "ray system"),
    ("raylet", "ray system"),
    ("dashboard", "ray system"),
    ("ray::", "other ray workers"),
)
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
OWN_ROLE: Final = "benchmark driver (load generator)"  # the process taking the snapshots


def role_of(cmdline: str, own_pid: bool) -> str:
    if own_pid:
        return OWN_ROLE
    return next((role for needle, role in ROLES if needle in cmdline), "other")


@dataclass(frozen=True)
class CpuSnapshot:
    taken_at: float
    seconds: dict[int, tuple[float, str]]  # pid -> (cpu seconds, role)


def snapshot(now: float) -> CpuSnapshot:
    me = os.getpid()
    seconds: dict[int, tuple[float, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                "utf-8", "replace")
        except OSError:
            continue  # exited while we looked
        fields = stat.rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        seconds[int(entry.name)] = (ticks / _CLOCK_TICKS, role_of(cmdline, int(entry.name) == me))
    return CpuSnapshot(now, seconds)


@dataclass(frozen=True)
class CpuReport:
    wall_s: float
    by_role: dict[str, float]  # cpu seconds

    @property
    def capacity_s(self) -> float:
        return self.wall_s * (os.cpu_count() or 1)

    def lines(self, events: int) -> list[str]:
        used = sum(self.by_role.values())
        out = [f"    cpu: {used:.1f} of {self.capacity_s:.1f} cpu-s available "
               f"({used / self.capacity_s:.0%}) in {self.wall_s:.1f}s; per event:"]
        for role, secs in sorted(self.by_role.items(), key=lambda item: -item[1]):
            if secs >= 0.05:
                out.append(f"      {role:<36}{secs:7.1f} cpu-s {secs / events * 1e6:8.1f} µs")
        return out


def usage_between(before: CpuSnapshot, after: CpuSnapshot) -> CpuReport:
    by_role: dict[str, float] = {}
    for pid, (secs, role) in after.seconds.items():
        start = before.seconds.get(pid, (0.0, role))[0]
        by_role[role] = by_role.get(role, 0.0) + max(secs - start, 0.0)
    return CpuReport(after.taken_at - before.taken_at, by_role)


def descendants(root: int) -> set[int]:
    """``root`` and every process below it, from /proc's parent links (the bench's broker,
    emulator, Ray instance, gateway): on a shared machine other work stays out of its figures."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def only(snap: CpuSnapshot, pids: set[int]) -> CpuSnapshot:
    """``snap`` restricted to ``pids``."""
    return CpuSnapshot(snap.taken_at, {p: v for p, v in snap.seconds.items() if p in pids})


def tree_usage_between(before: CpuSnapshot, after: CpuSnapshot,
                       root: int | None = None) -> tuple[CpuReport, float]:
    """``usage_between`` for the processes descending from ``root`` (default: this process),
    and the CPU seconds every other process on the machine used meanwhile."""
    ours = descendants(os.getpid() if root is None else root) | {os.getpid()}
    report = usage_between(only(before, ours), only(after, ours))
    outside = sum(usage_between(before, after).by_role.values()) - sum(report.by_role.values())
    return report, max(outside, 0.0)
