"""``eventray status``: what of the local stack runs, and the pipeline's per-partition lag."""

from __future__ import annotations

import argparse

from cluster.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack-only", action="store_true",
                        help="only the local stack; do not connect to Ray for the pipeline")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when every recorded service runs, 1 when nothing runs or a service is down."""
    from cluster.local.stack import stack_settings, status
    from cluster.pipeline_status import report

    local = status(settings)
    healthy = print_stack_status(settings)
    if args.stack_only:
        return 0 if healthy else 1
    if local and not healthy:
        return 1  # the pipeline lives on the local Ray: nothing to ask
    # With a local stack, talk to its Ray; otherwise to the cluster the settings name.
    target = stack_settings(settings) if local else settings
    print()
    print(report(target))
    return 0 if healthy or not local else 1


def print_stack_status(settings: Settings) -> bool:
    from cluster.local.stack import SERVICES, state_file, status

    services = status(settings)
    if not services:
        print(f"local stack: not running (no {state_file(settings)})")
        return False
    print(f"local stack ({state_file(settings)}):")
    print(f"  {'service':<10} {'pid':>8}  {'state':<7} address")
    for service in sorted(services, key=lambda s: SERVICES.index(s.name)):
        state = "running" if service.alive else "DEAD"
        extra = "".join(f"  {key}={value}" for key, value in service.extra.items())
        print(f"  {service.name:<10} {service.pid:>8}  {state:<7} {service.address}{extra}")
    dead = [s for s in services if not s.alive]
    for service in dead:
        print(f"  {service.name} log: {service.log_path}")
    return not dead and {s.name for s in services} == set(SERVICES)
