"""The retry window on disk (``actors.window_store``): larger than its RAM budget it still
drops every retry within the window; it follows the warehouse in the batch rhythm, is kept
only when it provably stands at the committed offset, expires by accept time in whole buckets.
Real RocksDB directories under pytest's tmp_path; plain data otherwise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from actors.batch_plan import BatchPlan, plan_batch
from actors.config import ConsumerConfig, PipelineConfig, ValidationRules
from actors.contract import HEADER_ACCEPTED_AT_MS, EventCodec, PaymentBody, PaymentCaptured
from actors.records import SourceRecord
from actors.retry_window import DedupWindow
from actors.window_store import BUCKETS_PER_WINDOW, DiskWindow, window_identity, window_path

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
CODEC = EventCodec()
RULES = ValidationRules()
HOUR_S = 3600.0


def disk(path: Path, *, window_s: float = HOUR_S, ram_bytes: int = 4 << 20,
         max_keys: int | None = None, identity: str = "events/0") -> DiskWindow:
    return DiskWindow(window_s, max_keys, path=path, identity=identity, ram_bytes=ram_bytes)


def records(first: int, count: int, at_ms: int, *, event_of: int = 0) -> list[SourceRecord]:
    """``count`` valid payments from offset ``first``, event ids from ``event_of``."""
    out = []
    for n in range(count):
        event = PaymentCaptured(event_id=f"evt-{event_of + n:09d}",
                                account_id=f"acct-{(event_of + n) % 977}",
                                occurred_at=NOW - timedelta(minutes=5),
                                body=PaymentBody(amount_minor=100, currency="EUR",
                                                 merchant_id="merchant-1"))
        out.append(SourceRecord(offset=first + n, key=event.account_id.encode(),
                                value=CODEC.encode(event),
                                headers=[(HEADER_ACCEPTED_AT_MS, str(at_ms).encode())],
                                request_id=None, accepted_at_ms=at_ms))
    return out


def plan(batch: list[SourceRecord], window: DedupWindow, next_from: int | None) -> BatchPlan:
    return plan_batch(batch, topic="events", partition=0, next_from=next_from, codec=CODEC,
                      rules=RULES, now=NOW, window=window, now_ms=NOW_MS)


def test_a_window_larger_than_its_ram_budget_drops_every_retry_within_it(
        tmp_path: Path) -> None:
    budget = 2 << 20  # 2 MB: cache 1 MB, memtables 1 MB (their floor), layers the rest
    window = disk(tmp_path / "w", ram_bytes=budget)
    events, batch_size = 240_000, 20_000
    next_from: int | None = 0
    for first in range(0, events, batch_size):  # accepted over the window's first half hour
        at_ms = NOW_MS - 3_000_000 + first * 5
        result = plan(records(first, batch_size, at_ms, event_of=first), window, next_from)
        assert result.valid == batch_size
        next_from = result.batch.to_offset
        window.persist(next_from, 1)  # the batch committed: its keys go to disk
    assert len(window) == events
    db = window._db
    on_disk = sum(f["size"] for f in db.live_files())
    # The keys outgrow the budget: on disk (compressed), and many times over as a memory
    # window would hold them (~340 bytes a key); RocksDB holds its caches to the budget.
    assert on_disk > budget and events * 340 > 30 * budget
    assert db.property_int_value("rocksdb.block-cache-capacity") <= budget // 2
    # Every retry within the window is dropped, each accepted later than its original.
    for first in range(0, events, batch_size):
        retry_ms = NOW_MS - 3_000_000 + first * 5 + 3_000_000  # up to 50 min after
        result = plan(records(events + first, batch_size, retry_ms, event_of=first), window,
                      next_from)
        assert (result.valid, result.duplicates) == (0, batch_size)
        next_from = result.batch.to_offset
        window.persist(next_from, 1)
        assert db.property_int_value("rocksdb.block-cache-usage") <= budget // 2
    # Past the window a retry is a new event (the bound docs/guarantees.md states).
    late = NOW_MS + 3_700_000
    assert plan(records(2 * events, 10, late), window, next_from).valid == 10
    window.close()


def test_changes_reach_disk_only_once_their_batch_committed(tmp_path: Path) -> None:
    window = disk(tmp_path / "w")
    first = plan(records(0, 5, NOW_MS), window, 0)
    second = plan(records(5, 5, NOW_MS, event_of=5), window, first.batch.to_offset)
    assert window.persist(first.batch.to_offset, 7) == 1  # the second is still in flight
    window.close()
    reopened = disk(tmp_path / "w")
    assert reopened.state.offset == 5 and reopened.state.epoch == 7
    assert reopened.seen(("acct-0", "evt-000000000"))
    assert not reopened.seen(("acct-5", "evt-000000005"))  # its batch never committed
    assert reopened.trusted(5, (7, 8)) and not reopened.trusted(10, (7, 8))
    assert second.batch.to_offset == 10
    reopened.close()


def test_a_directory_is_kept_only_when_it_provably_matches(tmp_path: Path) -> None:
    window = disk(tmp_path / "w")
    window.persist(plan(records(0, 3, NOW_MS), window, 0).batch.to_offset, 4)
    window.close()
    reopened = disk(tmp_path / "w")
    assert reopened.trusted(3, (4, 5))       # the life before, nobody in between
    assert reopened.trusted(3, (None, 4))    # this life's own earlier session
    assert not reopened.trusted(3, (5, 6))   # another life owned the partition since
    assert not reopened.trusted(2, (4, 5))   # the warehouse stands elsewhere
    assert not reopened.trusted(None, (4, 5))
    reopened.close()
    assert not disk(tmp_path / "w", identity="another pipeline").trusted(3, (4, 5))
    assert not disk(tmp_path / "w", window_s=60).trusted(3, (4, 5))


def test_a_restore_is_untrusted_until_it_finished(tmp_path: Path) -> None:
    window = disk(tmp_path / "w", ram_bytes=1 << 20)
    window.fresh()
    for n in range(5_000):  # spilled to disk as it goes (the layer's share is small)
        window.mark_written((f"acct-{n}", f"evt-{n}"), NOW_MS)
    assert window.seen(("acct-0", "evt-0")) and not window.trusted(None, (1,))
    window.close()
    crashed = disk(tmp_path / "w", ram_bytes=1 << 20)
    assert not crashed.state.consistent and not crashed.trusted(0, (None, 1))
    crashed.fresh()
    crashed.mark_written(("acct-1", "evt-1"), NOW_MS)
    crashed.restored(42, 2)
    assert crashed.trusted(42, (2, 3)) and len(crashed) == 1
    assert not crashed.seen(("acct-0", "evt-0"))  # the wiped restore left nothing
    crashed.close()


def test_expiry_drops_whole_buckets_by_accept_time(tmp_path: Path) -> None:
    window = disk(tmp_path / "w")
    bucket_ms = int(HOUR_S * 1000) // BUCKETS_PER_WINDOW
    old, new = NOW_MS - 2 * 3_600_000, NOW_MS
    for n in range(100):
        window.first_seen(("a", f"old-{n}"), old)
        window.first_seen(("a", f"new-{n}"), new)
    window.seal(1)
    window.persist(1, 1)
    assert len(window.state.buckets) == 2 and len(window) == 200
    window.evict(NOW_MS)  # keys accepted before NOW - 1 h match nothing any more
    window.seal(2)
    window.persist(2, 1)
    assert list(window.state.buckets) == [new - new % bucket_ms] and len(window) == 100
    assert not window.seen(("a", "old-0")) and window.seen(("a", "new-0"))
    assert db_families(window) == {"default", "meta", f"b{new - new % bucket_ms}"}
    window.close()


def db_families(window: DiskWindow) -> set[str]:
    from rocksdict import Options, Rdict

    return set(Rdict.list_cf(str(window.path), Options(raw_mode=True)))


def test_past_max_keys_the_oldest_bucket_goes_and_is_counted(tmp_path: Path) -> None:
    window = disk(tmp_path / "w", max_keys=150)
    for n in range(100):
        window.first_seen(("a", f"old-{n}"), NOW_MS - 1_800_000)
        window.first_seen(("a", f"new-{n}"), NOW_MS)
    window.seal(1)
    window.persist(1, 1)
    assert window.evicted_early == 100 and len(window) == 100
    assert not window.seen(("a", "old-0")) and window.seen(("a", "new-0"))
    window.close()


def test_an_id_reused_after_the_window_keeps_one_entry(tmp_path: Path) -> None:
    window = disk(tmp_path / "w", window_s=60)
    assert window.first_seen(("a", "1"), NOW_MS, written=False)
    window.seal(1)
    window.persist(1, 1)
    assert window.first_seen(("a", "1"), NOW_MS + 61_000)  # a new event, written
    window.discard(("a", "1"))  # and dropped again (a replay key's way): nothing remains
    window.seal(2)
    window.persist(2, 1)
    assert not window.seen(("a", "1")) and len(window) == 0
    assert list(window.keys_in()) == []
    window.close()


def test_each_partition_and_pipeline_has_its_own_directory() -> None:
    config = PipelineConfig(consumer=ConsumerConfig(window_dir="/data/w"), namespace="ns/1")
    assert window_path(config, 3) == Path("/data/w/ns_1/events-3")
    assert window_identity(config, 3) != window_identity(config, 4)
