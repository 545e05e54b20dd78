"""What ``status`` and ``stop`` ask a Ray cluster through its dashboard's HTTP port only.

``run_control`` submits ``python -m cluster.control ...`` as a short Ray job (job API), echoes
its progress lines while it runs and returns its result line; ``pipeline_actors_table`` lists the
namespace's actors with the state API. Neither needs the GCS port or a Ray client connection.

The job's code: by default this checkout's ``actors``, ``gateway`` and ``cluster`` packages go
with the job as ``py_modules`` (Ray stores them by content hash, so an unchanged checkout is
uploaded once), which is how the README submits the pipeline itself (``--working-dir .``).
``upload=False`` relies on eventray being installed on the cluster (the ``Dockerfile`` image).
The jobs stay in the dashboard's job list (a deleted job shows there as FAILED).

The job is told the dashboard's Ray session, and refuses to act on another one (see
``cluster.control``); for the local stack it also gets the stack's GCS address, since other Ray
instances on the same machine may be what Ray's job supervisor hands its driver.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from actors.exceptions import EventrayError
from cluster.control import ERROR_MARK, PROGRESS_MARK, RESULT_MARK
from cluster.settings import Settings

_POLL_S: Final = 0.5
_REACH_TIMEOUT_S: Final = 10.0
_LOG_TAIL_LINES: Final = 30
_PACKAGES: Final = ("actors", "gateway", "cluster")


class DashboardUnreachableError(EventrayError):
    """Nothing answers HTTP at the dashboard address."""


class ControlJobError(EventrayError):
    """The control job failed, or ended without a result line."""


class ActorRow(msgspec.Struct, frozen=True):
    """One actor of the namespace as the state API lists it."""

    name: str
    state: str
    class_name: str
    node_id: str | None
    pid: int | None
    restarts: int
    repr_name: str


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``status`` and ``stop`` share: where the cluster is, how the code gets there."""
    parser.add_argument("--address", metavar="URL",
                        help="a Ray dashboard, e.g. http://head:8265 (default: the local "
                             "stack's, else ray.dashboard_host/dashboard_port of the settings)")
    parser.add_argument("--no-upload", dest="upload", action="store_false",
                        help="run the eventray installed on the cluster instead of uploading "
                             "this checkout's packages with the job")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the answer (default: %(default)s)")


def local_ray_address(settings: Settings, address: str) -> str | None:
    """The local stack's GCS address when ``address`` is its dashboard, else None."""
    from cluster.local.stack import running_stack

    stack = running_stack(settings)
    return stack.ray_address if stack is not None and stack.dashboard_url == address else None


def dashboard_address(settings: Settings, explicit: str | None) -> str:
    """``explicit``, else the running local stack's dashboard, else the settings' one."""
    from cluster.local.stack import running_stack

    if explicit:
        return explicit.rstrip("/")
    stack = running_stack(settings)
    if stack is not None:
        return stack.dashboard_url
    host = settings.ray.dashboard_host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104
    return f"http://{host}:{settings.ray.dashboard_port}"


