"""A window rebuilt from two streams already in order (the warehouse's pages by offset, the
dead-letter tail as read), merged as they come, is the window ``rebuild_window`` builds from
the same keys in any order: the same keys, accept times, written flags, insertion order and
early evictions (issue 12, item 5: recovery in bounded memory keeps item 3's semantics)."""

from __future__ import annotations

import random
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from actors.retry_window import DecidedKey, DedupWindow, replay_key
from actors.window_rebuild import rebuild_window, stream_window, window_order

WINDOW_S = 60.0
T_MS = 1_780_000_000_000

# One record per offset: a row (in the table), a dead letter, or neither (a duplicate dropped),
# each with an event key and perhaps the replay key of the dead letter it replayed.
records = st.lists(st.tuples(
    st.sampled_from(["row", "dead", "dropped"]),
    st.integers(T_MS - 90_000, T_MS + 90_000),
    st.tuples(st.sampled_from(["a-1", "a-2"]), st.sampled_from(["e-1", "e-2", "e-3"])),
    st.one_of(st.none(), st.sampled_from(["0:1", "0:2"]))), max_size=40)


def state(window: DedupWindow) -> tuple[object, ...]:
    return (dict(window._held), dict(window._row_ms), list(window._order), window.evicted_early)


def counted(items: list[DecidedKey], pulled: list[int]) -> Iterator[DecidedKey]:
    for item in items:
        pulled.append(item.offset)
        yield item


@given(drawn=records, committed=st.one_of(st.none(), st.integers(0, 45)),
       max_keys=st.one_of(st.none(), st.integers(1, 12)), seed=st.integers(0, 1000))
def test_streams_in_window_order_rebuild_the_same_window(
        drawn: list[tuple[str, int, tuple[str, str], str | None]], committed: int | None,
        max_keys: int | None, seed: int) -> None:
    rows: list[DecidedKey] = []
    letters: list[DecidedKey] = []
    for offset, (kind, accepted, key, replay_of) in enumerate(drawn):
        found = rows if kind == "row" else letters if kind == "dead" else None
        if found is None:
            continue
        if replay_of is not None:
            found.append(DecidedKey(offset, accepted, replay_key(replay_of)))
        found.append(DecidedKey(offset, accepted, key, written=kind == "row"))
    since = T_MS - 60_000
    shuffled = (random.Random(seed).sample(rows, len(rows)),
                random.Random(seed + 1).sample(letters, len(letters)))
    expected = rebuild_window(WINDOW_S, max_keys, since_ms=since, committed=committed,
                              table=shuffled[0], dead=shuffled[1])
    streamed = stream_window(WINDOW_S, max_keys, since_ms=since, committed=committed,
                             table=iter(sorted(rows, key=window_order)),
                             dead=iter(sorted(letters, key=window_order)))
    assert state(streamed) == state(expected)


def test_the_streams_are_read_as_the_window_fills_not_before() -> None:
    rows = [DecidedKey(o, T_MS, ("a-1", f"e-{o}")) for o in range(0, 100, 2)]
    letters = [DecidedKey(o, T_MS, ("a-1", f"d-{o}"), written=False) for o in range(1, 100, 2)]
    pulled: list[int] = []
    merged = stream_window(WINDOW_S, None, since_ms=0, committed=100,
                           table=counted(rows, pulled), dead=counted(letters, pulled))
    assert len(merged) == 100
    # Pulled in offset order across the two streams (a list of either first would read all
    # of it before the other's first key).
    assert pulled == sorted(pulled)
