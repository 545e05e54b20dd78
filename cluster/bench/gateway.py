"""``eventray bench gateway``: HTTP -> Kafka through Ray Serve vs plain uvicorn vs no HTTP.

One run, one Kafka, the same app: (1) a plain produce loop (the producer's ceiling), (2) the
app under plain uvicorn in ``--replicas`` subprocesses, (3) the app deployed on Ray Serve
(HAProxy ingress, throughput-optimized, ``--replicas`` replicas) in an in-process Ray
instance. Each HTTP setup gets three phases, driven by a load generator in its own process
(raw asyncio HTTP/1.1 with keep-alive at a fixed concurrency): 1-event requests at 32
connections (bound by the producer's linger: each request waits ~linger for its ack, so the
rate is about connections / latency whatever the CPU), 1-event requests at 256 connections
(enough in flight that the CPU binds: the figure that compares Serve with uvicorn; at 512
Serve's p99 reached 11 s and its CPU per request grew by half) and
1000-event requests. Setups run one after the other so they do not compete for the CPUs.
Loopback only; every phase is bounded by time and request count.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from actors.config import KafkaConnection, TopicsConfig
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_CONTENT_TYPE,
    HEADER_REQUEST_ID,
    HEADER_SCHEMA_VERSION,
    RECORD_CONTENT_TYPE,
    SCHEMA_VERSION,
    EventCodec,
    PaymentBody,
    PaymentCaptured,
)
from actors.exceptions import EventrayError
from cluster.bench.cpu_usage import OWN_ROLE, CpuSnapshot, tree_usage_between
from cluster.bench.cpu_usage import snapshot as cpu_snapshot
from cluster.bench.raw_http import exchange
from cluster.local.ray_head import use_loopback_for_in_process_ray
from cluster.settings import Settings
from gateway.config import GatewayConfig, ServeConfig
from gateway.producer import producer_config
from gateway.server import encode_config

_T = TypeVar("_T")

TARGETS = {"single_cpu_ratio": 0.9, "batch_ratio": 0.9, "batch_vs_produce": 0.7}
# Per 1-event request (CPU-bound phase) and per event (1000-event requests), µs.
CPU_TARGETS_US = {"single_cpu_replica": 150.0, "single_cpu_serve_side": 250.0,
                  "batch_replica": 6.0}
SERVE_REPLICA_ROLE = "gateway (Serve replica)"
# Every process that serves requests in Serve's setup (HAProxy, the replica, Ray's own).
SERVE_SIDE_ROLES = frozenset({SERVE_REPLICA_ROLE, "haproxy", "other ray workers",
                              "ray system"})
# Phase name -> (request kind, the argument holding its concurrency).
PHASES = {"single": ("single", "single_concurrency"),
          "single_cpu": ("single", "single_cpu_concurrency"),
          "batch": ("batch", "batch_concurrency")}


class BenchError(EventrayError):
    """The benchmark could not run a phase."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting a local one")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap per phase")
    parser.add_argument("--single-concurrency", type=int, default=32,
                        help="connections of the latency-bound 1-event phase")
    parser.add_argument("--single-cpu-concurrency", type=int, default=256,
                        help="connections of the CPU-bound 1-event phase")
    parser.add_argument("--batch-concurrency", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--produce-events", type=int, default=500_000,
                        help="records of the plain produce loop")
    parser.add_argument("--rounds", type=_positive_int, default=3,
                        help="runs of every phase; the median one is reported")
    parser.add_argument("--replicas", type=_positive_int, default=1,
                        help="Serve replicas, and as many plain uvicorn processes")
    parser.add_argument("--skip", choices=["serve", "raw"], action="append", default=[])
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


# -- workload -------------------------------------------------------------------------------


def _events(prefix: str, count: int, accounts: int = 1000) -> list[PaymentCaptured]:
    now = datetime.now(UTC)
    return [
        PaymentCaptured(
            event_id=f"{prefix}-{n:07d}", account_id=f"acct-{n % accounts:05d}", occurred_at=now,
            body=PaymentBody(amount_minor=100 + n, currency="EUR", merchant_id="m-bench"),
        )
        for n in range(count)
    ]


