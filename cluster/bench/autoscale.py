"""``eventray bench autoscale``: a step load (steady, a burst, steady) against a pipeline that
scales its sink pool on lag, on a Ray cluster that scales its nodes on demand.

Kafka and the Snowflake emulator are the bench's own (in a temp dir) unless ``--bootstrap`` /
``--snowflake-port`` name running ones. Ray is an autoscaling cluster of the bench's own
(``cluster.bench.autoscaling_ray``: Ray's fake multi-node provider, real raylets, the real
autoscaler) whose head fits the consumers and the first sink and nothing more; each further sink
needs a worker node (``--sink-cpus`` each, ``--max-nodes`` of them).

A producer thread writes events to the topic as the gateway does (key, the accept time in the
``eventray-accepted-at-ms`` header, acks=all, idempotent): ``--steady-rate`` events/s for
``--steady-s``, then ``--burst-events`` as fast as it can, then the steady rate again until the
pool is back at its initial size and the extra nodes are gone (or ``--after-s`` passed). Every
``--sample-s`` the bench samples the lag, the pool size and the node count; afterwards it reads
every row's accept and write time from the warehouse and gives each sample the p99 of the
accept-to-row latency of the events accepted in it. Lost and duplicated events are counted
against the acknowledged ids. Prints a table, writes a plot (``--plot``, PNG; needs
matplotlib, ``pip install 'eventray[bench]'``) and ``--json``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from actors.config import KafkaConnection, PipelineConfig, SnowflakeConfig
from cluster.bench.stack import BenchError, bench_stack
from cluster.settings import Settings

_REPO: Final = Path(__file__).resolve().parents[2]
_TICK_S: Final = 0.05
_CONSUMER_CPUS: Final = 0.25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--steady-rate", type=int, default=500, help="events/s (default 500)")
    parser.add_argument("--steady-s", type=float, default=20.0,
                        help="steady load before the burst (s)")
    parser.add_argument("--burst-events", type=int, default=300_000,
                        help="events produced as fast as possible (default 300000)")
    parser.add_argument("--after-s", type=float, default=240.0,
                        help="steady load after the burst, at most (s): it ends earlier once "
                             "the pool and the nodes are back where they started")
    parser.add_argument("--initial-sinks", type=int, default=1)
    parser.add_argument("--max-sinks", type=int, default=4)
    parser.add_argument("--target-drain-s", type=float, default=10.0)
    parser.add_argument("--cooldown-s", type=float, default=15.0,
                        help="at least the busy share's 15 s window, so a decision after a "
                             "change sees the new pool only")
    parser.add_argument("--sink-cpus", type=float, default=1.0,
                        help="CPUs a sink requests (a worker node has this many)")
    parser.add_argument("--max-nodes", type=int, default=3, help="worker nodes, at most")
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument("--plot", default="bench-autoscale.png", help="PNG file ('' for none)")
    parser.add_argument("--json", dest="json_path", help="write the result as JSON here")
    parser.add_argument("--bootstrap", help="a running Kafka (default: the bench's own)")
    parser.add_argument("--snowflake-port", type=int,
                        help="a running emulator on 127.0.0.1 (default: the bench's own)")


class Sample(msgspec.Struct):
    t_s: float
    lag: int
    sinks: int
    nodes: int
    produced: int
    decision: str
    row_p99_ms: float | None = None


class Result(msgspec.Struct):
    initial_sinks: int
    max_sinks: int
    final_sinks: int
    max_nodes: int
    final_nodes: int
    max_lag: int
    row_p99_after_burst_ms: float | None
    lost: int
    duplicated: int
    timeline: list[dict[str, Any]]
    target_drain_s: float
    batch_max_wait_s: float
    burst_s: tuple[float, float]   # when the burst began and ended (t_s)
    drained_at_s: float | None     # the first sample after the burst back at the steady lag


@dataclass
class Load:
    """The producer thread's phases and counts (read by the sampler)."""

    run_id: str
    produced: int = 0
    acked: int = 0
    failed: int = 0
    burst_started: float | None = None  # monotonic
    burst_ended: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)


