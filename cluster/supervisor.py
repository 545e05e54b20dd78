"""The supervisor: a detached actor that places the pipeline's actors and keeps them there.

``start_pipeline(config)`` gets or creates the named, detached supervisor
(``eventray-supervisor`` in ``config.namespace``), which

* ensures the events and dead-letter topics (the DLQ grown to the source's partition count);
* creates the sink pool (``sink:<i>``, detached, restartable) and its tables once;
* creates one ``PartitionConsumer`` per partition (``consumer:<topic>:<p>``, detached,
  restartable, spread over the nodes);
* reconciles every ``reconcile_interval_s``: an actor that is dead for good (restarts exhausted,
  or killed for good) has lost its name and is re-created; partitions added to the topic get
  consumers; the DLQ grows with the source.

Ray itself restarts a crashed actor (also on another node when its node was removed); the
supervisor covers what Ray gives up on. Everything the supervisor knows is found again by name,
so it may itself be restarted at any time. It is a threaded actor, so ``status()`` answers while
a reconciliation is running.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Final

import msgspec

from actors.config import PipelineConfig
from actors.consumer import ConsumerStatus, consumer_name, sink_name
from actors.exceptions import EventrayError
from cluster.pipeline_actors import pipeline_actors

log = logging.getLogger(__name__)

SUPERVISOR_NAME: Final = "eventray-supervisor"
_STATUS_TIMEOUT_S: Final = 5.0


class PartitionStatus(msgspec.Struct, frozen=True):
    """One partition: who owns it, where it runs, how far the warehouse is."""

    topic: str
    partition: int
    owner: str                 # the consumer actor's name
    state: str                 # running | starting | fenced | unreachable
    node_id: str | None
    sink: str | None
    committed_offset: int | None  # the warehouse's (authoritative)
    end_offset: int | None        # Kafka's high watermark
    lag: int | None
    rows_per_s: float
    rows_written: int
    dead_lettered: int
    duplicates: int
    last_error: str | None


class SinkStatus(msgspec.Struct, frozen=True):
    name: str
    node_id: str | None
    state: str  # running | unreachable


class PipelineTotals(msgspec.Struct, frozen=True):
    partitions: int
    running: int
    lag: int
    rows_per_s: float
    rows_written: int
    dead_lettered: int
    duplicates: int


class PipelineStatus(msgspec.Struct, frozen=True):
    topic: str
    namespace: str
    partitions: list[PartitionStatus]
    sinks: list[SinkStatus]
    totals: PipelineTotals
    reconciled_at: float | None  # epoch seconds of the last completed reconciliation
    last_error: str | None       # of the supervisor's own reconciliation


def partition_status(topic: str, partition: int, consumer: ConsumerStatus | None,
                     end_offset: int | None, error: str | None = None) -> PartitionStatus:
    """Combine a consumer's answer (None when it did not answer) with Kafka's end offset."""
    committed = consumer.committed_offset if consumer is not None else None
    lag = None if end_offset is None else max(end_offset - (committed or 0), 0)
    state = ("unreachable" if consumer is None else "fenced" if consumer.fenced
             else "running" if consumer.running else "starting")
    return PartitionStatus(
        topic=topic, partition=partition, owner=consumer_name(topic, partition), state=state,
        node_id=consumer.node_id if consumer else None, sink=consumer.sink if consumer else None,
        committed_offset=committed, end_offset=end_offset, lag=lag,
        rows_per_s=consumer.rows_per_s if consumer else 0.0,
        rows_written=consumer.rows_written if consumer else 0,
        dead_lettered=consumer.dead_lettered if consumer else 0,
        duplicates=consumer.duplicates if consumer else 0,
        last_error=(consumer.last_error if consumer else error),
    )


def totals_of(partitions: list[PartitionStatus]) -> PipelineTotals:
    return PipelineTotals(
        partitions=len(partitions),
        running=sum(1 for p in partitions if p.state == "running"),
        lag=sum(p.lag or 0 for p in partitions),
        rows_per_s=sum(p.rows_per_s for p in partitions),
        rows_written=sum(p.rows_written for p in partitions),
        dead_lettered=sum(p.dead_lettered for p in partitions),
        duplicates=sum(p.duplicates for p in partitions),
    )


class Supervisor:
    """The supervisor actor body (run it threaded: ``max_concurrency`` > 1)."""

    def __init__(self, config: PipelineConfig) -> None:
        self._config = config
        self._stop = threading.Event()
        self._reconcile_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._partitions = 0
        self._tables_ready = False
        self._reconciled_at: float | None = None
        self._last_error: str | None = None
        self._consumer_cls: Any = None
        # Started here so that a restarted supervisor resumes healing by itself.
        self._thread = threading.Thread(target=self._loop, name="eventray-supervisor",
                                        daemon=True)
        self._thread.start()
        # Its own thread: a status round waits for slow consumers and must not delay healing.
        threading.Thread(target=self._metrics_loop, name="eventray-supervisor-metrics",
                         daemon=True).start()

    def __repr__(self) -> str:
        cfg = self._config
        return (f"supervisor(namespace={cfg.namespace} topic={cfg.topics.events} "
                f"sinks={cfg.sink.pool_size})")

    # -- actor methods ------------------------------------------------------------------

    def start(self) -> int:
        """Reconcile now (topics, sinks, consumers); return the partition count."""
        self._reconcile()
        return self._partitions

    def ready(self) -> bool:
        """True when every sink answers a ping and every consumer's session runs (it has read
        its committed offset and dedup window and is consuming), not merely exists."""
        import ray

        if self._partitions == 0:
            return False
        sinks = [sink_name(i) for i in range(self._config.sink.pool_size)]
        consumers = [consumer_name(self._config.topics.events, p)
                     for p in range(self._partitions)]
        refs: list[Any] = []
        try:
            refs += [ray.get_actor(name, namespace=self._config.namespace).ping.remote()
                     for name in sinks]
            refs += [ray.get_actor(name, namespace=self._config.namespace).status.remote()
                     for name in consumers]
        except ValueError:  # not created yet
            return False
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=_STATUS_TIMEOUT_S)
        if len(done) < len(refs):
            return False
        try:
            answers = ray.get(refs)
        except ray.exceptions.RayError:
            return False
        return all(status.running for status in answers[len(sinks):])

    def status(self) -> PipelineStatus:
        from actors.kafka_admin import end_offsets

        cfg = self._config
        topic = cfg.topics.events
        try:
            ends: dict[int, int] = end_offsets(cfg.kafka, topic)
        except EventrayError as exc:
            log.warning("end offsets unavailable topic=%s: %s", topic, exc)
            ends = {}
        count = max(self._partitions, len(ends))
        answers = self._ask_all([consumer_name(topic, p) for p in range(count)], "status")
        partitions = [
            partition_status(topic, p, _as(answers[i][0], ConsumerStatus), ends.get(p),
                             answers[i][1])
            for i, p in enumerate(range(count))
        ]
        sink_names = [sink_name(i) for i in range(cfg.sink.pool_size)]
        sinks = [
            SinkStatus(name=name, node_id=_as(answer, str),
                       state="running" if answer is not None else "unreachable")
            for name, (answer, _) in zip(sink_names, self._ask_all(sink_names, "ping"),
                                         strict=True)
        ]
        with self._state_lock:
            reconciled_at, last_error = self._reconciled_at, self._last_error
        return PipelineStatus(topic=topic, namespace=cfg.namespace, partitions=partitions,
                              sinks=sinks, totals=totals_of(partitions),
                              reconciled_at=reconciled_at, last_error=last_error)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop reconciling, stop the consumers (finishing their batches), kill every actor."""
        import ray

        self._stop.set()
        self._thread.join(timeout_s)
        with self._reconcile_lock:
            cfg = self._config
            # By name, not range(self._partitions): a restarted supervisor knows no partitions
            # before its first reconciliation, yet its predecessor's actors run on.
            names = pipeline_actors(cfg.namespace, cfg.topics.events)
            consumers = [handle for name in names.consumers
                         if (handle := _find(name, cfg.namespace)) is not None]
            refs: list[Any] = [c.stop.remote(timeout_s) for c in consumers]
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
            for handle in consumers:
                ray.kill(handle, no_restart=True)
            for name in names.sinks:
                handle = _find(name, cfg.namespace)
                if handle is not None:
                    ray.kill(handle, no_restart=True)
        log.info("pipeline stopped namespace=%s", self._config.namespace)

    # -- reconciliation -----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self._config.reconcile_interval_s):
            try:
                self._reconcile()
            except Exception as exc:  # recorded in status(), retried next interval
                with self._state_lock:
                    self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("reconciliation failed; retrying in %.1fs",
                              self._config.reconcile_interval_s)

    def _metrics_loop(self) -> None:
        """Export lag, drain time and pool size (``cluster.supervisor_metrics``)."""
        from cluster.supervisor_metrics import SupervisorMetrics

        metrics = SupervisorMetrics()
        interval = self._config.metrics_interval_s
        while not self._stop.wait(interval):
            try:
                metrics.publish(self.status().partitions, self._config.sink.pool_size,
                                time.monotonic())
            except Exception:  # the gauges keep their last values; retried next interval
                log.exception("publishing metrics failed; retrying in %.1fs", interval)

    def _reconcile(self) -> None:
        from actors.kafka_admin import ensure_topics, partition_counts

        cfg = self._config
        with self._reconcile_lock:
            if self._stop.is_set():
                return
            counts = partition_counts(cfg.kafka, [cfg.topics.events, cfg.topics.dead_letter])
            if (cfg.topics.events not in counts
                    or counts.get(cfg.topics.dead_letter, 0) < counts[cfg.topics.events]):
                ensure_topics(cfg.kafka, cfg.topics)
                counts = partition_counts(cfg.kafka, [cfg.topics.events])
            partitions = counts[cfg.topics.events]
            if partitions > self._partitions and self._partitions:
                log.info("partitions added topic=%s %d->%d", cfg.topics.events,
                         self._partitions, partitions)
            sinks = [self._ensure_sink(i) for i in range(cfg.sink.pool_size)]
            if not self._tables_ready:
                import ray

                ray.get(sinks[0].ensure_tables.remote())
                self._tables_ready = True
            for p in range(partitions):
                self._ensure_consumer(p)
            with self._state_lock:
                self._partitions = partitions
                self._reconciled_at = time.time()
                self._last_error = None

    def _ensure_sink(self, index: int) -> Any:
        from actors.sink import SnowflakeSinkActor

        cfg = self._config
        name = sink_name(index)
        handle = _find(name, cfg.namespace)
        if handle is None:
            log.info("creating sink name=%s", name)
            handle = SnowflakeSinkActor.options(
                name=name, namespace=cfg.namespace, lifetime="detached", get_if_exists=True,
                max_restarts=cfg.sink.max_restarts, num_cpus=cfg.sink.num_cpus,
            ).remote(cfg.snowflake, cfg.sink, index)
        return handle

    def _ensure_consumer(self, partition: int) -> Any:
        from actors.consumer import partition_consumer_actor

        cfg = self._config
        name = consumer_name(cfg.topics.events, partition)
        handle = _find(name, cfg.namespace)
        if handle is None:
            if self._consumer_cls is None:
                self._consumer_cls = partition_consumer_actor()
            log.info("creating consumer name=%s", name)
            handle = self._consumer_cls.options(
                name=name, namespace=cfg.namespace, lifetime="detached", get_if_exists=True,
                max_restarts=cfg.consumer.max_restarts, num_cpus=cfg.consumer.num_cpus,
                max_concurrency=4, scheduling_strategy="SPREAD",
            ).remote(cfg, partition)
        return handle

    def _ask_all(self, names: list[str], method: str) -> list[tuple[Any, str | None]]:
        """Call ``method`` on each named actor; (answer or None, error or None) per name."""
        import ray

        refs: list[Any] = []
        for name in names:
            handle = _find(name, self._config.namespace)
            refs.append(None if handle is None else getattr(handle, method).remote())
        live = [ref for ref in refs if ref is not None]
        if live:
            ray.wait(live, num_returns=len(live), timeout=_STATUS_TIMEOUT_S)
        answers: list[tuple[Any, str | None]] = []
        for ref in refs:
            if ref is None:
                answers.append((None, "no such actor"))
                continue
            try:
                answers.append((ray.get(ref, timeout=0), None))
            except ray.exceptions.GetTimeoutError:
                answers.append((None, f"no answer within {_STATUS_TIMEOUT_S:g}s"))
            except ray.exceptions.RayError as exc:
                answers.append((None, f"{type(exc).__name__}: {exc}"[:300]))
        return answers


