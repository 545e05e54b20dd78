"""A consumer life's recovery at its first batch: the retry window rebuilt as it stood at the
committed offset (``actors.window_rebuild``), from two streams read by the consumer itself.

* the partition's rows, up to ``dedup_max_keys`` of them, in pages on a warehouse session of
  the consumer's own (``actors.window_keys``): the sink, whose one thread writes for other
  partitions too, takes no part, so their writes go on meanwhile;
* the dead-letter tail of the window (a day by default), read as it is merged
  (``actors.dead_letter.read_recent_keys``), without a deadline for the whole tail: it fails
  only when it stops making progress.

Memory holds the window (bounded by ``dedup_max_keys``), one page of rows and the Kafka
consumer's bounded prefetch; never every key read. ``RecoveryProgress`` counts what was read
for the consumer's ``status`` while it runs.
"""

from __future__ import annotations

import gc
import logging
import resource
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Final

import msgspec

from actors.config import PipelineConfig
from actors.dead_letter import read_recent_keys
from actors.retry_window import DedupWindow
from actors.window_keys import TableKeys
from actors.window_rebuild import stream_window
from actors.window_store import DiskWindow, WindowStoreError

log = logging.getLogger(__name__)


class RecoveryStatus(msgspec.Struct, frozen=True):
    """A consumer's window rebuild, as its ``status`` shows it."""

    rows_read: int          # warehouse rows read so far
    dead_letters_read: int  # dead-letter records read so far
    started_at_ms: int      # epoch ms
    seconds: float          # so far, or in all once finished
    finished: bool
    window_keys: int | None = None     # keys the rebuilt window holds; None while rebuilding
    # keys read but forgotten for dedup_max_keys (the oldest; counted again in
    # eventray_dedup_evicted_early when the first batch is planned)
    evicted_early: int | None = None
    peak_rss_bytes: int | None = None  # the process's peak resident memory when it finished