def check_reachable(address: str) -> str | None:
    """The dashboard's Ray session name (None when it does not say, e.g. behind auth); raise
    ``DashboardUnreachableError`` unless the dashboard answers HTTP."""
    import httpx

    try:
        response = httpx.get(f"{address.rstrip('/')}/api/version", timeout=_REACH_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise DashboardUnreachableError(
            f"the Ray dashboard at {address} does not answer ({type(exc).__name__}: {exc}): "
            f"is the cluster up, and is this its dashboard (--address http://<head>:8265)?"
        ) from None
    try:
        session = response.json().get("session_name") if response.is_success else None
    except ValueError:  # not JSON: not a Ray dashboard, the job submission will say so
        return None
    return str(session) if session else None


def job_runtime_env(upload: bool) -> dict[str, Any]:
    if not upload:
        return {}
    root = Path(__file__).resolve().parents[2]
    return {"py_modules": [str(root / package) for package in _PACKAGES],
            "excludes": ["__pycache__/", "*.pyc"]}


def run_control(address: str, command: Sequence[str], *, upload: bool, timeout_s: float,
                on_progress: Callable[[str], None], ray_address: str | None = None) -> bytes:
    """Run ``python -m cluster.control COMMAND`` as a job; return its result line (JSON).

    ``ray_address``: the cluster's GCS address when known (the local stack's)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Each package upload is logged at INFO (importing ray sets its loggers' levels).
        for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
            logging.getLogger(name).setLevel(logging.WARNING)
    session = check_reachable(address)
    arguments = list(command)
    if session is not None:
        arguments += ["--session", session]
    if ray_address is not None:
        arguments += ["--ray-address", ray_address]
    try:
        client = JobSubmissionClient(address)
    except ConnectionError as exc:
        raise DashboardUnreachableError(f"no Ray job API at {address}: {exc}") from None
    submission_id = f"eventray-{command[0]}-{uuid.uuid4().hex[:8]}"
    client.submit_job(
        entrypoint=shlex.join(["python", "-m", "cluster.control", *arguments]),
        submission_id=submission_id, runtime_env=job_runtime_env(upload),
        metadata={"eventray": f"control {command[0]}"},
    )
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    deadline = time.monotonic() + timeout_s
    shown = 0
    while True:
        state = client.get_job_status(submission_id)
        progress, result, error = parse_control_log(client.get_job_logs(submission_id))
        for line in progress[shown:]:
            on_progress(line)
        shown = len(progress)
        if state in terminal:
            break
        if time.monotonic() > deadline:
            client.stop_job(submission_id)
            raise ControlJobError(f"job {submission_id} did not finish in {timeout_s:g}s "
                                  f"(stopped); see it in the dashboard at {address}")
        time.sleep(_POLL_S)
    if error is not None:
        raise ControlJobError(f"job {submission_id}: {error}")
    if result is None:
        tail = "\n".join(client.get_job_logs(submission_id).splitlines()[-_LOG_TAIL_LINES:])
        raise ControlJobError(f"job {submission_id} ended {state} without a result; "
                              f"the end of its log:\n{tail}")
    return result


def parse_control_log(log: str) -> tuple[list[str], bytes | None, str | None]:
    """A control job's progress lines, its result line and its error (None: not (yet) there)."""
    progress: list[str] = []
    result: bytes | None = None
    error: str | None = None
    for line in log.splitlines():
        if line.startswith(PROGRESS_MARK):
            progress.append(line[len(PROGRESS_MARK):])
        elif line.startswith(RESULT_MARK):
            result = line[len(RESULT_MARK):].encode()
        elif line.startswith(ERROR_MARK):
            error = line[len(ERROR_MARK):]
    return progress, result, error


def pipeline_actors_table(address: str, namespace: str, *, live_only: bool = True
                          ) -> list[ActorRow]:
    """The namespace's actors (not the dead ones unless ``live_only`` is False), by name."""
    from ray.util.state import list_actors
    from ray.util.state.exception import RayStateApiException

    check_reachable(address)
    try:
        actors = list_actors(address=address, filters=[("ray_namespace", "=", namespace)],
                             detail=True, limit=10_000, raise_on_missing_output=False)
    except RayStateApiException as exc:
        raise DashboardUnreachableError(f"the state API at {address} failed: {exc}") from None
    rows = [
        ActorRow(name=a.name or "", state=str(a.state), class_name=a.class_name,
                 node_id=a.node_id, pid=a.pid or None, restarts=int(a.num_restarts or 0),
                 repr_name=a.repr_name or "")
        for a in actors
    ]
    if live_only:
        rows = [row for row in rows if row.state != "DEAD"]
    return sorted(rows, key=lambda row: (row.name, row.state))


def format_actors(rows: Sequence[ActorRow], namespace: str) -> str:
    """A fixed-width table: name, state, node, pid, restarts and the actor's repr (which Ray
    records when the actor (re)starts, so it is as of then)."""
    if not rows:
        return f"actors: none in namespace {namespace}"
    header = ("ACTOR", "STATE", "NODE", "PID", "RESTARTS", "REPR AT START")
    cells = [(row.name or f"({row.class_name})", row.state, (row.node_id or "-")[:12],
              str(row.pid or "-"), str(row.restarts), row.repr_name or "-") for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(header)]
    lines = [f"actors in namespace {namespace}:"]
    lines.append("  ".join(col.ljust(w) for col, w in zip(header, widths, strict=True)).rstrip())
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in cells]
    return "\n".join(lines)