def _as(value: Any, kind: type[Any]) -> Any:
    return value if isinstance(value, kind) else None


def _find(name: str, namespace: str) -> Any:
    """The handle of a live (or restarting) named actor, None when there is none."""
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def supervisor_actor() -> Any:
    import ray

    return ray.remote(Supervisor)


def start_pipeline(config: PipelineConfig, *, ready_timeout_s: float = 180.0) -> Any:
    """Get or create the supervisor, reconcile, and wait until every actor answers.

    An already running supervisor keeps the config it was started with. First logs the
    settings and checks that Kafka and Snowflake answer (``ServiceUnreachableError`` names the
    setting when one does not).
    """
    import ray

    from cluster.preflight import check_pipeline

    check_pipeline(config)
    supervisor = supervisor_actor().options(
        name=SUPERVISOR_NAME, namespace=config.namespace, lifetime="detached",
        get_if_exists=True, max_restarts=-1, max_concurrency=8, num_cpus=0,
    ).remote(config)
    partitions = ray.get(supervisor.start.remote(), timeout=ready_timeout_s)
    deadline = time.monotonic() + ready_timeout_s
    while not ray.get(supervisor.ready.remote(), timeout=ready_timeout_s):
        if time.monotonic() > deadline:
            raise EventrayError(f"the pipeline did not become ready in {ready_timeout_s:g}s")
        time.sleep(0.5)
    log.info("pipeline ready namespace=%s partitions=%d", config.namespace, partitions)
    return supervisor


def stop_pipeline(config: PipelineConfig, *, timeout_s: float = 60.0) -> bool:
    """Stop consumers, then kill consumers, sinks and the supervisor. False if none ran."""
    import ray

    supervisor = _find(SUPERVISOR_NAME, config.namespace)
    if supervisor is None:
        return False
    ray.get(supervisor.shutdown.remote(timeout_s / 2), timeout=timeout_s)
    ray.kill(supervisor, no_restart=True)
    return True


def get_status(config: PipelineConfig, *, timeout_s: float = 30.0) -> PipelineStatus | None:
    """The supervisor's status report, None when no supervisor runs in the namespace."""
    import ray

    supervisor = _find(SUPERVISOR_NAME, config.namespace)
    if supervisor is None:
        return None
    status: PipelineStatus = ray.get(supervisor.status.remote(), timeout=timeout_s)
    return status
