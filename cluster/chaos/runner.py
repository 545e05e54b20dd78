"""One chaos run: load through the gateway, one fault mid-load, drain, count.

1. the scenario prepares (before any load);
2. a landing probe notes where the dead-letter topic ends (only this run's letters count);
3. the load client posts the run's workload (``cluster.bench.workload``: valid events, events
   that break a business rule, a client's own re-sends) at a steady rate, retrying what is not
   acknowledged with the same ids;
4. once ``fault_after`` of the events are acknowledged, the fault is injected while the load
   goes on, and a monitor measures the time to recover;
5. the load keeps going ``tail_s`` after the fault's active part ended (or until the workload is
   used up), then re-sends acknowledged events as clients that lost the answers would: the
   workload's share, and every event acknowledged from 1 s before to 3 s after the fault;
6. wait until the warehouse has committed every record in the topic (bounded);
7. count the acknowledged ids against the run's rows and dead letters (``LandingProbe``).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from actors.exceptions import EventrayError
from cluster.bench.landing import LandingProbe
from cluster.bench.workload import WorkloadSpec, generate
from cluster.chaos.accounting import Landing, tally
from cluster.chaos.load import AckLog, LoadClient, LoadSpec, LoadThread
from cluster.chaos.progress import ProgressReader, ProgressUnavailableError
from cluster.chaos.recovery import RecoveryMonitor
from cluster.chaos.report import RunResult
from cluster.chaos.scenarios import INVALID_SHARE, ChaosContext, Scenario

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    events: int = 20_000           # at most this many events per run (first sends)
    batch_size: int = 200
    rate: float = 1000.0           # events/s
    concurrency: int = 4
    invalid_share: float = 0.03    # break a business rule: must end in the dead-letter topic
    retry_share: float = 0.02      # re-sent by the client after their acknowledgement
    fault_after: float = 0.3       # share of events acknowledged before the fault
    tail_s: float = 10.0           # load after the fault's active part
    give_up_after_s: float = 180.0  # per request
    drain_timeout_s: float = 300.0
    recovery_timeout_s: float = 300.0
    seed: int = 7


def run_scenario(ctx: ChaosContext, scenario: Scenario, run: int, *, spec: RunSpec,
                 gateway_url: str, api_key: str | None = None) -> RunResult:
    """Run ``scenario`` once; never raises for what went wrong inside the run (the result
    says), only for what leaves the stack unusable."""
    name = scenario.name
    run_id = f"chaos-{name}-r{run}-{uuid.uuid4().hex[:6]}"
    ctx.say(f"[{name} run {run}] {run_id}: preparing")
    try:
        scenario.prepare(ctx)
    except EventrayError as exc:
        scenario.cleanup(ctx)
        ctx.say(f"[{name} run {run}] could not prepare: {exc}")
        return RunResult(scenario=name, run=run, acknowledged=0, rows=0, dead_lettered=0,
                         lost=0, duplicated=0, recovery_s=None, error=f"prepare: {exc}")
    try:
        return _loaded_run(ctx, scenario, run, spec=spec, gateway_url=gateway_url,
                           api_key=api_key, run_id=run_id)
    finally:
        scenario.cleanup(ctx)


def _loaded_run(ctx: ChaosContext, scenario: Scenario, run: int, *, spec: RunSpec,
                gateway_url: str, api_key: str | None, run_id: str) -> RunResult:
    name, say = scenario.name, ctx.say
    workload = generate(WorkloadSpec(
        events=spec.events, batch_size=spec.batch_size,
        invalid_share=INVALID_SHARE.get(name, spec.invalid_share),
        refused_share=0.0, retry_share=spec.retry_share, seed=spec.seed + run, run_id=run_id))
    acks = AckLog()
    ctx.acks = acks
    load = LoadThread(LoadClient(LoadSpec(url=gateway_url, api_key=api_key, rate=spec.rate,
                                          concurrency=spec.concurrency,
                                          give_up_after_s=spec.give_up_after_s), acks, say),
                      workload.batches, workload.retry_batches)
    probe = LandingProbe(ctx.config, run_id=run_id)  # before the load: only this run counts
    try:
        say(f"[{name} run {run}] load: up to {spec.events:,} events at {spec.rate:,.0f}/s")
        fault, error, monitor = _load_with_fault(ctx, scenario, run, spec=spec, load=load,
                                                 acks=acks)
        if load.error is not None:
            raise load.error
        say(f"[{name} run {run}] load done: {acks.count():,} acknowledged (retried attempts: "
            f"{acks.retries_text() or 'none'}; after the fault, per partition: "
            f"{acks.after_fault()}); waiting for the pipeline to drain")
        drained = _wait_drained(ctx, spec.drain_timeout_s)
        recovery_s = _recovery(monitor, spec)
        found = probe.landed(with_latency=True)
    finally:
        probe.close()
    counts = tally(acks.acknowledged(), Landing(frozenset(found.row_keys), found.rows,
                                                frozenset(found.dlq_keys), found.dead_lettered))
    result = RunResult(
        scenario=name, run=run, acknowledged=counts.acknowledged, rows=counts.rows,
        dead_lettered=counts.dead_lettered, lost=counts.lost, duplicated=counts.duplicated,
        recovery_s=None if recovery_s is None else round(recovery_s, 1),
        unacknowledged=acks.unacknowledged(), drained=drained, fault=fault, error=error)
    verdict = "ok" if result.passed else "FAIL"
    say(f"[{name} run {run}] {verdict}: acknowledged {result.acknowledged:,}, rows "
        f"{result.rows:,}, dead letters {result.dead_lettered:,}, lost {result.lost:,}, "
        f"duplicated {result.duplicated:,}, recovery "
        f"{'-' if result.recovery_s is None else f'{result.recovery_s:.1f}s'}")
    return result


def _load_with_fault(ctx: ChaosContext, scenario: Scenario, run: int, *, spec: RunSpec,
                     load: LoadThread, acks: AckLog
                     ) -> tuple[str, str | None, RecoveryMonitor | None]:
    """Run the load, inject the fault once ``fault_after`` of it is acknowledged, keep loading
    ``tail_s``; returns what was injected, why not (None: it was), and the recovery monitor."""
    name, say = scenario.name, ctx.say
    fault, error = "", None
    monitor: RecoveryMonitor | None = None
    try:
        load.start()
        warm = int(spec.events * spec.fault_after)
        if not acks.wait_for(warm, timeout_s=spec.events / spec.rate + spec.give_up_after_s):
            error = (f"only {acks.count():,} of {warm:,} events were acknowledged before the "
                     f"fault was due; no fault injected")
            return fault, error, monitor
        fault_at = time.monotonic()
        acks.mark_fault(fault_at)
        monitor = RecoveryMonitor(ctx.config, acks, lambda: scenario.healthy(ctx), fault_at,
                                  spec.recovery_timeout_s)
        monitor.start()
        say(f"[{name} run {run}] injecting after {acks.count():,} acknowledged events")
        try:
            fault = scenario.inject(ctx)
        except EventrayError as exc:
            error = f"inject: {exc}"
            monitor.stop()  # nothing to recover from
            say(f"[{name} run {run}] the fault failed: {exc}")
        load.join(timeout=spec.tail_s)
    finally:
        load.stop.set()
        load.join()
    return fault, error, monitor


def _recovery(monitor: RecoveryMonitor | None, spec: RunSpec) -> float | None:
    if monitor is None:
        return None
    monitor.join(timeout=spec.recovery_timeout_s)
    monitor.stop()
    monitor.join()
    if monitor.error is not None:
        raise monitor.error
    return monitor.recovery_s


def _wait_drained(ctx: ChaosContext, timeout_s: float) -> bool:
    """Until the warehouse has committed every record of the events topic; False at the
    timeout (the count then shows what is missing)."""
    reader = ProgressReader(ctx.config)
    deadline = time.monotonic() + timeout_s
    said = 0.0
    try:
        while True:
            try:
                progress = reader.read()
            except ProgressUnavailableError as exc:
                log.debug("progress unavailable: %s", exc)
            else:
                if progress.drained():
                    return True
                if time.monotonic() - said > 5.0:
                    said = time.monotonic()
                    ctx.say(f"  drain: lag {progress.lag():,} records")
            if time.monotonic() > deadline:
                ctx.say(f"  drain: gave up after {timeout_s:g}s")
                return False
            time.sleep(0.5)
    finally:
        reader.close()
