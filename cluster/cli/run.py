"""``eventray run``: the whole job on the local stack, end to end, with a generated workload.

Brings up the stack (Kafka, the Snowflake emulator, Ray), deploys the gateway on Ray Serve and
the pipeline (supervisor, partition consumers, sink pool), posts the workload over HTTP, shows
progress while it lands, and prints what happened: accepted, refused at the gateway, rows in the
table, dead-lettered, lost, duplicated, end-to-end events/s and accept-to-row latency.
Exits 1 when anything was lost or duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import dataclass

import httpx
import msgspec

from actors.exceptions import EventrayError
from cluster.bench.landing import Landed, LandingProbe
from cluster.bench.workload import Workload, WorkloadSpec, generate
from cluster.settings import Settings

log = logging.getLogger(__name__)


class RunFailedError(EventrayError):
    """The run could not be completed (e.g. events did not land before the timeout)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = WorkloadSpec()
    parser.add_argument("--events", type=int, default=defaults.events, help="events to send")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent HTTP requests")
    parser.add_argument("--invalid-share", type=float, default=defaults.invalid_share)
    parser.add_argument("--refused-share", type=float, default=defaults.refused_share)
    parser.add_argument("--retry-share", type=float, default=defaults.retry_share)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for landing")
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON")


@dataclass
class SendResult:
    accepted: int = 0          # events Kafka acknowledged (202), retries included
    refused: int = 0           # events the gateway refused (4xx)
    failed_requests: int = 0   # 5xx / 429 after retries: nothing of these counts as accepted
    first_accept: float = 0.0
    last_accept: float = 0.0


def run(settings: Settings, args: argparse.Namespace) -> int:
    import ray

    from actors.kafka_admin import ensure_topics
    from cluster.local.stack import ensure_up
    from cluster.supervisor import start_pipeline
    from gateway.serve_app import deploy

    settings = ensure_up(settings)
    settings.connect_ray(log_to_driver=False, logging_level=logging.WARNING)
    try:
        ensure_topics(settings.kafka, settings.topics)
        _say("deploying the gateway on Ray Serve")
        url = deploy(settings.gateway_config())
        _say(f"gateway at {url}; starting the pipeline")
        start_pipeline(settings.pipeline_config())
        spec = WorkloadSpec(
            events=args.events, batch_size=args.batch_size, invalid_share=args.invalid_share,
            refused_share=args.refused_share, retry_share=args.retry_share, seed=args.seed,
        )
        workload = generate(spec)
        probe = LandingProbe(settings.pipeline_config(), run_id=workload.run_id)
        _say(f"run {workload.run_id}: {workload.unique_events:,} events "
             f"({len(workload.invalid_ids):,} break a business rule, "
             f"{len(workload.refused_bodies):,} malformed, "
             f"{sum(map(len, workload.retry_batches)):,} re-sent as client retries)")
        sent = asyncio.run(_send(url, settings, workload, args.concurrency))
        try:
            landed = _wait_for_landing(probe, workload, args.timeout)
        finally:
            probe.close()
        summary = _summary(workload, sent, landed)
    finally:
        ray.shutdown()
    _print_summary(summary, settings)
    if args.json:
        with open(args.json, "wb") as fh:
            fh.write(msgspec.json.format(msgspec.json.encode(summary)))
    ok = summary["lost"] == 0 and summary["duplicated"] == 0 and summary["failed_requests"] == 0
    return 0 if ok else 1