def run(settings: Settings, args: argparse.Namespace) -> int:
    with bench_stack(settings, bootstrap=args.bootstrap, snowflake_port=args.snowflake_port,
                     name="autoscale") as (kafka, snowflake):
        result = measure(settings, args, kafka, snowflake)
    print(format_table(result))
    if args.plot:
        print(write_plot(result, Path(args.plot)))
    if args.json_path:
        Path(args.json_path).write_bytes(msgspec.json.format(msgspec.json.encode(result)))
        print(f"wrote {args.json_path}")
    return 0 if result.lost == 0 and result.duplicated == 0 else 1


def pipeline_config(settings: Settings, args: argparse.Namespace, kafka: KafkaConnection,
                    snowflake: SnowflakeConfig, tag: str) -> PipelineConfig:
    """The settings' pipeline on the bench's broker, tables and namespace, with the pool
    scaling between the bounds given."""
    base = settings.pipeline_config()
    topic = f"autoscale-{tag}"
    return msgspec.structs.replace(
        base, kafka=kafka,
        topics=msgspec.structs.replace(base.topics, events=topic, dead_letter=f"{topic}.dlq",
                                       partitions=args.partitions, replication_factor=1,
                                       min_insync_replicas=1, durability="local"),
        snowflake=msgspec.structs.replace(snowflake, events_table=f"AUTOSCALE_{tag}",
                                          offsets_table=f"AUTOSCALE_OFFSETS_{tag}"),
        consumer=msgspec.structs.replace(
            base.consumer, group_id=f"bench-autoscale-{tag.lower()}",
            num_cpus=_CONSUMER_CPUS, memory_bytes=0),
        # Ray's fake node provider cannot give a node type memory: CPUs only here.
        sink=msgspec.structs.replace(base.sink, pool_size=args.initial_sinks,
                                     num_cpus=args.sink_cpus, memory_bytes=0),
        namespace=f"eventray-bench-autoscale-{tag.lower()}",
        metrics_interval_s=min(base.metrics_interval_s, args.sample_s),
        autoscale=msgspec.structs.replace(
            base.autoscale, enabled=True, min_sinks=args.initial_sinks,
            max_sinks=args.max_sinks, target_drain_s=args.target_drain_s,
            cooldown_s=args.cooldown_s),
    )


def measure(settings: Settings, args: argparse.Namespace, kafka: KafkaConnection,
            snowflake: SnowflakeConfig) -> Result:
    import ray

    from cluster.bench.autoscaling_ray import IsolatedAutoscalingCluster

    tag = uuid.uuid4().hex[:6].upper()
    head_cpus = math.ceil(args.sink_cpus * args.initial_sinks + args.partitions * _CONSUMER_CPUS)
    cluster = IsolatedAutoscalingCluster(
        head_resources={"CPU": head_cpus, "object_store_memory": 200_000_000},
        worker_node_types={"ray.worker.sink": {
            "resources": {"CPU": args.sink_cpus, "object_store_memory": 100_000_000},
            "node_config": {}, "min_workers": 0, "max_workers": args.max_nodes}},
        state_dir=Path(tempfile.mkdtemp(prefix="eventray-bench-autoscale-")))
    config = pipeline_config(settings, args, kafka, snowflake, tag)
    print(f"autoscaling Ray: head {head_cpus:g} CPUs (the consumers and {args.initial_sinks} "
          f"sink(s)), up to {args.max_nodes} worker nodes of {args.sink_cpus:g} CPU; pool "
          f"{args.initial_sinks}..{args.max_sinks} sinks, target_drain_s="
          f"{args.target_drain_s:g}, cooldown_s={args.cooldown_s:g}")
    cluster.start()
    try:
        cluster.wait_ready()
        _connect(settings, cluster.address, config.namespace)
        try:
            return _run_load(config, args)
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
        shutil.rmtree(cluster.state_dir, ignore_errors=True)