class RecoveryProgress:
    """What a rebuild has read so far; updated by the reading thread, read by ``status``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._started_at_ms = time.time_ns() // 1_000_000
        self._rows = 0
        self._dead = 0
        self._done: RecoveryStatus | None = None

    def rows(self, read: int) -> None:
        with self._lock:
            self._rows = read

    def dead_letters(self, read: int) -> None:
        with self._lock:
            self._dead = read

    def finish(self, window: DedupWindow) -> RecoveryStatus:
        with self._lock:
            self._done = msgspec.structs.replace(
                self._snapshot(), finished=True, window_keys=len(window),
                evicted_early=window.evicted_early, peak_rss_bytes=_peak_rss_bytes())
            return self._done

    def snapshot(self) -> RecoveryStatus:
        with self._lock:
            return self._done if self._done is not None else self._snapshot()

    def _snapshot(self) -> RecoveryStatus:
        return RecoveryStatus(rows_read=self._rows, dead_letters_read=self._dead,
                              started_at_ms=self._started_at_ms,
                              seconds=time.monotonic() - self._started, finished=False)


def rebuild_at_start(config: PipelineConfig, partition: int, *, since_ms: int,
                     committed: int | None, progress: RecoveryProgress,
                     into: DedupWindow | None = None) -> DedupWindow:
    """The window as the consumer life before left it at ``committed``, keys accepted since
    ``since_ms``; call it after the dead-letter producer fenced its predecessor, so the tail
    read is final. ``into``: the empty window to fill (a fresh one on disk), else a memory
    window of ``dedup_max_keys``; at most its ``max_keys`` newest rows are read."""
    consumer = config.consumer
    topic = config.topics.events
    if committed is None:
        # Never written: no row of the partition exists (rows commit with their offset), and
        # only dead letters below the committed offset enter the window (``stream_window``):
        # the window is empty, with nothing to read (a fresh pipeline's first batch).
        window = into if into is not None else DedupWindow(consumer.dedup_window_s,
                                                           consumer.dedup_max_keys)
        progress.finish(window)
        log.info("retry window empty topic=%s partition=%d: never written, nothing to read",
                 topic, partition)
        return window
    limit = consumer.dedup_max_keys if into is None or into.max_keys is None else into.max_keys
    dead = read_recent_keys(config.kafka, config.topics.dead_letter, partition, since_ms,
                            stall_s=consumer.recovery_stall_s, progress=progress.dead_letters)
    with TableKeys(config.snowflake, topic, partition, page_rows=consumer.window_page_rows,
                   attempts=config.sink.retry_attempts,
                   backoff_s=config.sink.retry_backoff_s) as table, closing(dead), _no_gc():
        rows = table.keys(since_ms, limit, progress.rows)
        window = stream_window(consumer.dedup_window_s, consumer.dedup_max_keys,
                               since_ms=since_ms, committed=committed, table=rows, dead=dead,
                               into=into)
    done = progress.finish(window)
    log.info("retry window rebuilt topic=%s partition=%d committed=%s since_ms=%d keys=%d "
             "evicted_early=%d rows_read=%d dead_letters_read=%d seconds=%.1f "
             "peak_rss_mb=%.0f", topic, partition, committed, since_ms, len(window),
             window.evicted_early, done.rows_read, done.dead_letters_read, done.seconds,
             (done.peak_rss_bytes or 0) / 2**20)
    return window


# Bytes a key costs the memory window (measured ~340): its RAM budget caps its keys.
MEMORY_BYTES_PER_KEY: Final = 340


def window_at_start(config: PipelineConfig, partition: int, *, since_ms: int,
                    committed: int | None, progress: RecoveryProgress,
                    epochs: tuple[int | None, int | None]) -> DedupWindow:
    """A consumer life's window at its first batch, in the store ``window_store`` names.

    On disk, the directory a previous life or session of this partition left on this node is
    kept when it provably stands at ``committed`` (``DiskWindow.trusted``: ``epochs`` are the
    partition's epoch before this life took it, and this life's); otherwise it is wiped and
    rebuilt from the warehouse and the dead-letter tail, written as it streams. In memory the
    window is always rebuilt, and holds what ``window_ram_mb`` allows."""
    consumer = config.consumer
    if consumer.window_store == "memory":
        max_keys = min(consumer.dedup_max_keys,
                       consumer.window_ram_mb * 2**20 // MEMORY_BYTES_PER_KEY)
        return rebuild_at_start(config, partition, since_ms=since_ms, committed=committed,
                                progress=progress,
                                into=DedupWindow(consumer.dedup_window_s, max_keys))
    try:
        disk = DiskWindow.open(config, partition)
    except WindowStoreError as exc:  # its lock is held: a fenced predecessor still alive here
        private = uuid.uuid4().hex[:12]
        log.warning("retry window directory busy topic=%s partition=%d: %s; rebuilding in a "
                    "directory of this life's own (.%s)", config.topics.events, partition, exc,
                    private)
        disk = DiskWindow.open(config, partition, private=private)
    if disk.trusted(committed, epochs):
        done = progress.finish(disk)
        log.info("retry window kept from disk topic=%s partition=%d committed=%s keys=%d "
                 "path=%s seconds=%.1f", config.topics.events, partition, committed, len(disk),
                 disk.path, done.seconds)
        return disk
    state = disk.state
    log.info("retry window on disk not trusted, rebuilding topic=%s partition=%d committed=%s "
             "stored_offset=%s stored_epoch=%s consistent=%s epochs=%s path=%s",
             config.topics.events, partition, committed, state.offset, state.epoch,
             state.consistent, epochs, disk.path)
    try:
        disk.fresh()
        rebuild_at_start(config, partition, since_ms=since_ms, committed=committed,
                         progress=progress, into=disk)
        disk.restored(committed, epochs[-1])
    except BaseException:
        disk.close()
        raise
    return disk


@contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: a rebuild makes no cycles, but its millions of
    window entries made each collection longer (measured, 2 million rows and 1 million dead
    letters in one process: 36.5 s with it, 16.8 s without); reference counting still frees
    everything."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
