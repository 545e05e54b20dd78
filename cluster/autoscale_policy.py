"""The sink pool's scaling policy: a pure function of what the supervisor measures.

Inputs (``PolicyInputs``): the pool size, the partition count, every partition's lag summed,
the offsets committed per second over the last 30 s (``cluster.supervisor_metrics``), each
sink's share of time spent writing, and the seconds since the pool last changed. Output
(``Decision``): the size the pool should have, the rule that decided and one sentence with the
numbers, for the log, the status and the metrics.

The rules, first match wins:

1. **bounds**: a pool below ``min_sinks`` or above ``max_sinks`` (or the partition count:
   more sinks than partitions would idle) goes to the bound at once;
2. **cooldown**: within ``cooldown_s`` of the last change, hold;
3. **unmeasured**: no sink's busy time is known yet (a fresh supervisor), hold;
4. **backlog**: the backlog would take longer than ``target_drain_s`` to drain (or nothing is
   committed while there is lag): grow to ``size * drain_s / target_drain_s`` sinks (at least
   one more, at most ``max_step_factor`` times as many), unless the busiest sink writes less
   than ``scale_up_busy`` of the time (**sinks_not_busy**: the backlog is held up elsewhere)
   or the pool is at its bound (**at_max**), or sinks asked for earlier do not answer yet
   (**pending**: they wait for resources, e.g. a node the Ray autoscaler is starting; growing
   again would ask for nodes the pool may not need);
5. **idle**: the backlog drains within ``scale_down_drain_share * target_drain_s`` and the
   sinks write less than ``scale_down_busy`` of the time on average (not saturated): one sink
   less;
6. otherwise **steady**: hold.

Growing needs a backlog longer than the target and busy sinks; shrinking needs a backlog under
a quarter of it (the hysteresis) and sinks that are not saturated; after any change the pool
holds for ``cooldown_s``. The busy share does not tell how busy one sink fewer would be: a write
costs the warehouse a round trip whatever its size, so fewer sinks write fewer, larger batches
(measured on the emulator: one sink under 50% busy at a load that kept three 53-77% busy each).
So a shrink is judged on the backlog, and the backlog growing again past the target is what
takes it back, no sooner than ``cooldown_s`` later.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from actors.config import AutoscaleConfig

Action = Literal["up", "down", "hold"]


class PolicyInputs(msgspec.Struct, frozen=True):
    pool_size: int
    partitions: int
    lag: int                # every partition's lag, summed (offsets)
    drain_rate: float       # offsets committed per second, all partitions, sliding window
    sink_busy: list[float]  # each measured sink's share of time spent writing, 0..1
    since_change_s: float | None  # since the pool last changed; None: not since the start
    pending_sinks: int = 0  # sinks of the pool that do not answer yet (waiting for a node)


class Decision(msgspec.Struct, frozen=True):
    action: Action
    size: int                # the pool size the policy wants (the current one on hold)
    rule: str                # bounds | cooldown | unmeasured | backlog | sinks_not_busy |
                             # at_max | pending | idle | steady
    reason: str              # one sentence with the numbers that decided
    drain_s: float | None    # lag / drain_rate; 0 without lag; None: lag and no progress
    inputs: PolicyInputs


def drain_seconds(lag: int, drain_rate: float) -> float | None:
    """Seconds until ``lag`` is committed at ``drain_rate``; None when it never would be."""
    if lag <= 0:
        return 0.0
    return lag / drain_rate if drain_rate > 0 else None


def size_bounds(config: AutoscaleConfig, partitions: int) -> tuple[int, int]:
    """(min, max) pool size: ``max_sinks`` is also bounded by the partition count."""
    low = config.min_sinks
    return low, max(low, min(config.max_sinks, max(partitions, 1)))


def decide(config: AutoscaleConfig, inputs: PolicyInputs) -> Decision:
    """The pool size for ``inputs`` (the rules of the module docstring, first match wins)."""
    for rule in (_bounds, _cooldown, _unmeasured, _backlog, _idle):
        decision = rule(config, inputs)
        if decision is not None:
            return decision
    return _decision(inputs, "hold", inputs.pool_size, "steady",
                     f"lag {inputs.lag} drains in {_shown(inputs)} (target_drain_s="
                     f"{config.target_drain_s:g}); busiest sink {max(inputs.sink_busy):.0%} "
                     f"busy")


def _decision(inputs: PolicyInputs, action: Action, size: int, rule: str,
              reason: str) -> Decision:
    return Decision(action=action, size=size, rule=rule, reason=reason,
                    drain_s=drain_seconds(inputs.lag, inputs.drain_rate), inputs=inputs)


def _shown(inputs: PolicyInputs) -> str:
    drain = drain_seconds(inputs.lag, inputs.drain_rate)
    return "never (no progress)" if drain is None else f"{drain:.1f}s"


def _bounds(config: AutoscaleConfig, inputs: PolicyInputs) -> Decision | None:
    size = inputs.pool_size
    low, high = size_bounds(config, inputs.partitions)
    if size < low:
        return _decision(inputs, "up", low, "bounds", f"{size} sinks is below min_sinks={low}")
    if size > high:
        return _decision(inputs, "down", high, "bounds",
                         f"{size} sinks is above the bound {high} (max_sinks="
                         f"{config.max_sinks}, {inputs.partitions} partitions)")
    return None


def _cooldown(config: AutoscaleConfig, inputs: PolicyInputs) -> Decision | None:
    since = inputs.since_change_s
    if since is None or since >= config.cooldown_s:
        return None
    return _decision(inputs, "hold", inputs.pool_size, "cooldown",
                     f"the pool changed {since:.0f}s ago (cooldown_s={config.cooldown_s:g}); "
                     f"backlog drains in {_shown(inputs)}")


def _unmeasured(config: AutoscaleConfig, inputs: PolicyInputs) -> Decision | None:
    if inputs.sink_busy:
        return None
    return _decision(inputs, "hold", inputs.pool_size, "unmeasured",
                     "no sink's busy time measured yet")


def _backlog(config: AutoscaleConfig, inputs: PolicyInputs) -> Decision | None:
    size = inputs.pool_size
    drain = drain_seconds(inputs.lag, inputs.drain_rate)
    if drain is not None and drain <= config.target_drain_s:
        return None
    backlog = (f"lag {inputs.lag} drains in {_shown(inputs)} at {inputs.drain_rate:.0f}/s, "
               f"over target_drain_s={config.target_drain_s:g}")
    high = size_bounds(config, inputs.partitions)[1]
    busiest = max(inputs.sink_busy)
    if size >= high:
        return _decision(inputs, "hold", size, "at_max",
                         f"{backlog}; the pool is at its bound {high}")
    if inputs.pending_sinks:
        return _decision(inputs, "hold", size, "pending",
                         f"{backlog}; {inputs.pending_sinks} of {size} sinks do not answer "
                         f"yet (waiting for resources)")
    if busiest < config.scale_up_busy:
        return _decision(inputs, "hold", size, "sinks_not_busy",
                         f"{backlog}, but the busiest sink writes {busiest:.0%} of the time "
                         f"(< scale_up_busy={config.scale_up_busy:.0%}): the backlog is not "
                         f"held up by the sinks")
    ratio = config.max_step_factor if drain is None else drain / config.target_drain_s
    new_size = min(high, max(size + 1, math.ceil(size * min(ratio, config.max_step_factor))))
    return _decision(inputs, "up", new_size, "backlog",
                     f"{backlog}; busiest sink {busiest:.0%} busy: {size} -> {new_size} sinks")


def _idle(config: AutoscaleConfig, inputs: PolicyInputs) -> Decision | None:
    size = inputs.pool_size
    drain = drain_seconds(inputs.lag, inputs.drain_rate)
    calm = drain is not None and drain <= config.scale_down_drain_share * config.target_drain_s
    if not calm or size <= config.min_sinks:
        return None
    mean = sum(inputs.sink_busy) / len(inputs.sink_busy)
    if mean >= config.scale_down_busy:
        return None
    return _decision(inputs, "down", size - 1, "idle",
                     f"lag {inputs.lag} drains in {_shown(inputs)} (<= "
                     f"{config.scale_down_drain_share:g} x target_drain_s="
                     f"{config.target_drain_s:g}); the sinks write {mean:.0%} of the time on "
                     f"average (< scale_down_busy={config.scale_down_busy:.0%}): {size} -> "
                     f"{size - 1} sinks")


def log_fields(decision: Decision) -> str:
    """The decision and its inputs as key=value fields, for one log line."""
    i = decision.inputs
    busy = ",".join(f"{b:.2f}" for b in i.sink_busy) or "-"
    drain = "none" if decision.drain_s is None else f"{decision.drain_s:.1f}"
    since = "none" if i.since_change_s is None else f"{i.since_change_s:.0f}"
    return (f"action={decision.action} size={i.pool_size}->{decision.size} "
            f"rule={decision.rule} lag={i.lag} drain_rate={i.drain_rate:.1f} drain_s={drain} "
            f"sink_busy={busy} pending_sinks={i.pending_sinks} partitions={i.partitions} "
            f"since_change_s={since}")