def _bodies(kind: str, batch_size: int) -> list[bytes]:
    if kind == "single":
        return [msgspec.json.encode(e) for e in _events("s", 2000)]
    return [msgspec.json.encode(_events(f"b{i}", batch_size)) for i in range(8)]


# -- load generator (own process) -----------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    urls: tuple[str, ...]  # connections are spread over them (several uvicorn processes)
    kind: str  # "single" | "batch"
    batch_size: int
    concurrency: int
    duration_s: float
    warmup_s: float
    max_requests: int


class PhaseResult(msgspec.Struct):
    requests: int
    events: int
    errors: dict[str, int]
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    rounds: list[float] = []  # events/s of every round when this is the median one
    # CPU seconds by role over the measured window (the bench's own processes), and those
    # of every other process on the machine (noise on a shared machine).
    cpu_s: dict[str, float] = {}
    outside_cpu_s: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0


def _load_process(spec: LoadSpec, conn: Connection) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        pass
    try:
        conn.send_bytes(msgspec.msgpack.encode(asyncio.run(_drive(spec))))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send_bytes(msgspec.msgpack.encode({"error": f"{type(exc).__name__}: {exc}"}))
    finally:
        conn.close()


async def _drive(spec: LoadSpec) -> PhaseResult:
    path = "/v1/events" if spec.kind == "single" else "/v1/events/batch"
    per_request = 1 if spec.kind == "single" else spec.batch_size
    bodies = _bodies(spec.kind, spec.batch_size)
    targets: list[tuple[str, int, list[bytes]]] = []  # (host, port, ready requests) per URL
    for url in spec.urls:
        host_port = url.removeprefix("http://").split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        targets.append((host, int(port), [
            (f"POST {path} HTTP/1.1\r\nHost: {host_port}\r\n"
             f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
             ).encode() + body for body in bodies]))
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = [0]
    measuring = [False]
    stop_at = [float("inf")]

    async def connection(worker: int) -> None:
        host, port, requests = targets[worker % len(targets)]
        reader, writer = await asyncio.open_connection(host, port)
        n = worker
        try:
            while time.perf_counter() < stop_at[0] and counter[0] < spec.max_requests:
                payload = requests[n % len(requests)]
                n += spec.concurrency
                started = time.perf_counter()
                try:
                    status = await exchange(reader, writer, payload)
                except (asyncio.IncompleteReadError, ConnectionError):
                    # The server may close a keep-alive connection (HAProxy does on a reload,
                    # e.g. when a replica joins): count it and reconnect, as an HTTP client does.
                    status = "closed"
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                if measuring[0]:
                    if status == "202":
                        latencies.append(time.perf_counter() - started)
                        counter[0] += 1
                    else:
                        errors[status] = errors.get(status, 0) + 1
        finally:
            writer.close()

    workers = [asyncio.create_task(connection(i)) for i in range(spec.concurrency)]
    await asyncio.sleep(spec.warmup_s)
    cpu_before = cpu_snapshot(time.perf_counter())  # here, while every process runs
    measuring[0] = True
    begin = time.perf_counter()
    stop_at[0] = begin + spec.duration_s
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - begin
    cpu, outside_s = _bench_usage(cpu_before, cpu_snapshot(time.perf_counter()),
                                  os.getppid())
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies \
            else 0.0

    return PhaseResult(len(latencies), len(latencies) * per_request, errors, elapsed,
                       pct(0.50), pct(0.99), cpu_s=_relabel(cpu, "load generator"),
                       outside_cpu_s=outside_s)


def _bench_usage(before: CpuSnapshot, after: CpuSnapshot,
                 root: int) -> tuple[dict[str, float], float]:
    """CPU seconds by role of the processes descending from ``root`` (the bench: its broker,
    its uvicorn processes, its Ray instance with HAProxy and the replicas), and the CPU
    seconds of every other process on the machine (other work on a shared machine, which
    role names alone would count as this bench's: Ray workers of another Ray instance)."""
    report, outside = tree_usage_between(before, after, root)
    return report.by_role, outside


def _relabel(by_role: dict[str, float], own: str) -> dict[str, float]:
    """``by_role`` with the measuring process's role named after what it does here."""
    renamed = dict(by_role)
    if OWN_ROLE in renamed:
        renamed[own] = renamed.pop(OWN_ROLE)
    return renamed


