"""``python -m cluster.control status|stop --namespace NS``: pipeline control inside the cluster.

``eventray status`` and ``eventray stop`` submit this module as a short Ray job through the
dashboard's job API, so a laptop needs only the dashboard's HTTP port (no GCS port, no Ray
client). It prints progress lines and one result line, each behind a marker, because the job's
log also holds whatever Ray itself prints; the result is JSON (``StatusResult``/``StopResult``).

A job's driver connects to the cluster Ray's job supervisor picked for it ("auto"). With several
Ray instances on one machine sharing ``/tmp/ray`` that may be another instance than the one whose
dashboard ran the job, so ``--session`` names the dashboard's session (``/api/version``) and the
driver refuses to act anywhere else; ``--ray-address`` connects to a known GCS address instead
(the CLI passes the local stack's).

``stop`` kills the supervisor first (it would re-create what is stopped), then finds the
consumers and sinks by name in the namespace -- not from the supervisor's memory, which is empty
until a restarted supervisor's first reconciliation -- asks each consumer to finish its batch in
flight, and kills them all for good. The local stack, the topics, the tables and a deployed
gateway stay.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec

from cluster.pipeline_actors import pipeline_actors
from cluster.supervisor import SUPERVISOR_NAME, PipelineStatus, find_actor, sweep

RESULT_MARK: Final = "@@eventray-result "
PROGRESS_MARK: Final = "@@eventray-progress "
ERROR_MARK: Final = "@@eventray-error "
_POLL_S: Final = 0.5

Say = Callable[[str], None]


class StatusResult(msgspec.Struct, frozen=True):
    namespace: str
    pipeline: PipelineStatus | None  # None: no supervisor runs in the namespace
    error: str | None = None


class StopResult(msgspec.Struct, frozen=True):
    namespace: str
    stopped: list[str]
    unfinished: list[str]  # consumers whose batch in flight did not finish in time (killed)
    remaining: list[str]   # pipeline actors still registered at the deadline


def status(namespace: str, timeout_s: float) -> StatusResult:
    import ray

    supervisor = find_actor(SUPERVISOR_NAME, namespace)
    if supervisor is None:
        return StatusResult(namespace=namespace, pipeline=None)
    try:
        pipeline: PipelineStatus = ray.get(supervisor.status.remote(), timeout=timeout_s)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
        return StatusResult(namespace=namespace, pipeline=None,
                            error=f"{SUPERVISOR_NAME} did not report: {type(exc).__name__}: {exc}")
    return StatusResult(namespace=namespace, pipeline=pipeline)


def stop(namespace: str, timeout_s: float, say: Say) -> StopResult:
    """Stop every pipeline actor of ``namespace``; see the module docstring for the order."""
    import ray

    deadline = time.monotonic() + timeout_s
    stopped: list[str] = []
    supervisor = find_actor(SUPERVISOR_NAME, namespace)
    if supervisor is not None:
        ray.kill(supervisor, no_restart=True)
        _wait_released([SUPERVISOR_NAME], namespace, deadline)
        stopped.append(SUPERVISOR_NAME)
        say(f"stopped {SUPERVISOR_NAME}")
    found = pipeline_actors(namespace)
    say(f"found {len(found.consumers)} consumers and {len(found.sinks)} sinks in namespace "
        f"{namespace}")
    unfinished = _stop_consumers(found.consumers, namespace, deadline, say)
    for name in [*found.consumers, *found.sinks]:
        handle = find_actor(name, namespace)
        if handle is not None:
            ray.kill(handle, no_restart=True)
            stopped.append(name)
            say(f"stopped {name}")
    # Kill what is still registered (e.g. an actor the supervisor was creating as it was
    # killed) until nothing of the pipeline is left or the deadline passes.
    remaining = sweep(
        namespace, lambda: [SUPERVISOR_NAME, *_pipeline_names(namespace)],
        max(deadline - time.monotonic(), 0.0),
        on_wait=lambda left: say(f"waiting for {len(left)} actors to exit: {', '.join(left)}"))
    return StopResult(namespace=namespace, stopped=stopped, unfinished=unfinished,
                      remaining=remaining)


def _stop_consumers(names: list[str], namespace: str, deadline: float, say: Say) -> list[str]:
    """Ask each consumer to finish its batch in flight; the names that did not in time."""
    import ray

    if not names:
        return []
    wait_s = max(deadline - time.monotonic(), 1.0) / 2  # half the time; the kills follow
    say(f"asking {len(names)} consumers to finish their batch in flight (up to {wait_s:.0f}s)")
    refs: dict[str, Any] = {}
    for name in names:
        handle = find_actor(name, namespace)
        if handle is not None:
            refs[name] = handle.stop.remote(wait_s)
    ray.wait(list(refs.values()), num_returns=len(refs), timeout=wait_s + 5)
    unfinished: list[str] = []
    for name, ref in refs.items():
        try:
            finished = bool(ray.get(ref, timeout=0))
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            finished = False
        if not finished:
            unfinished.append(name)
            say(f"{name} did not finish its batch in time; killing it (its batch is "
                f"re-read from the warehouse offset on the next start)")
    return unfinished


def _pipeline_names(namespace: str) -> list[str]:
    found = pipeline_actors(namespace)
    return [*found.consumers, *found.sinks]


def _wait_released(names: list[str], namespace: str, deadline: float) -> None:
    """Until Ray released the names (their actors are dead) or the deadline passes."""
    while (any(find_actor(name, namespace) is not None for name in names)
           and time.monotonic() < deadline):
        time.sleep(_POLL_S)


def _say(message: str) -> None:
    print(f"{PROGRESS_MARK}{message}", flush=True)


def _result(result: msgspec.Struct) -> None:
    print(f"{RESULT_MARK}{msgspec.json.encode(result).decode()}", flush=True)


def _session_name() -> str:
    import ray

    node = ray._private.worker.global_worker.node  # no public accessor of the session
    if node is None:
        raise RuntimeError("not connected to Ray")
    return str(node.session_name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cluster.control",
                                     description="status or stop of the eventray pipeline")
    parser.add_argument("command", choices=("status", "stop"))
    parser.add_argument("--namespace", default="eventray", help="the pipeline's Ray namespace")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds for the status answer, or for stopping everything")
    parser.add_argument("--session", help="act only on the Ray session of this name")
    parser.add_argument("--ray-address", help="the GCS address (default: the job's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A job's entry point owns its process; Ray's own chatter stays out of the result.
    logging.basicConfig(level=logging.WARNING)
    import ray

    ray.init(address=args.ray_address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        if args.session is not None and _session_name() != args.session:
            print(f"{ERROR_MARK}this job's driver reached Ray session {_session_name()}, not "
                  f"{args.session} whose dashboard runs the job: several Ray instances on the "
                  f"head node share its temp dir; nothing was done", flush=True)
            return 2
        if args.command == "status":
            outcome = status(args.namespace, args.timeout)
            _result(outcome)
            return 0 if outcome.error is None else 1
        stopped = stop(args.namespace, args.timeout, _say)
        _result(stopped)
        return 0 if not stopped.remaining else 1
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
