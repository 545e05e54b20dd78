import subprocess
import sys
import time

import pytest

from cluster.bench.cpu_usage import role_of, snapshot, usage_between

# Burns 0.6 s of CPU, says so, then stays alive until its stdin closes: a process that has
# exited is gone from /proc, so the second snapshot must see it still running.
BURN = (
    "import sys, time\n"
    "end = time.process_time() + 0.6\n"
    "while time.process_time() < end: pass\n"
    "print('burnt', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        ("ray::PartitionConsumer.status", "consumer actors"),
        ("ray::SnowflakeSink.write", "sink actors"),
        ("python -m cluster.local.snowflake_emulator --port 1", "snowflake emulator"),
        ("java -cp libs/* kafka.Kafka server.properties", "kafka broker"),
        ("python -m gateway.server", "gateway (uvicorn)"),
        ("ray::IDLE", "other ray workers"),
        ("/usr/bin/bash", "other"),
    ],
)
def test_processes_are_grouped_by_what_they_run(cmdline: str, role: str) -> None:
    assert role_of(cmdline, own_pid=False) == role


def test_a_busy_child_is_charged_to_its_role() -> None:
    before = snapshot(time.perf_counter())
    # The trailing argument only puts "kafka.Kafka" on the child's command line.
    child = subprocess.Popen([sys.executable, "-c", BURN, "kafka.Kafka"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "burnt\n"
        after = snapshot(time.perf_counter())
    finally:
        child.communicate(timeout=30)
    report = usage_between(before, after)
    # Charged while it ran: at least most of its 0.6 s burn, at most the wall time.
    assert 0.3 <= report.by_role["kafka broker"] <= report.wall_s + 0.1
    assert "kafka broker" in "\n".join(report.lines(events=1000))
