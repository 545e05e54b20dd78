"""The partition -> sink assignment the supervisor owns: balanced, and moving little."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cluster.sink_assignment import initial, moves, rebalance, retirable


def loads(sinks: dict[int, int]) -> list[int]:
    return sorted({s: sum(1 for v in sinks.values() if v == s)
                   for s in set(sinks.values())}.values())


def test_a_fresh_pool_is_p_mod_n() -> None:
    assert initial(5, 2).sinks == {0: 0, 1: 1, 2: 0, 3: 1, 4: 0}
    assert initial(5, 2).partitions_of(0) == [0, 2, 4]


def test_growing_moves_only_what_the_new_sink_takes() -> None:
    before = initial(4, 2).sinks                     # {0,2} on 0, {1,3} on 1
    after = rebalance(before, 4, [0, 1, 2])
    assert after.sinks == {0: 0, 1: 1, 2: 0, 3: 2}   # partition 3 moves to the new sink
    assert moves(before, after) == [(3, 1, 2)]


def test_shrinking_moves_only_the_retired_sinks_partitions() -> None:
    before = {0: 0, 1: 1, 2: 2, 3: 3}
    after = rebalance(before, 4, [0, 1])
    assert after.sinks == {0: 0, 1: 1, 2: 0, 3: 1}
    assert moves(before, after) == [(2, 2, 0), (3, 3, 1)]


def test_a_sink_that_does_not_answer_gets_no_partitions() -> None:
    # sink 2 was asked for but waits for a node: nothing moves to it yet.
    assert rebalance(initial(4, 2).sinks, 4, [0, 1]).sinks == initial(4, 2).sinks


def test_added_partitions_go_to_the_least_loaded_sinks() -> None:
    after = rebalance({0: 0, 1: 1, 2: 0, 3: 1}, 6, [0, 1, 2])
    assert loads(after.sinks) == [2, 2, 2]
    assert [after.sinks[p] for p in range(4)] == [0, 1, 0, 1]  # the old ones stay


def test_no_usable_sink_keeps_the_assignment() -> None:
    assert rebalance({0: 1, 1: 1}, 2, []).sinks == {0: 1, 1: 1}


@given(st.integers(1, 24), st.integers(1, 8), st.integers(1, 8))
def test_any_rebalance_is_balanced_and_keeps_what_fits(
        partitions: int, before_n: int, after_n: int) -> None:
    before = initial(partitions, before_n).sinks
    after = rebalance(before, partitions, range(after_n))
    assert sorted(after.sinks) == list(range(partitions))
    assert set(after.sinks.values()) <= set(range(after_n))
    counts = [len(after.partitions_of(s)) for s in range(after_n)]
    assert max(counts) - min(counts) <= 1
    # Stable: rebalancing a balanced assignment over the same sinks moves nothing.
    assert rebalance(after.sinks, partitions, range(after_n)) == after
    # A sink that keeps its index loses partitions only down to its share.
    for s in range(min(before_n, after_n)):
        had = [p for p, v in before.items() if v == s]
        kept = [p for p in had if after.sinks[p] == s]
        assert len(kept) == min(len(had), counts[s])


def test_a_retired_sink_stops_once_nobody_writes_through_it() -> None:
    assert retirable(2, [0, 1, 2, 3], [0, 1, 3, 1], everyone_answered=True) == [2]
    assert retirable(2, [0, 1, 2, 3], [0, 1, 0, 1], everyone_answered=True) == [2, 3]
    assert retirable(2, [0, 1, 2], [0, 1, 0, 1], everyone_answered=False) == []
