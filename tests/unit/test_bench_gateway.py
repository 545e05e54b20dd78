"""``bench gateway`` counts the CPU of its own processes only (the machine is shared)."""

from __future__ import annotations

import os
import subprocess
import sys

from cluster.bench.cpu_usage import CpuSnapshot, descendants
from cluster.bench.gateway import _bench_usage


def test_a_child_process_descends_from_its_parent_and_init_does_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        found = descendants(os.getpid())
        assert {os.getpid(), child.pid} <= found
        assert 1 not in found
    finally:
        child.kill()
        child.wait()


def test_cpu_of_processes_outside_the_bench_is_counted_apart() -> None:
    me, outsider = os.getpid(), 1  # init never descends from this test
    before = CpuSnapshot(0.0, {me: (1.0, "gateway (uvicorn)"), outsider: (5.0, "other")})
    after = CpuSnapshot(1.0, {me: (1.5, "gateway (uvicorn)"), outsider: (7.0, "other")})
    by_role, outside_s = _bench_usage(before, after, me)
    assert by_role == {"gateway (uvicorn)": 0.5}
    assert outside_s == 2.0