def _connect(settings: Settings, address: str, namespace: str) -> None:
    """Like a job: the actors log at INFO (the supervisor's decisions, with their inputs)."""
    local = settings.with_overrides({"ray.address": address, "ray.namespace": namespace,
                                     "ray.node_ip_address": "127.0.0.1"})
    deadline = time.monotonic() + 120
    while True:
        try:
            local.connect_ray(log_to_driver=False,
                              runtime_env={"env_vars": {"PYTHONPATH": str(_REPO)}})
        except ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
        else:
            return


def _run_load(config: PipelineConfig, args: argparse.Namespace) -> Result:
    from cluster.supervisor import start_pipeline, stop_pipeline

    start_pipeline(config)
    load = Load(run_id=f"as{uuid.uuid4().hex[:8]}")
    t0 = time.monotonic()
    producer = threading.Thread(target=_produce, args=(config, args, load), daemon=True)
    producer.start()
    samples: list[Sample] = []
    try:
        _sample_until_settled(config, args, load, t0, samples)
    finally:
        load.stop.set()
        producer.join(timeout=60)
    try:
        if load.errors:
            raise BenchError(f"the producer failed: {load.errors[0]!r}")
        _wait_drained(config)
        samples.append(_sample(config, load, t0))
        rows = _rows(config, load.run_id)
    finally:
        stop_pipeline(config)
    return _result(config, args, load, t0=t0, samples=samples, rows=rows)


def _produce(config: PipelineConfig, args: argparse.Namespace, load: Load) -> None:
    """Steady, burst, steady (until stopped); every event acknowledged or counted failed."""
    from datetime import UTC, datetime

    from confluent_kafka import Producer

    from actors.contract import (
        HEADER_ACCEPTED_AT_MS,
        HEADER_CONTENT_TYPE,
        RECORD_CONTENT_TYPE,
        EventCodec,
        PaymentBody,
        PaymentCaptured,
    )

    codec = EventCodec()
    producer = Producer({**config.kafka.client_config(), "enable.idempotence": True,
                         "acks": "all", "linger.ms": 20})
    content_type = RECORD_CONTENT_TYPE.encode()

    def delivered(err: Any, _msg: Any) -> None:
        if err is None:
            load.acked += 1
        else:
            load.failed += 1

    def send(count: int) -> None:
        accepted = str(time.time_ns() // 1_000_000).encode()
        for _ in range(count):
            n = load.produced
            event = PaymentCaptured(
                event_id=f"{load.run_id}-{n:09d}", account_id=f"acct-{n % 5000:05d}",
                occurred_at=datetime.now(UTC),
                body=PaymentBody(amount_minor=100 + n % 1000, currency="EUR",
                                 merchant_id="m-0001"))
            while True:
                try:
                    producer.produce(config.topics.events, key=event.account_id.encode(),
                                     value=codec.encode(event), on_delivery=delivered,
                                     headers=[(HEADER_CONTENT_TYPE, content_type),
                                              (HEADER_ACCEPTED_AT_MS, accepted)])
                    break
                except BufferError:
                    producer.poll(0.05)
            load.produced += 1
        producer.poll(0)

    try:
        started = time.monotonic()
        while not load.stop.is_set():
            now = time.monotonic()
            if load.burst_started is None and now - started >= args.steady_s:
                load.burst_started = now
                remaining = args.burst_events
                while remaining > 0 and not load.stop.is_set():
                    chunk = min(remaining, 5000)
                    send(chunk)
                    remaining -= chunk
                load.burst_ended = time.monotonic()
                continue
            send(max(1, round(args.steady_rate * _TICK_S)))
            load.stop.wait(max(0.0, _TICK_S - (time.monotonic() - now)))
    except Exception as exc:  # noqa: BLE001 - handed to the sampler, which stops the run
        load.errors.append(exc)
    finally:
        if producer.flush(60) != 0:
            load.errors.append(BenchError("the producer did not deliver everything in 60s"))


def _alive_nodes() -> int:
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return sum(1 for node in nodes if node["Alive"])


def _sample(config: PipelineConfig, load: Load, t0: float) -> Sample:
    from cluster.supervisor import get_status

    status = get_status(config)
    if status is None:
        raise BenchError("the pipeline supervisor is gone")
    decision = status.autoscale.decision if status.autoscale else None
    shown = "-" if decision is None else f"{decision.action}:{decision.rule}"
    return Sample(t_s=round(time.monotonic() - t0, 1), lag=status.totals.lag,
                  sinks=status.pool_size, nodes=_alive_nodes(), produced=load.produced,
                  decision=shown)


def _sample_until_settled(config: PipelineConfig, args: argparse.Namespace, load: Load,
                          t0: float, samples: list[Sample]) -> None:
    """Sample every ``--sample-s`` until, after the burst, the pool and the nodes are back at
    their initial counts with the backlog gone (or ``--after-s`` passed)."""
    grown = False
    print(f"{'T_S':>6}  {'LAG':>8}  {'SINKS':>5}  {'NODES':>5}  {'PRODUCED':>9}  DECISION")
    while True:
        time.sleep(args.sample_s)
        sample = _sample(config, load, t0)
        samples.append(sample)
        print(f"{sample.t_s:>6.1f}  {sample.lag:>8}  {sample.sinks:>5}  {sample.nodes:>5}  "
              f"{sample.produced:>9}  {sample.decision}", flush=True)
        if load.errors:
            return
        grown = grown or sample.sinks > args.initial_sinks or sample.nodes > 1
        if load.burst_ended is None:
            continue
        after = time.monotonic() - load.burst_ended
        settled = (sample.sinks == args.initial_sinks and sample.nodes == 1
                   and sample.lag <= args.steady_rate * 2)
        if (grown and settled) or after > args.after_s:
            return


def _wait_drained(config: PipelineConfig, timeout_s: float = 300.0) -> None:
    from actors.kafka_admin import end_offsets
    from cluster.supervisor import get_status

    ends = end_offsets(config.kafka, config.topics.events)
    deadline = time.monotonic() + timeout_s
    while True:
        status = get_status(config)
        committed = {} if status is None else {p.partition: p.committed_offset or 0
                                               for p in status.partitions}
        if all(committed.get(p, 0) >= end for p, end in ends.items()):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"not drained in {timeout_s:g}s: committed {committed} of {ends}")
        time.sleep(0.5)


