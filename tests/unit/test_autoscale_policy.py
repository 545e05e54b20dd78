"""The sink pool's scaling policy, a pure function: it scales up, down, and holds."""

from __future__ import annotations

import msgspec

from actors.config import AutoscaleConfig
from cluster.autoscale_policy import PolicyInputs, decide, log_fields

CONFIG = AutoscaleConfig(enabled=True, target_drain_s=30.0, min_sinks=1, max_sinks=8,
                         cooldown_s=60.0, scale_up_busy=0.5, scale_down_busy=0.8,
                         scale_down_drain_share=0.25, max_step_factor=2.0)


def inputs(**changes: object) -> PolicyInputs:
    base = PolicyInputs(pool_size=2, partitions=8, lag=0, drain_rate=1000.0,
                        sink_busy=[0.5, 0.5], since_change_s=None)
    return msgspec.structs.replace(base, **changes)


def test_a_backlog_longer_than_the_target_with_busy_sinks_scales_up() -> None:
    # 45,000 offsets at 1,000/s: 45 s against a 30 s target -> ceil(2 * 1.5) = 3 sinks.
    decision = decide(CONFIG, inputs(lag=45_000, sink_busy=[0.9, 0.7]))
    assert (decision.action, decision.size, decision.rule) == ("up", 3, "backlog")
    assert decision.drain_s == 45.0
    assert "45.0s" in decision.reason and "2 -> 3 sinks" in decision.reason


def test_a_step_up_is_bounded_by_the_step_factor_and_the_partitions() -> None:
    assert decide(CONFIG, inputs(lag=10**6, sink_busy=[1.0, 1.0])).size == 4  # 2 x 2
    few = inputs(pool_size=2, partitions=3, lag=10**6, sink_busy=[1.0, 1.0])
    assert decide(CONFIG, few).size == 3                                    # 3 partitions
    stalled = decide(CONFIG, inputs(lag=500, drain_rate=0.0, sink_busy=[1.0, 0.2]))
    assert (stalled.action, stalled.size, stalled.drain_s) == ("up", 4, None)


def test_a_backlog_that_the_sinks_do_not_hold_up_holds() -> None:
    decision = decide(CONFIG, inputs(lag=45_000, sink_busy=[0.3, 0.2]))
    assert (decision.action, decision.size, decision.rule) == ("hold", 2, "sinks_not_busy")


def test_idle_sinks_scale_down_one_at_a_time() -> None:
    decision = decide(CONFIG, inputs(pool_size=4, lag=100, sink_busy=[0.1, 0.05, 0.1, 0.05]))
    assert (decision.action, decision.size, decision.rule) == ("down", 3, "idle")


def test_between_the_thresholds_the_pool_holds() -> None:
    # Drains in 20 s: under the 30 s target, over the 7.5 s a shrink needs.
    assert decide(CONFIG, inputs(lag=20_000, sink_busy=[0.9, 0.9])).rule == "steady"
    # Caught up, but the sinks are saturated (85% busy on average, >= 80%).
    held = decide(CONFIG, inputs(pool_size=3, sink_busy=[0.9, 0.85, 0.8]))
    assert (held.action, held.size, held.rule) == ("hold", 3, "steady")
    # Busy sinks that keep up shrink: fewer sinks write fewer, larger batches.
    busy = decide(CONFIG, inputs(pool_size=3, lag=1000, sink_busy=[0.77, 0.56, 0.53]))
    assert (busy.action, busy.size, busy.rule) == ("down", 2, "idle")


def test_within_the_cooldown_nothing_changes() -> None:
    decision = decide(CONFIG, inputs(lag=10**6, sink_busy=[1.0, 1.0], since_change_s=59.0))
    assert (decision.action, decision.size, decision.rule) == ("hold", 2, "cooldown")
    assert decide(CONFIG, inputs(lag=10**6, sink_busy=[1.0, 1.0],
                                 since_change_s=61.0)).action == "up"


def test_the_bounds_apply_at_once_and_hold_at_the_limits() -> None:
    narrow = msgspec.structs.replace(CONFIG, min_sinks=2, max_sinks=3)
    assert decide(narrow, inputs(pool_size=1, since_change_s=1.0)).size == 2
    assert decide(narrow, inputs(pool_size=5, since_change_s=1.0)).size == 3
    at_max = decide(narrow, inputs(pool_size=3, lag=10**6, sink_busy=[1.0] * 3))
    assert (at_max.action, at_max.rule) == ("hold", "at_max")
    at_min = decide(narrow, inputs(pool_size=2, sink_busy=[0.0, 0.0]))
    assert (at_min.action, at_min.size) == ("hold", 2)


def test_sinks_waiting_for_a_node_hold_growth_but_not_a_shrink() -> None:
    waiting = decide(CONFIG, inputs(pool_size=4, lag=10**6, sink_busy=[1.0, 1.0],
                                    pending_sinks=2))
    assert (waiting.action, waiting.size, waiting.rule) == ("hold", 4, "pending")
    calm = decide(CONFIG, inputs(pool_size=4, lag=0, sink_busy=[0.1, 0.1], pending_sinks=2))
    assert (calm.action, calm.size) == ("down", 3)


def test_nothing_is_decided_before_the_sinks_were_measured() -> None:
    decision = decide(CONFIG, inputs(lag=10**6, drain_rate=0.0, sink_busy=[]))
    assert (decision.action, decision.rule) == ("hold", "unmeasured")


def test_the_log_line_carries_every_input() -> None:
    decision = decide(CONFIG, inputs(lag=45_000, sink_busy=[0.9, 0.7], since_change_s=90.0))
    assert log_fields(decision) == (
        "action=up size=2->3 rule=backlog lag=45000 drain_rate=1000.0 drain_s=45.0 "
        "sink_busy=0.90,0.70 pending_sinks=0 partitions=8 since_change_s=90")