def cpu_per_event(cpu_s: dict[str, float], events: int) -> dict[str, float]:
    """CPU microseconds per event by role, largest first, roles under 0.05 us left out."""
    per_event = {role: secs / events * 1e6 for role, secs in cpu_s.items() if events}
    return {role: round(us, 2) for role, us in sorted(per_event.items(), key=lambda i: -i[1])
            if us >= 0.05}


def run_load(spec: LoadSpec) -> PhaseResult:
    """Drive one phase from a separate process (so the client does not share the server's
    interpreter) and return its figures."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_load_process, args=(spec, child), name="bench-load")
    process.start()
    child.close()
    deadline = spec.warmup_s + spec.duration_s + 120
    if not parent.poll(deadline):
        process.kill()
        raise BenchError(f"load generator gave no result within {deadline:.0f}s")
    raw = msgspec.msgpack.decode(parent.recv_bytes())
    process.join(timeout=30)
    if isinstance(raw, dict) and "error" in raw:
        raise BenchError(f"load generator failed: {raw['error']}")
    return msgspec.convert(raw, PhaseResult)


# -- the three setups -----------------------------------------------------------------------


class LoopResult(msgspec.Struct, frozen=True):
    events_per_s: float
    cpu_s: dict[str, float]  # CPU seconds by role while the loop ran


def produce_ceiling(config: GatewayConfig, count: int) -> LoopResult:
    """A plain produce loop: same producer settings, records and headers as the gateway
    writes, delivery callbacks counted, no HTTP."""
    from confluent_kafka import Producer

    codec = EventCodec()
    events = _events("p", 10_000)
    values = [codec.encode(e) for e in events]
    keys = [e.account_id.encode() for e in events]
    headers: list[tuple[str, str | bytes | None]] = [
        (HEADER_CONTENT_TYPE, RECORD_CONTENT_TYPE.encode()),
        (HEADER_REQUEST_ID, uuid.uuid4().hex.encode()),
        (HEADER_ACCEPTED_AT_MS, str(time.time_ns() // 1_000_000).encode()),
        (HEADER_SCHEMA_VERSION, str(SCHEMA_VERSION).encode()),
    ]
    producer = Producer(producer_config(config))
    done = [0, 0]

    def delivered(err: Any, _msg: Any) -> None:
        done[0 if err is None else 1] += 1

    topic = config.topics.events
    for n in range(20_000):  # warm up: connections, producer id, metadata
        producer.produce(topic, values[n % len(values)], keys[n % len(keys)], headers=headers)
    producer.flush(60)
    started = time.perf_counter()
    cpu_before = cpu_snapshot(started)
    for n in range(count):
        i = n % len(values)
        while True:
            try:
                producer.produce(topic, values[i], keys[i], headers=headers,
                                 on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.01)
        if n % 1000 == 0:
            producer.poll(0)
    left = producer.flush(60)
    finished = time.perf_counter()
    cpu, _ = _bench_usage(cpu_before, cpu_snapshot(finished), os.getpid())
    if left or done[1]:
        raise BenchError(f"produce loop: {left} unsent, {done[1]} failed deliveries")
    return LoopResult(count / (finished - started), _relabel(cpu, "produce loop"))


def _phases(urls: tuple[str, ...], args: argparse.Namespace) -> dict[str, PhaseResult]:
    """Each phase ``args.rounds`` times, 1-event and batch phases alternating; per kind the
    round with the median events/s (one noisy phase on a shared 2-core machine moves the
    figure by 15-25%), carrying every round's events/s in ``rounds``."""
    common = {"duration_s": args.duration, "warmup_s": args.warmup,
              "max_requests": args.max_requests, "batch_size": args.batch_size}
    specs = {phase: LoadSpec(urls, kind, concurrency=getattr(args, conc), **common)
             for phase, (kind, conc) in PHASES.items()}
    runs: dict[str, list[PhaseResult]] = {kind: [] for kind in specs}
    for _ in range(args.rounds):
        for kind, spec in specs.items():
            runs[kind].append(run_load(spec))
    return {kind: _median_round(results) for kind, results in runs.items()}