def _rows(config: PipelineConfig, run_id: str) -> list[tuple[str, float, float]]:
    """(event id, accepted, written) of the run's rows, epoch seconds."""
    import snowflake.connector

    from cluster.bench.landing import _epoch

    sf = config.snowflake
    conn = snowflake.connector.connect(**sf.connect_kwargs())
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT EVENT_ID, ACCEPTED_AT, WRITTEN_AT FROM {sf.events_table} "
                        "WHERE EVENT_ID LIKE %s", (f"{run_id}-%",))
            return [(str(e), _epoch(a), _epoch(w)) for e, a, w in cur.fetchall()]
    finally:
        conn.close()


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.99) - 1)]


def _result(config: PipelineConfig, args: argparse.Namespace, load: Load, *, t0: float,
            samples: list[Sample], rows: list[tuple[str, float, float]]) -> Result:
    # Monotonic sample times -> epoch: t0 happened this long before now.
    epoch0 = time.time() - (time.monotonic() - t0)
    latency = [((accepted - epoch0), (written - accepted) * 1000.0)
               for _, accepted, written in rows]
    previous = 0.0
    for sample in samples:  # each sample: the events accepted since the one before
        in_window = [ms for at, ms in latency if previous <= at < sample.t_s]
        sample.row_p99_ms = None if not in_window else round(p99(in_window) or 0.0, 1)
        previous = sample.t_s
    burst = ((load.burst_started or t0) - t0, (load.burst_ended or t0) - t0)
    steady_lag = max([s.lag for s in samples if s.t_s <= burst[0]], default=0)
    drained = next((s.t_s for s in samples
                    if s.t_s > burst[1] and s.lag <= max(steady_lag, args.steady_rate)), None)
    after = [ms for at, ms in latency if drained is not None and at >= drained]
    ids = [event for event, _, _ in rows]
    distinct = len(set(ids))
    return Result(
        initial_sinks=args.initial_sinks, max_sinks=max(s.sinks for s in samples),
        final_sinks=samples[-1].sinks, max_nodes=max(s.nodes for s in samples),
        final_nodes=samples[-1].nodes, max_lag=max(s.lag for s in samples),
        row_p99_after_burst_ms=None if not after else round(p99(after) or 0.0, 1),
        lost=load.acked - distinct, duplicated=len(ids) - distinct,
        timeline=[{"t_s": s.t_s, "lag": s.lag, "sinks": s.sinks, "nodes": s.nodes,
                   "row_p99_ms": s.row_p99_ms} for s in samples],
        target_drain_s=args.target_drain_s,
        batch_max_wait_s=config.consumer.batch_max_wait_s,
        burst_s=(round(burst[0], 1), round(burst[1], 1)), drained_at_s=drained,
    )