async def _send(url: str, settings: Settings, workload: Workload, concurrency: int) -> SendResult:
    result = SendResult()
    headers = {"content-type": "application/json"}
    if settings.gateway.api_keys:
        headers["authorization"] = f"Bearer {settings.gateway.api_keys[0].reveal()}"
    bodies = [msgspec.json.encode(batch) for batch in workload.batches]
    bodies += [msgspec.json.encode(batch) for batch in workload.retry_batches]
    total = sum(map(len, workload.batches)) + sum(map(len, workload.retry_batches))
    queue: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue()
    for body, size in zip(bodies, [*map(len, workload.batches), *map(len, workload.retry_batches)],
                          strict=True):
        queue.put_nowait(("/v1/events/batch", body, size))
    for body in workload.refused_bodies:
        queue.put_nowait(("/v1/events", body, 1))
    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(60.0)) as client:

        async def worker() -> None:
            while not queue.empty():
                path, body, size = queue.get_nowait()
                await _post(client, path, body, size, result)

        async def progress() -> None:
            while True:
                await asyncio.sleep(2.0)
                rate = result.accepted / max(time.monotonic() - started, 1e-9)
                _say(f"  sent: {result.accepted:,}/{total:,} accepted, "
                     f"{result.refused:,} refused ({rate:,.0f} events/s)")

        reporter = asyncio.create_task(progress())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        reporter.cancel()
    _say(f"  sent: {result.accepted:,} accepted, {result.refused:,} refused, "
         f"{result.failed_requests} failed requests in {time.monotonic() - started:.1f}s")
    return result


async def _post(
    client: httpx.AsyncClient, path: str, body: bytes, size: int, result: SendResult
) -> None:
    """POST once; retry 429/503 as a client should (Retry-After), at most a few times."""
    for _attempt in range(5):
        response = await client.post(path, content=body)
        if response.status_code == 202:
            now = time.time()
            result.first_accept = result.first_accept or now
            result.last_accept = now
            result.accepted += size
            return
        if response.status_code in (429, 503):
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            continue
        if 400 <= response.status_code < 500:
            result.refused += size
            return
        break
    result.failed_requests += 1
    log.warning("request failed status=%s body=%s", response.status_code, response.text[:200])


def _wait_for_landing(probe: LandingProbe, workload: Workload, timeout: float) -> Landed:
    expected_rows, expected_dlq = len(workload.valid_ids), len(workload.invalid_ids)
    deadline = time.monotonic() + timeout
    while True:
        landed = probe.landed()
        _say(f"  landed: {landed.rows:,}/{expected_rows:,} rows, "
             f"{landed.dead_lettered:,}/{expected_dlq:,} dead-lettered")
        if landed.rows >= expected_rows and landed.dead_lettered >= expected_dlq:
            return probe.landed(with_latency=True)
        if time.monotonic() > deadline:
            _say(f"  gave up waiting after {timeout:.0f}s")
            return probe.landed(with_latency=True)
        time.sleep(2.0)


def _summary(workload: Workload, sent: SendResult, landed: Landed) -> dict[str, object]:
    expected = workload.valid_ids | workload.invalid_ids
    arrived = landed.row_keys | landed.dlq_keys
    lost = len(expected - arrived)
    duplicated = (landed.rows - len(landed.row_keys)) + (
        landed.dead_lettered - len(landed.dlq_keys)
    )
    span = max(landed.last_written - sent.first_accept, 1e-9) if landed.last_written else 0.0
    return {
        "run_id": workload.run_id,
        "accepted": sent.accepted,
        "refused_at_gateway": sent.refused,
        "failed_requests": sent.failed_requests,
        "rows": landed.rows,
        "dead_lettered": landed.dead_lettered,
        "expected_rows": len(workload.valid_ids),
        "expected_dead_lettered": len(workload.invalid_ids),
        "lost": lost,
        "duplicated": duplicated,
        "misplaced": len(landed.row_keys & workload.invalid_ids)
        + len(landed.dlq_keys & workload.valid_ids),
        "end_to_end_events_per_s": round(len(arrived) / span) if span else 0,
        "latency_p50_ms": landed.latency_p50_ms,
        "latency_p99_ms": landed.latency_p99_ms,
    }


def _print_summary(summary: dict[str, object], settings: Settings) -> None:
    width = max(map(len, summary))
    print("\n== eventray run summary ==")
    for key, value in summary.items():
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        print(f"  {key:<{width}}  {shown}")
    print(f"\nRay dashboard: http://{settings.ray.dashboard_host}:{settings.ray.dashboard_port}"
          "  (actors: consumer:*, sink:*, eventray-supervisor)")
    print("The stack keeps running: 'eventray status' shows lag, 'eventray down' stops it.")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
