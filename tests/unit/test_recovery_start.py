"""A partition never written (no committed offset) starts with an empty retry window, read from
nowhere (issue 17, Start): rows commit with their offset, so none exists, and only dead letters
below the committed offset enter a rebuilt window, so none counts. Skipping both reads is what
``rebuild_at_start`` does; the property below is why it decides as the full rebuild would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from actors.recovery import RecoveryProgress, rebuild_at_start
from actors.retry_window import DecidedKey, DedupWindow
from actors.window_rebuild import stream_window, window_order
from cluster.local.processes import free_port
from cluster.settings import Settings

T_MS = 1_780_000_000_000

dead_letters = st.lists(st.builds(
    DecidedKey, st.integers(0, 10_000), st.integers(T_MS - 60_000, T_MS),
    st.tuples(st.sampled_from(["a-1", "a-2"]), st.sampled_from(["e-1", "e-2"])),
    st.booleans()), max_size=30)


@given(dead=dead_letters)
def test_a_window_rebuilt_at_no_committed_offset_is_empty(dead: list[DecidedKey]) -> None:
    window = stream_window(60.0, None, since_ms=T_MS - 120_000, committed=None, table=[],
                           dead=sorted(dead, key=window_order))
    assert len(window) == 0 and window.evicted_early == 0


def test_a_never_written_partition_reads_neither_the_table_nor_the_dead_letters() -> None:
    closed = free_port()  # nothing listens: a read would fail, not return an empty window
    config = Settings().with_overrides({
        "kafka.bootstrap_servers": f"127.0.0.1:{closed}", "snowflake.host": "127.0.0.1",
        "snowflake.port": closed, "snowflake.protocol": "http", "snowflake.login_timeout_s": 1,
    }).pipeline_config()
    progress = RecoveryProgress()
    into = DedupWindow(60.0, 100)
    window = rebuild_at_start(config, 0, since_ms=T_MS, committed=None, progress=progress,
                              into=into)
    assert window is into and len(window) == 0
    done = progress.snapshot()
    assert done.finished and done.rows_read == 0 and done.dead_letters_read == 0