def format_table(result: Result) -> str:
    lines = [f"{'T_S':>6}  {'LAG':>8}  {'SINKS':>5}  {'NODES':>5}  {'ROW P99 MS':>10}"]
    for entry in result.timeline:
        shown = "-" if entry["row_p99_ms"] is None else f"{entry['row_p99_ms']:.0f}"
        lines.append(f"{entry['t_s']:>6.1f}  {entry['lag']:>8}  {entry['sinks']:>5}  "
                     f"{entry['nodes']:>5}  {shown:>10}")
    bound_ms = (result.target_drain_s + result.batch_max_wait_s) * 1000
    after = result.row_p99_after_burst_ms
    lines += [
        f"burst from {result.burst_s[0]:.1f}s to {result.burst_s[1]:.1f}s; backlog back at "
        f"the steady level at {result.drained_at_s if result.drained_at_s is not None else '-'}s",
        f"sinks {result.initial_sinks} -> max {result.max_sinks} -> {result.final_sinks}; "
        f"nodes max {result.max_nodes} -> {result.final_nodes}; max lag {result.max_lag}",
        f"accept-to-row p99 after the backlog drained: "
        f"{'-' if after is None else f'{after:.0f} ms'} (target_drain_s + batch_max_wait_s = "
        f"{bound_ms:.0f} ms)",
        f"lost {result.lost}, duplicated {result.duplicated}",
    ]
    return "\n".join(lines)


def write_plot(result: Result, path: Path) -> str:
    """Lag, pool size and nodes, and accept-to-row p99 over time, one panel each."""
    try:
        import matplotlib
    except ImportError:
        return "no plot: matplotlib is not installed (pip install 'eventray[bench]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [e["t_s"] for e in result.timeline]
    fig, (ax_lag, ax_size, ax_p99) = plt.subplots(3, 1, sharex=True, figsize=(9, 8))
    ax_lag.plot(t, [e["lag"] for e in result.timeline], color="tab:red")
    ax_lag.set_ylabel("lag (events)")
    ax_size.step(t, [e["sinks"] for e in result.timeline], where="post", label="sinks")
    ax_size.step(t, [e["nodes"] for e in result.timeline], where="post", label="Ray nodes")
    ax_size.set_ylabel("count")
    ax_size.legend(loc="upper right")
    ax_p99.plot(t, [e["row_p99_ms"] for e in result.timeline], color="tab:purple",
                marker=".")
    ax_p99.axhline((result.target_drain_s + result.batch_max_wait_s) * 1000, color="grey",
                   linestyle="--", label="target_drain_s + batch_max_wait_s")
    ax_p99.set_ylabel("accept-to-row p99 (ms)")
    ax_p99.set_xlabel("seconds")
    ax_p99.legend(loc="upper right")
    for ax in (ax_lag, ax_size, ax_p99):
        ax.axvspan(result.burst_s[0], max(result.burst_s[1], result.burst_s[0] + 0.5),
                   color="orange", alpha=0.2)
    fig.suptitle("eventray bench autoscale: steady, burst (shaded), steady")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"wrote {path}"
