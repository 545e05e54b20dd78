"""``eventray logs NAME``: print (or follow) the log of a local service, an actor or a Ray job.

NAME is one of

* ``kafka``, ``snowflake``, ``ray``: the local stack's service logs (what each process wrote to
  ``<state dir>/logs/<name>.log``; for ``ray``, the output of ``ray start``);
* ``ray:<file>``: a file of the Ray head's session logs (``raylet.out``, ``gcs_server.out``,
  ``dashboard.log``, ...), read through the dashboard;
* an actor name (``consumer:events:0``, ``sink:1``, ``eventray-supervisor``): its worker's
  ``.err`` file, where Python logging goes (``--stdout`` for its ``.out`` file, ``print``);
* ``job:<submission id>``: a Ray job's driver log.

Actors and jobs are read through the dashboard's log API (the local stack's, or ``--address``),
so they work against a remote cluster too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from actors.exceptions import EventrayError
from cluster.settings import Settings

SERVICES: Final = ("kafka", "snowflake", "ray")
JOB_PREFIX: Final = "job:"
RAY_FILE_PREFIX: Final = "ray:"
_FOLLOW_POLL_S: Final = 0.5
_BLOCK: Final = 64 * 1024


class LogUnavailableError(EventrayError):
    """No service, actor or job of that name (the message lists what there is), or nothing
    answers where its log is."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="SERVICE|ACTOR",
                        help="kafka | snowflake | ray | ray:<file> | an actor name such as "
                             "consumer:events:0, sink:1, eventray-supervisor | job:<submission id>")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing what is appended (Ctrl-C ends)")
    parser.add_argument("-n", "--lines", type=int, default=100,
                        help="lines from the end to print first (-1: the whole log; "
                             "default: %(default)s)")
    parser.add_argument("--stdout", action="store_true",
                        help="an actor's stdout (.out: print) instead of its stderr (.err: "
                             "Python logging)")
    parser.add_argument("--address", metavar="URL",
                        help="a Ray dashboard, e.g. http://head:8265 (default: the local "
                             "stack's, else ray.dashboard_host/dashboard_port of the settings)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        if args.name in SERVICES:
            _print_file(service_log_path(settings, args.name), args.lines, args.follow, out)
        else:
            _print_ray_log(settings, args, out)
    except KeyboardInterrupt:  # the way -f ends
        pass
    return 0


# -- local service logs ------------------------------------------------------------------------

def service_log_path(settings: Settings, name: str) -> Path:
    """Where the local stack's ``name`` service writes its output (per the state file)."""
    from cluster.local.stack import read_state, state_file

    recorded = read_state(settings)
    if name not in recorded:
        raise LogUnavailableError(f"no local {name} recorded in {state_file(settings)} "
                              f"(run 'eventray up', or set EVENTRAY_LOCAL__STATE_DIR)")
    return Path(recorded[name].process.log_path)


def tail_lines(path: Path, count: int) -> tuple[list[str], int]:
    """The last ``count`` lines of ``path`` (all of them for a negative count) and the size
    read up to, where following continues. Reads from the end, a block at a time."""
    with path.open("rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        if count < 0:
            fh.seek(0)
            data = fh.read(end)
        else:
            start, data = end, b""
            while start > 0 and data.count(b"\n") <= count:
                start = max(0, start - _BLOCK)
                fh.seek(start)
                data = fh.read(end - start)
    lines = data.decode("utf-8", errors="replace").splitlines()
    return (lines if count < 0 else lines[-count:] if count else []), end


def _print_file(path: Path, count: int, follow: bool, out: TextIO) -> None:
    try:
        lines, position = tail_lines(path, count)
    except FileNotFoundError:
        raise LogUnavailableError(f"{path} does not exist (yet)") from None
    for line in lines:
        out.write(line + "\n")
    out.flush()
    while follow:
        time.sleep(_FOLLOW_POLL_S)
        size = path.stat().st_size
        if size < position:  # truncated or replaced: start over
            position = 0
        if size > position:
            with path.open("rb") as fh:
                fh.seek(position)
                chunk = fh.read(size - position)
            position += len(chunk)
            out.write(chunk.decode("utf-8", errors="replace"))
            out.flush()


# -- actors, jobs and Ray's own files, through the dashboard -----------------------------------

def _print_ray_log(settings: Settings, args: argparse.Namespace, out: TextIO) -> None:
    from cluster.cli.dashboard_client import check_reachable, dashboard_address

    address = dashboard_address(settings, args.address)
    check_reachable(address)
    if args.name.startswith(JOB_PREFIX):
        _print_job_log(address, args.name[len(JOB_PREFIX):], args.lines, args.follow, out)
        return
    if args.name.startswith(RAY_FILE_PREFIX):
        query = {"node_id": _head_node_id(address),
                 "filename": args.name[len(RAY_FILE_PREFIX):]}
    else:
        actor = pick_actor(_actors_named(address, args.name), args.name, settings.ray.namespace)
        if actor is None:
            raise LogUnavailableError(_unknown_message(address, args.name))
        query = {"actor_id": actor["actor_id"], "suffix": "out" if args.stdout else "err"}
    for chunk in _log_api(address, query, args.lines, args.follow):
        out.write(chunk)
        out.flush()


def pick_actor(actors: Sequence[dict[str, Any]], name: str, namespace: str
               ) -> dict[str, Any] | None:
    """Of the actors called ``name`` (state API rows), the one to read: in ``namespace`` if
    any is there, and the live one (a name belongs to one live actor per namespace) before the
    dead ones, which the state API lists without a start time (then the last listed)."""
    named = [a for a in actors if a.get("name") == name]
    if any(a.get("ray_namespace") == namespace for a in named):
        named = [a for a in named if a.get("ray_namespace") == namespace]
    alive = [a for a in named if a.get("state") != "DEAD"]
    chosen = alive or named
    return chosen[-1] if chosen else None


def _actors_named(address: str, name: str) -> list[dict[str, Any]]:
    from ray.util.state import list_actors

    rows = list_actors(address=address, filters=[("name", "=", name)], detail=True,
                       limit=1000, raise_on_missing_output=False)
    return [{"name": a.name, "actor_id": a.actor_id, "state": str(a.state),
             "ray_namespace": a.ray_namespace} for a in rows]


def _head_node_id(address: str) -> str:
    from ray.util.state import list_nodes

    heads = list_nodes(address=address, filters=[("is_head_node", "=", True)])
    if not heads:
        raise LogUnavailableError(f"the cluster at {address} lists no head node")
    return str(heads[0].node_id)


def _log_api(address: str, query: dict[str, Any], lines: int, follow: bool) -> Iterator[str]:
    """The dashboard's log endpoint (what ``ray.util.state.get_log`` calls, which wants a GCS
    address; this takes the dashboard URL), as text chunks."""
    import httpx

    from cluster.local.ray_head import auth_headers

    media = "stream" if follow else "file"
    params = {**query, "lines": lines, "media_type": media}
    if follow:
        params["interval"] = _FOLLOW_POLL_S
    timeout = httpx.Timeout(30.0, read=None if follow else 30.0)
    with httpx.stream("GET", f"{address}/api/v0/logs/{media}", params=params,
                      headers=auth_headers(), timeout=timeout) as response:
        if response.status_code != 200:
            response.read()
            raise LogUnavailableError(f"the log API at {address} answered "
                                  f"{response.status_code}: {response.text.strip()[:500]}")
        yield from response.iter_text()


def _print_job_log(address: str, submission_id: str, lines: int, follow: bool,
                   out: TextIO) -> None:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    try:
        text = client.get_job_logs(submission_id)
    except RuntimeError as exc:  # the SDK's error for an unknown job
        raise LogUnavailableError(f"{exc}\n{_unknown_message(address, JOB_PREFIX + submission_id)}"
                              ) from None
    kept = text.splitlines()
    for line in kept if lines < 0 else kept[-lines:] if lines else []:
        out.write(line + "\n")
    out.flush()
    if not follow:
        return

    async def tail() -> None:
        # tail_job_logs streams from the start of the log: skip what was printed above.
        skip = len(text)
        async for chunk in client.tail_job_logs(submission_id):
            shown = chunk[skip:]
            skip = max(0, skip - len(chunk))
            if shown:
                out.write(shown)
                out.flush()

    asyncio.run(tail())


def _unknown_message(address: str, name: str) -> str:
    """What there is to read, for an error about ``name``."""
    from ray.util.state import list_actors, list_jobs

    actors = sorted({a.name for a in list_actors(address=address, limit=1000,
                                                 raise_on_missing_output=False)
                     if a.name and a.state != "DEAD" and not a.name.startswith("_ray_")
                     and not a.name.startswith("SERVE_")})
    jobs = sorted((j for j in list_jobs(address=address) if j.submission_id),
                  key=lambda j: j.start_time or 0)[-5:]
    return (f"no service, actor or job named {name!r} at {address}.\n"
            f"  services (local stack): {', '.join(SERVICES)}, ray:<file>\n"
            f"  live actors: {', '.join(actors) or '(none)'}\n"
            f"  latest jobs: {', '.join(JOB_PREFIX + str(j.submission_id) for j in jobs)}")
