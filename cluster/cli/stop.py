"""``eventray stop``: stop the pipeline's actors (supervisor, consumers, sinks) of the local
stack's Ray or of any cluster's dashboard (``--address``); the stack, topics and tables stay."""

from __future__ import annotations

import argparse

from cluster.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cluster.cli.dashboard_client import add_target_arguments

    add_target_arguments(parser)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when no actor of the pipeline is left in the namespace, 1 otherwise."""
    import msgspec

    from cluster.cli.dashboard_client import (
        dashboard_address,
        local_ray_address,
        pipeline_actors_table,
        run_control,
    )
    from cluster.control import StopResult
    from cluster.pipeline_actors import classify
    from cluster.supervisor import SUPERVISOR_NAME

    address = dashboard_address(settings, args.address)
    namespace = settings.ray.namespace
    print(f"stopping the pipeline in namespace {namespace!r} at {address}", flush=True)
    # Half the time for the job's own deadline, the rest for its start and the upload.
    stop_s = max(args.timeout / 2, 10.0)
    result = msgspec.json.decode(
        run_control(address, ["stop", "--namespace", namespace, "--timeout", f"{stop_s:g}"],
                    upload=args.upload, timeout_s=args.timeout,
                    ray_address=local_ray_address(settings, address),
                    on_progress=lambda line: print(f"  {line}", flush=True)),
        type=StopResult)
    # Checked from outside as well: the state API lists what Ray still runs.
    live = [row.name for row in pipeline_actors_table(address, namespace)]
    found = classify(live)
    left = sorted({*result.remaining, *found.consumers, *found.sinks,
                   *(name for name in live if name == SUPERVISOR_NAME)})
    if left:
        print(f"still running after {stop_s:g}s: {', '.join(left)}")
        return 1
    if not result.stopped:
        print(f"nothing to stop: no pipeline actor runs in namespace {namespace}")
        return 0
    print(f"stopped {len(result.stopped)} actors: {', '.join(result.stopped)}")
    if result.unfinished:
        print(f"killed before their batch in flight finished: {', '.join(result.unfinished)} "
              f"(re-read from the warehouse offset on the next start)")
    return 0
