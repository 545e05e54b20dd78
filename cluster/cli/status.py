"""``eventray status``: what of the local stack runs, the pipeline's per-partition table and
its actors -- of the local stack's Ray or of any cluster's dashboard (``--address``)."""

from __future__ import annotations

import argparse

from cluster.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cluster.cli.dashboard_client import add_target_arguments

    parser.add_argument("--stack-only", action="store_true",
                        help="only the local stack; do not ask Ray for the pipeline")
    add_target_arguments(parser)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when the pipeline's status was read (or, with ``--stack-only``, when every
    recorded service runs); 1 when a local service is down or the supervisor did not answer."""
    from cluster.local.stack import status

    if args.address is None:
        local = status(settings)
        healthy = print_stack_status(settings)
        if args.stack_only:
            return 0 if healthy else 1
        if local and not healthy:
            return 1  # the pipeline lives on the local Ray: nothing to ask
        print()
    return print_pipeline_status(settings, args)


def print_pipeline_status(settings: Settings, args: argparse.Namespace) -> int:
    import msgspec

    from cluster.cli.dashboard_client import (
        dashboard_address,
        format_actors,
        local_ray_address,
        pipeline_actors_table,
        run_control,
    )
    from cluster.control import StatusResult
    from cluster.pipeline_status import format_status

    address = dashboard_address(settings, args.address)
    namespace = settings.ray.namespace
    answer_s = min(30.0, args.timeout)
    result = msgspec.json.decode(
        run_control(address, ["status", "--namespace", namespace, "--timeout", f"{answer_s:g}"],
                    upload=args.upload, timeout_s=args.timeout, on_progress=print,
                    ray_address=local_ray_address(settings, address)),
        type=StatusResult)
    print(f"Ray dashboard: {address}")
    if result.error is not None:
        print(f"supervisor: {result.error}")
    elif result.pipeline is None:
        print(f"no pipeline is running in namespace {namespace}")
    else:
        print(format_status(result.pipeline))
    print()
    print(format_actors(pipeline_actors_table(address, namespace), namespace))
    return 0 if result.error is None else 1


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
