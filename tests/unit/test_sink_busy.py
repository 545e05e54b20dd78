"""Each sink's busy share, from samples of its cumulative seconds spent writing."""

from __future__ import annotations

from cluster.supervisor_metrics import BusyEstimator


def test_the_share_is_busy_seconds_over_wall_seconds_in_the_window() -> None:
    busy = BusyEstimator(window_s=15.0)
    busy.observe("sink:0", 10.0, now=100.0)
    assert busy.ratio("sink:0") is None  # one sample: no share yet
    busy.observe("sink:0", 13.0, now=105.0)
    assert busy.ratio("sink:0") == 0.6
    for t in range(110, 131, 5):  # idle from here on: the old samples leave the window
        busy.observe("sink:0", 13.0, now=float(t))
    assert busy.ratio("sink:0") == 0.0


def test_a_restarted_sink_starts_a_new_baseline_and_gone_sinks_are_forgotten() -> None:
    busy = BusyEstimator()
    busy.observe("sink:1", 50.0, now=0.0)
    busy.observe("sink:1", 1.0, now=5.0)  # restarted: its count began again
    assert busy.ratio("sink:1") is None
    busy.observe("sink:1", 3.0, now=10.0)
    assert busy.ratio("sink:1") == 0.4
    busy.forget_except(["sink:0"])
    assert busy.ratio("sink:1") is None
