"""``eventray bench window``: one consumer's retry window on disk, filled to each size.

For each ``--keys`` size, in this one process (one consumer's share of the machine):

1. **fill**: a fresh window directory (``actors.window_store.DiskWindow``, the settings' window
   and RAM budget) takes that many new keys the way a consumer adds them: ``first_seen`` per
   event in batches of ``--batch``, each batch sealed and persisted in one WriteBatch after
   its "commit", with ``evict`` at each batch's start. The accept times run evenly over one
   ``dedup_window_s``, so the keys fill every bucket a full window has. Progress lines while
   it runs. ``inserts_per_s``: keys over the fill's wall time.
2. **disk and RAM**: the directory's bytes per key once the memtables are flushed; the
   process's RSS (and its peak) after the fill and the lookups.
3. **lookups**: ``--lookups`` random keys, half held (a client retry) and half never seen (a
   new event), each looked up as a batch's planning does (``written``: every live bucket on a
   miss). ``lookups_per_s``.
4. **restore on a fresh node**: a new directory rebuilt the way a moved consumer rebuilds
   (``stream_window`` into a fresh ``DiskWindow``, spilled as it streams, then ``restored``)
   from the same keys as ``DecidedKey``s in offset order, as the warehouse's pages hand them
   over. ``restore_s`` counts the store's side only: the warehouse read of the rows comes on
   top (``eventray bench recovery`` measures it).

``--json PATH`` writes one object per size: keys, disk_bytes_per_key, rss_mb, lookups_per_s,
inserts_per_s, restore_s (and a few more figures).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from actors.retry_window import DISORDER_SLACK_MS, DecidedKey
from actors.window_rebuild import stream_window
from actors.window_store import DiskWindow
from cluster.settings import Settings

_T0_MS: Final = 1_780_000_000_000
_ACCOUNTS: Final = 100_000
_PROGRESS_S: Final = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", default="10000000,100000000",
                        help="window sizes to fill, comma-separated (default 10M and 100M)")
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "eventray-bench-window"),
                        help="where the window directories go (removed after each size)")
    parser.add_argument("--ram-mb", type=int,
                        help="the window's RAM budget (default: pipeline.consumer.window_ram_mb)")
    parser.add_argument("--batch", type=int, default=20_000,
                        help="keys per planned batch (default: the consumer's batch size)")
    parser.add_argument("--lookups", type=int, default=1_000_000, help="random lookups")
    parser.add_argument("--keep", action="store_true", help="keep the directories")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")


def run(settings: Settings, args: argparse.Namespace) -> int:
    consumer = settings.pipeline.consumer
    sizes = [int(size) for size in str(args.keys).split(",") if size.strip()]
    ram_mb = args.ram_mb or consumer.window_ram_mb
    run_id = uuid.uuid4().hex[:8]
    print(f"bench window: sizes {', '.join(f'{s:,}' for s in sizes)}; dedup_window_s "
          f"{consumer.dedup_window_s:.0f}, RAM budget {ram_mb} MB, batches of {args.batch:,}, "
          f"in {args.dir}; process RSS at start {_rss_mb():.0f} MB", flush=True)
    results = []
    for size in sizes:
        result = _one_size(size, run_id=run_id, window_s=consumer.dedup_window_s,
                           ram_bytes=ram_mb * 2**20, base=Path(args.dir), batch=args.batch,
                           lookups=args.lookups, keep=args.keep)
        results.append(result)
        print(_line(result), flush=True)
    print()
    print(_table(results, ram_mb))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"written {args.json}")
    return 0


class _Keys:
    """Key ``n`` of a run: its account, event id and accept time (evenly over the window)."""

    def __init__(self, run_id: str, size: int, window_ms: int) -> None:
        self._run_id = run_id
        self._step_ms = max(window_ms - DISORDER_SLACK_MS, 1) / max(size, 1)

    def key(self, n: int) -> tuple[str, str]:
        return f"acct-{n % _ACCOUNTS:05d}", f"{self._run_id}-{n:010d}"

    def at_ms(self, n: int) -> int:
        return _T0_MS + int(n * self._step_ms)

    def decided(self, size: int) -> Iterator[DecidedKey]:
        for n in range(size):
            yield DecidedKey(n, self.at_ms(n), self.key(n))


def _one_size(size: int, *, run_id: str, window_s: float, ram_bytes: int, base: Path,
              batch: int, lookups: int, keep: bool) -> dict[str, Any]:
    path = base / f"fill-{size}"
    shutil.rmtree(path, ignore_errors=True)
    rss_start = _rss_mb()
    window = DiskWindow(window_s, None, path=path, identity=f"bench/{run_id}",
                        ram_bytes=ram_bytes)
    keys = _Keys(run_id, size, window.window_ms)
    inserts_s = _fill(window, keys, size, batch)
    window._db.flush()  # the memtables to files: what the keys take on disk
    disk_bytes = _dir_bytes(path)
    rss_filled = _rss_mb()
    lookups_s = _lookups(window, keys, size, lookups)
    rss = _rss_mb()
    window.close()
    del window
    # A fresh node is a fresh process: the restore runs in one of its own (spawned), so its
    # RSS is its own, not the fill's caches freed but still mapped.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        restore_s, restore_rss = pool.apply(
            _restore, (base / f"restore-{size}", run_id, size),
            {"window_s": window_s, "ram_bytes": ram_bytes})
    if not keep:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(base / f"restore-{size}", ignore_errors=True)
    return {"keys": size, "disk_bytes_per_key": round(disk_bytes / size, 1),
            "rss_mb": round(rss, 1), "lookups_per_s": round(lookups / lookups_s),
            "inserts_per_s": round(size / inserts_s), "restore_s": round(restore_s, 1),
            "fill_s": round(inserts_s, 1), "disk_bytes": disk_bytes,
            "rss_after_fill_mb": round(rss_filled, 1), "peak_rss_mb": round(_peak_rss_mb(), 1),
            "ram_budget_mb": ram_bytes // 2**20, "restore_keys_per_s": round(size / restore_s),
            "restore_peak_rss_mb": round(restore_rss, 1), "rss_start_mb": round(rss_start, 1)}


def _fill(window: DiskWindow, keys: _Keys, size: int, batch: int) -> float:
    """Keys added as a consumer adds them, a persisted WriteBatch per batch; the seconds."""
    started = logged = time.monotonic()
    first_seen, key, at_ms = window.first_seen, keys.key, keys.at_ms
    for first in range(0, size, batch):
        last = min(size, first + batch)
        window.evict(at_ms(first) - DISORDER_SLACK_MS)
        for n in range(first, last):
            first_seen(key(n), at_ms(n))
        window.seal(last)
        window.persist(last, 1)
        now = time.monotonic()
        if now - logged >= _PROGRESS_S:
            logged = now
            print(f"  filling {size:,}: {last:,} keys, {last / (now - started):,.0f} inserts/s, "
                  f"RSS {_rss_mb():.0f} MB, on disk {_dir_bytes(window.path) / 2**20:,.0f} MB",
                  flush=True)
    return time.monotonic() - started


def _lookups(window: DiskWindow, keys: _Keys, size: int, count: int) -> float:
    """``count`` lookups, half of held keys and half of new ones, in random order; seconds."""
    rng = random.Random(size)  # noqa: S311 - which keys to probe, not a secret
    end_ms = keys.at_ms(size)
    written, key, pick = window.written, keys.key, rng.randrange
    # Made as they are asked (a list of a million keys would be ~180 MB of the RSS measured).
    started = time.monotonic()
    held = sum(1 for n in range(count)
               if written(key(pick(size)) if n % 2 else ("acct-new", f"new-{n:010d}"), end_ms))
    elapsed = time.monotonic() - started
    if held != count // 2:
        raise AssertionError(f"{held} of {count // 2} held keys found")
    return elapsed


def _restore(path: Path, run_id: str, size: int, *, window_s: float,
             ram_bytes: int) -> tuple[float, float]:
    """A fresh directory rebuilt as a moved consumer rebuilds it: (seconds, the process's
    peak RSS in MB). Run in a process of its own."""
    shutil.rmtree(path, ignore_errors=True)
    keys = _Keys(run_id, size, int(window_s * 1000))
    started = time.monotonic()
    window = DiskWindow(window_s, None, path=path, identity=f"bench/{run_id}",
                        ram_bytes=ram_bytes)
    window.fresh()
    stream_window(window_s, None, since_ms=_T0_MS, committed=size,
                  table=_progress(keys.decided(size), size, started), dead=iter(()),
                  into=window)
    window.restored(size, 1)
    elapsed = time.monotonic() - started
    if len(window) != size:
        raise AssertionError(f"restored {len(window)} keys of {size}")
    window.close()
    return elapsed, _peak_rss_mb()


def _progress(stream: Iterator[DecidedKey], size: int,
              started: float) -> Iterator[DecidedKey]:
    logged = started
    for n, decided in enumerate(stream):
        if n % 100_000 == 0 and time.monotonic() - logged >= _PROGRESS_S:
            logged = time.monotonic()
            print(f"  restoring {size:,}: {n:,} keys, {n / (logged - started):,.0f} keys/s, "
                  f"RSS {_rss_mb():.0f} MB", flush=True)
        yield decided


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _rss_mb(field: str = "VmRSS") -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mb() -> float:
    """This process's peak RSS since its last exec (``ru_maxrss`` survives an exec)."""
    return _rss_mb("VmHWM")


def _line(r: dict[str, Any]) -> str:
    return (f"{r['keys']:,} keys: {r['disk_bytes_per_key']} bytes/key on disk "
            f"({r['disk_bytes'] / 2**30:.2f} GiB), RSS {r['rss_mb']:.0f} MB (peak "
            f"{r['peak_rss_mb']:.0f}; {r['rss_start_mb']:.0f} before the window), "
            f"{r['inserts_per_s']:,} inserts/s, {r['lookups_per_s']:,} lookups/s, restore "
            f"{r['restore_s']:.1f}s ({r['restore_keys_per_s']:,} keys/s, its process's peak "
            f"RSS {r['restore_peak_rss_mb']:.0f} MB)")


def _table(results: list[dict[str, Any]], ram_mb: int) -> str:
    lines = [f"| keys | disk bytes/key | RSS MB (budget {ram_mb}) | inserts/s | lookups/s | "
             "restore s |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['keys']:,} | {r['disk_bytes_per_key']} | {r['rss_mb']:.0f} | "
              f"{r['inserts_per_s']:,} | {r['lookups_per_s']:,} | {r['restore_s']:.1f} |"
              for r in results]
    return "\n".join(lines)
