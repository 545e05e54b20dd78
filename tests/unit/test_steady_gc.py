"""The consumer's GC settings for its steady state (actors.steady_gc)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from actors.steady_gc import TRACKED_PER_RECORD, settle


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_settle_freezes_and_raises_the_young_threshold_past_a_batch() -> None:
    settle(50_000)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == TRACKED_PER_RECORD * 50_000


@pytest.mark.usefixtures("restored_gc")
def test_settle_never_lowers_a_threshold() -> None:
    gc.set_threshold(700, 10, 10)
    settle(1)
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.usefixtures("restored_gc")
def test_cyclic_garbage_is_still_collected_after_settle() -> None:
    settle(200)  # young threshold 2,000 tracked objects
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    dead = weakref.ref(a)
    del a, b
    kept = [[n] for n in range(5_000)]  # more tracked objects alive than the threshold
    assert dead() is None
    assert len(kept) == 5_000