def _median_round(results: list[PhaseResult]) -> PhaseResult:
    median = _lower_median(results, key=lambda result: result.events_per_s)
    return msgspec.structs.replace(median, rounds=[r.events_per_s for r in results])


def _lower_median(items: list[_T], key: Callable[[_T], float]) -> _T:
    """The lower middle item by ``key``: a measured round, never a mean of rounds."""
    return sorted(items, key=key)[(len(items) - 1) // 2]


def raw_uvicorn(config: GatewayConfig, args: argparse.Namespace) -> dict[str, PhaseResult]:
    """The same app under plain uvicorn: as many processes as Serve gets replicas, each
    started as a subprocess on its own port; the load generator spreads its connections."""
    from cluster.local.processes import free_port

    processes: list[subprocess.Popen[bytes]] = []
    try:
        urls: list[str] = []
        for _ in range(args.replicas):
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway.server"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": _pythonpath()},
            )
            processes.append(process)
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(encode_config(msgspec.structs.replace(config, port=free_port())))
            process.stdin.close()
            line = process.stdout.readline().decode().strip()
            if not line.startswith("listening on "):
                raise BenchError(f"uvicorn gateway did not start: {line!r}")
            urls.append(line.removeprefix("listening on "))
        for url in urls:
            _wait_ready(url)
        return _phases(tuple(urls), args)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def ray_serve(config: GatewayConfig, args: argparse.Namespace) -> dict[str, PhaseResult]:
    """The same app deployed on Ray Serve with HAProxy ingress, in an in-process Ray."""
    import ray
    from ray import serve as _serve

    from cluster.local.processes import free_port
    from gateway.serve_app import deploy, haproxy_pids, serve_env

    env = serve_env(config.serve, isolate=True, pick_port=free_port)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # before ray.init: the raylet and its workers inherit them
    use_loopback_for_in_process_ray()
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
             namespace=f"bench-{uuid.uuid4().hex[:6]}",
             runtime_env={"env_vars": {"PYTHONPATH": _pythonpath()}})
    try:
        config = msgspec.structs.replace(config, port=free_port())
        url = deploy(config)
        _wait_ready(url)
        if config.serve.haproxy and not haproxy_pids(env.get(
                "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC")):
            raise BenchError("HAProxy ingress was requested but no haproxy process runs")
        return _phases((url,), args)
    finally:
        try:
            _serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()
            shutil.rmtree(env.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", ""), ignore_errors=True)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _pythonpath() -> str:
    root = str(Path(__file__).resolve().parents[2])
    existing = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{existing}" if existing else root


def _wait_ready(url: str, timeout_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise BenchError(f"{url} not ready within {timeout_s:g}s: {last}")


# -- orchestration --------------------------------------------------------------------------


def run(settings: Settings, args: argparse.Namespace) -> int:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    from cluster.local.kafka_broker import LocalKafka

    scratch = Path(tempfile.mkdtemp(prefix="eventray-bench-"))
    kafka: LocalKafka | None = None
    try:
        if args.bootstrap:
            connection = KafkaConnection(bootstrap_servers=args.bootstrap)
        else:
            kafka = LocalKafka(scratch / "kafka", port=0, controller_port=0,
                               version=settings.local.kafka_version,
                               cache_dir=settings.cache_path())
            print("starting a local Kafka broker ...", flush=True)
            kafka.start()
            connection = KafkaConnection(bootstrap_servers=kafka.bootstrap_servers)
        topic = f"bench-gateway-{uuid.uuid4().hex[:8]}"
        admin = AdminClient(connection.client_config())
        for future in admin.create_topics(
                [NewTopic(topic, settings.topics.partitions, 1)]).values():
            future.result(timeout=60)
        del admin
        base = settings.gateway_config()
        config = msgspec.structs.replace(
            base, host="127.0.0.1", kafka=connection, api_keys=[],
            topics=TopicsConfig(events=topic, partitions=settings.topics.partitions,
                                replication_factor=1, min_insync_replicas=1,
                                durability="local"),  # created above with one replica
            serve=msgspec.structs.replace(base.serve, app_name="eventray-bench-gateway",
                                          num_replicas=args.replicas, autoscaling=False),
        )
        print(f"plain produce loop: {args.produce_events:,} records x {args.rounds} "
              "(after one unmeasured round) ...", flush=True)
        # A fresh broker's JVM is still compiling: measured before that, the first rounds
        # ran at 60-70% of a warm one's rate and flattered every ratio against the loop.
        produce_ceiling(config, args.produce_events)
        produced = [produce_ceiling(config, args.produce_events) for _ in range(args.rounds)]
        loop = _lower_median(produced, key=lambda result: result.events_per_s)
        results: dict[str, dict[str, PhaseResult]] = {}
        if "raw" not in args.skip:
            print(f"plain uvicorn ({args.replicas} process(es)) ...", flush=True)
            results["raw"] = raw_uvicorn(config, args)
        if "serve" not in args.skip:
            print(f"Ray Serve ({args.replicas} replica(s), {_mode(config.serve)}) ...",
                  flush=True)
            results["serve"] = ray_serve(config, args)
    finally:
        if kafka is not None:
            kafka.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    summary = _summary(results, loop, args.produce_events)
    summary["raw_produce_rounds_events_per_s"] = [round(r.events_per_s, 1) for r in produced]
    summary["replicas"] = args.replicas
    _print(results, loop.events_per_s, summary, args)
    if args.json:
        Path(args.json).write_bytes(msgspec.json.format(msgspec.json.encode(summary)))
    return 0


def _mode(serve: ServeConfig) -> str:
    parts = ["HAProxy ingress" if serve.haproxy else "default proxy"]
    if serve.throughput_optimized:
        parts.append("throughput-optimized")
    return ", ".join(parts)


def _summary(results: dict[str, dict[str, PhaseResult]], loop: LoopResult,
             loop_events: int) -> dict[str, Any]:
    ceiling = loop.events_per_s
    summary: dict[str, Any] = {}
    for kind in PHASES:
        serve = results.get("serve", {}).get(kind)
        raw = results.get("raw", {}).get(kind)
        entry: dict[str, Any] = {
            "serve_events_per_s": round(serve.events_per_s, 1) if serve else None,
            "raw_events_per_s": round(raw.events_per_s, 1) if raw else None,
            "serve_requests_per_s": round(serve.requests_per_s, 1) if serve else None,
            "raw_requests_per_s": round(raw.requests_per_s, 1) if raw else None,
            "ratio": round(serve.events_per_s / raw.events_per_s, 3)
            if serve and raw and raw.events_per_s else None,
            "serve_p99_ms": round(serve.p99_ms, 2) if serve else None,
        }
        entry.update({
            "serve_p50_ms": round(serve.p50_ms, 2) if serve else None,
            "raw_p50_ms": round(raw.p50_ms, 2) if raw else None,
            "raw_p99_ms": round(raw.p99_ms, 2) if raw else None,
            "serve_errors": serve.errors if serve else None,
            "raw_errors": raw.errors if raw else None,
            "serve_rounds_events_per_s": [round(v, 1) for v in serve.rounds] if serve else None,
            "raw_rounds_events_per_s": [round(v, 1) for v in raw.rounds] if raw else None,
            "serve_cpu_us_per_event": cpu_per_event(serve.cpu_s, serve.events) if serve
            else None,
            "raw_cpu_us_per_event": cpu_per_event(raw.cpu_s, raw.events) if raw else None,
            # Cores busy outside the bench meanwhile (other work on a shared machine).
            "serve_outside_cores": round(serve.outside_cpu_s / serve.elapsed_s, 2)
            if serve and serve.elapsed_s else None,
            "raw_outside_cores": round(raw.outside_cpu_s / raw.elapsed_s, 2)
            if raw and raw.elapsed_s else None,
        })
        if serve:  # the replica alone, and every process that serves in Serve's setup
            per_event = entry["serve_cpu_us_per_event"]
            entry["serve_replica_cpu_us_per_event"] = per_event.get(SERVE_REPLICA_ROLE, 0.0)
            entry["serve_side_cpu_us_per_event"] = round(
                sum(us for role, us in per_event.items() if role in SERVE_SIDE_ROLES), 2)
        summary[kind] = entry
    summary["raw_produce_events_per_s"] = round(ceiling, 1)
    summary["raw_produce_cpu_us_per_event"] = cpu_per_event(loop.cpu_s, loop_events)
    batch_serve = summary["batch"]["serve_events_per_s"]
    summary["batch_serve_vs_produce"] = round(batch_serve / ceiling, 3) if batch_serve else None
    return summary


def _cpu_line(per_event: dict[str, float]) -> str:
    total = sum(per_event.values())
    return f"{total:.1f} = " + ", ".join(f"{role} {us:.1f}" for role, us in per_event.items())


def _print(results: dict[str, dict[str, PhaseResult]], ceiling: float,
           summary: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(f"{'setup':<16}{'request':<12}{'conc':>5}{'req/s':>10}{'events/s':>12}"
          f"{'p50 ms':>9}{'p99 ms':>9}  errors")
    for setup in ("raw", "serve"):
        for kind, phase in results.get(setup, {}).items():
            request_kind, conc_arg = PHASES[kind]
            conc = getattr(args, conc_arg)
            label = "1 event" if request_kind == "single" else f"{args.batch_size} events"
            spread = ", ".join(f"{v:,.0f}" for v in phase.rounds)
            print(f"{'uvicorn' if setup == 'raw' else 'Ray Serve':<16}{label:<12}{conc:>5}"
                  f"{phase.requests_per_s:>10,.0f}{phase.events_per_s:>12,.0f}"
                  f"{phase.p50_ms:>9.2f}{phase.p99_ms:>9.2f}  {phase.errors or '-'}"
                  f"  (rounds, events/s: {spread})")
            kind_summary = summary[kind][f"{setup}_cpu_us_per_event"]
            unit = "request" if request_kind == "single" else "event"
            outside = summary[kind][f"{setup}_outside_cores"]
            print(f"{'':<16}cpu µs/{unit}: {_cpu_line(kind_summary)}"
                  f" (outside the bench: {outside:.2f} cores)")
    produced = ", ".join(f"{v:,.0f}" for v in summary["raw_produce_rounds_events_per_s"])
    print(f"{'produce loop':<16}{'-':<12}{'-':>5}{'-':>10}{ceiling:>12,.0f}"
          f"{'':>36}(rounds, events/s: {produced})")
    print(f"{'':<16}cpu µs/event: {_cpu_line(summary['raw_produce_cpu_us_per_event'])}")
    print()

    def verdict(value: float | None, target: float) -> str:
        if value is None:
            return "n/a"
        return f"{value:.2f} ({'meets' if value >= target else 'below'} target {target})"

    def at_most(value: float | None, target: float) -> str:
        if value is None:
            return "n/a"
        return f"{value:.1f} µs ({'meets' if value <= target else 'over'} target {target:g})"

    single = summary["single"]["ratio"]
    print(f"Serve / uvicorn, 1-event requests, {args.single_concurrency} connections "
          f"(linger-bound): {'n/a' if single is None else f'{single:.2f}'}")
    print(f"Serve / uvicorn, 1-event requests, {args.single_cpu_concurrency} connections "
          "(CPU-bound): " + verdict(summary["single_cpu"]["ratio"], TARGETS["single_cpu_ratio"]))
    print(f"Serve / uvicorn, {args.batch_size}-event requests: "
          + verdict(summary["batch"]["ratio"], TARGETS["batch_ratio"]))
    print("Serve batch / plain produce loop: "
          + verdict(summary["batch_serve_vs_produce"], TARGETS["batch_vs_produce"]))
    cpu, batch = summary["single_cpu"], summary["batch"]
    print("Serve replica CPU per 1-event request: "
          + at_most(cpu.get("serve_replica_cpu_us_per_event"),
                    CPU_TARGETS_US["single_cpu_replica"]))
    print("Serve-side CPU (replica, HAProxy, Ray) per 1-event request: "
          + at_most(cpu.get("serve_side_cpu_us_per_event"),
                    CPU_TARGETS_US["single_cpu_serve_side"]))
    print(f"Serve replica CPU per event, {args.batch_size}-event requests: "
          + at_most(batch.get("serve_replica_cpu_us_per_event"),
                    CPU_TARGETS_US["batch_replica"]))
