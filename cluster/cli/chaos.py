"""``eventray chaos``: faults against the local stack under load, counted event by event.

Brings up the stack, deploys the gateway and the pipeline as ``eventray run`` does, then for
each scenario and run: loads the gateway with a client that retries what is not acknowledged
(same ids), injects one fault mid-load, waits for the pipeline to drain and counts every
acknowledged id against the rows and dead letters of the run. Prints a table (``--json`` writes
it too); exits 1 when any run lost or duplicated an event, or could not run.

The gateway is deployed with ``topic.metadata.refresh.interval.ms`` at 2 s (unless the
settings' ``kafka.extra`` sets it), so that its producer sees partitions added online within
a run (librdkafka's default is 5 minutes).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Final

import msgspec

from cluster.settings import Settings
from gateway.config import GatewayConfig

log = logging.getLogger(__name__)

METADATA_REFRESH: Final = "topic.metadata.refresh.interval.ms"
_GATEWAY_METADATA_REFRESH_MS: Final = "2000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cluster.chaos.runner import RunSpec
    from cluster.chaos.scenarios import SCENARIOS

    defaults = RunSpec()
    parser.epilog = "scenarios: " + "; ".join(f"{name}: {text}"
                                               for name, (_, text) in SCENARIOS.items())
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS), metavar="NAME",
                        help="a scenario to run (repeatable; default: all)")
    parser.add_argument("--runs", type=int, default=1, help="runs per scenario")
    parser.add_argument("--events", type=int, default=defaults.events,
                        help="at most this many events per run")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="events per second")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--invalid-share", type=float, default=defaults.invalid_share,
                        help="share of events that break a business rule (dead letters); "
                             "zombie always runs without")
    parser.add_argument("--tail", type=float, default=defaults.tail_s,
                        help="seconds of load after the fault's active part")
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout_s)
    parser.add_argument("--failover-timeout", type=float, default=180.0,
                        help="seconds to wait for Ray to fail over a frozen node")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--json", metavar="FILE", help="also write the runs as JSON")


def run(settings: Settings, args: argparse.Namespace) -> int:
    import ray

    from actors.kafka_admin import ensure_topics
    from cluster.chaos.report import (
        ACCOUNTING_DEFINITION,
        RECOVERY_DEFINITION,
        RunResult,
        exit_code,
        format_table,
        to_json,
    )
    from cluster.chaos.runner import RunSpec, run_scenario
    from cluster.chaos.scenarios import SCENARIOS, ChaosContext
    from cluster.local.stack import ensure_up, running_stack
    from cluster.supervisor import start_pipeline
    from gateway.serve_app import deploy

    names = args.scenario or list(SCENARIOS)
    spec = RunSpec(events=args.events, rate=args.rate, batch_size=args.batch_size,
                   concurrency=args.concurrency, invalid_share=args.invalid_share,
                   tail_s=args.tail,
                   drain_timeout_s=args.drain_timeout, seed=args.seed)
    settings = ensure_up(settings)
    stack = running_stack(settings)
    if stack is None:
        _say("the local stack stopped right after it was started")
        return 1
    results: list[RunResult] = []
    settings.connect_ray(log_to_driver=False, logging_level=logging.WARNING)
    try:
        ensure_topics(settings.kafka, settings.topics)
        _say("deploying the gateway on Ray Serve")
        url = deploy(gateway_config(settings))
        _say(f"gateway at {url}; starting the pipeline")
        start_pipeline(settings.pipeline_config())
        ctx = ChaosContext(settings=settings, config=settings.pipeline_config(),
                           dashboard_url=stack.dashboard_url, say=_say,
                           failover_timeout_s=args.failover_timeout)
        api_key = settings.gateway.api_keys[0].reveal() if settings.gateway.api_keys else None
        for name in names:
            factory, _ = SCENARIOS[name]
            for number in range(1, args.runs + 1):
                results.append(run_scenario(ctx, factory(number), number, spec=spec,
                                            gateway_url=url, api_key=api_key))
    finally:
        ray.shutdown()
    print("\n== eventray chaos ==")
    print(format_table(results))
    print(f"\n{ACCOUNTING_DEFINITION}\n{RECOVERY_DEFINITION}")
    if args.json:
        with open(args.json, "wb") as fh:
            fh.write(to_json(results))
    return exit_code(results)


def gateway_config(settings: Settings) -> GatewayConfig:
    """The settings' gateway, its producer refreshing topic metadata every 2 s."""
    config = settings.gateway_config()
    if METADATA_REFRESH in config.kafka.extra:
        return config
    kafka = msgspec.structs.replace(
        config.kafka, extra={**config.kafka.extra, METADATA_REFRESH: _GATEWAY_METADATA_REFRESH_MS})
    return msgspec.structs.replace(config, kafka=kafka)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
