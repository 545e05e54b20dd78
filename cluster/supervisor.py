"""The supervisor: a detached actor that places the pipeline's actors and keeps them there.

``start_pipeline(config)`` gets or creates the named, detached supervisor
(``eventray-supervisor`` in ``config.namespace``), which

* ensures the events and dead-letter topics (the DLQ grown to the source's partition count);
* creates the sink pool (``sink:<i>``, detached, restartable) and its tables once, and keeps
  which partition writes through which sink (``cluster.sink_pool``): a pool size changed by a
  new start or by the scaling policy is applied online, partitions moving between live sinks;
* creates one ``PartitionConsumer`` per partition (``consumer:<topic>:<p>``, detached,
  restartable, spread over the nodes) in the same round, without waiting for the sinks or the
  tables: a consumer created before the tables are known to exist waits for ``sink:0``'s
  ``ensure_tables`` before its first take. A fresh pipeline's actors are created pair by pair
  (a sink, then the first consumer writing through it), so the first pair runs first;
* every ``metrics_interval_s`` exports lag, drain time and pool size, and, with
  ``pipeline.autoscale.enabled``, asks the scaling policy (``cluster.autoscale_policy``) for
  the pool's size, logging and exporting each decision;
* reconciles every ``reconcile_interval_s``: an actor that is dead for good (restarts exhausted,
  or killed for good) has lost its name and is re-created; a consumer that stopped because
  another life took its partition (status ``fenced``) is killed and re-created, its new life
  taking the partition back; partitions added to the topic get consumers (their owners tables
  come with their first take); the DLQ grows with the source.

Ray itself restarts a crashed actor (also on another node when its node was removed); the
supervisor covers what Ray gives up on. Everything the supervisor knows is found again by name,
so it may itself be restarted at any time. It is a threaded actor, so ``status()`` answers while
a reconciliation is running.

Nothing waits without a bound under the reconcile lock: every remote call made while holding it
has a timeout (the sink's ``ensure_tables`` call stays pending across reconciliations and is
waited for ``_CALL_TIMEOUT_S`` per round, the error shown in ``status()``), and ``shutdown``
waits for the lock only so long before it stops everything anyway.

A changed config: ``start_pipeline(config)`` against a supervisor that runs with other settings
applies them or refuses them (``cluster.config_change``), never keeps the old ones silently.
What it can apply, it applies by replacing actors in this order: the supervisor is stopped (no
more reconciling), every consumer finishes its batch in flight and is killed, every sink is
killed, and only once Ray has released all their names does a new supervisor, created with the
new config (so a Ray restart of it keeps the new config), create the new sinks and consumers; a
write the warehouse was still committing for a killed sink is the case the writer fencing in the
warehouse covers. The pool size and the scaling policy are the supervisor's alone: a new one
applies them to the running consumers and sinks (``cluster.sink_pool``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec

from actors.config import PipelineConfig
from actors.consumer import ConsumerStatus, consumer_name, sink_name
from actors.exceptions import EventrayError
from cluster.autoscale_policy import Decision
from cluster.config_change import ConfigChangeRefusedError, config_change, refusal_message
from cluster.pipeline_actors import pipeline_actors
from cluster.sink_pool import SinkPool, sink_number

log = logging.getLogger(__name__)

SUPERVISOR_NAME: Final = "eventray-supervisor"
_STATUS_TIMEOUT_S: Final = 5.0
# The longest any remote call made under the reconcile lock is waited for.
_CALL_TIMEOUT_S: Final = 10.0
# How long start() waits for a reconciliation in progress, and shutdown() for the lock.
_LOCK_WAIT_S: Final = 60.0
# How long a stop waits for Ray to release the names of the actors it killed.
_RELEASE_WAIT_S: Final = 60.0


class TablesPendingError(EventrayError):
    """The sink has not created the tables within a reconciliation round's wait."""


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
    state: str  # running | unreachable | retiring (past the pool size, its partitions moving)
    partitions: list[int] = []  # those whose consumer reports writing through it
    busy_s: float | None = None  # seconds spent writing since the sink (re)started


class AutoscaleStatus(msgspec.Struct, frozen=True):
    enabled: bool
    decision: Decision | None = None  # the policy's last one
    decided_at: float | None = None   # epoch seconds


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
    pool_size: int = 0           # the sinks the supervisor keeps (retiring ones not counted)
    autoscale: AutoscaleStatus | None = None


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


def sink_status(index: int, answer: Any, partitions: list[PartitionStatus],
                pool_size: int) -> SinkStatus:
    """A sink's row: its answer to ``load`` (None when it did not answer) and the partitions
    whose consumers report writing through it."""
    from actors.sink import SinkLoad

    name = sink_name(index)
    load = _as(answer, SinkLoad)
    state = ("retiring" if index >= pool_size else "running" if load is not None
             else "unreachable")
    return SinkStatus(name=name, node_id=load.node_id if load else None, state=state,
                      partitions=[p.partition for p in partitions if p.sink == name],
                      busy_s=load.busy_s if load else None)


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

    def __init__(self, config: PipelineConfig, *, wait_for_start: bool = False) -> None:
        self._config = config
        self._stop = threading.Event()
        # wait_for_start: created by start_pipeline while it still probes Kafka and Snowflake,
        # so its loop reconciles nothing before start(); a life Ray restarted heals at once.
        self._begun = threading.Event()
        if not wait_for_start or _restarted():
            self._begun.set()
        self._reconcile_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._partitions = 0
        self._tables_ready = False
        self._tables_call: Any = None  # the pending ensure_tables call, kept across rounds
        self._reconciled_at: float | None = None
        self._last_error: str | None = None
        self._consumer_cls: Any = None
        self._pool = SinkPool(config, self._ensure_sink,
                              lambda name: find_actor(name, config.namespace))
        self._autoscale = AutoscaleStatus(enabled=config.autoscale.enabled)
        # The sink's module imports the Snowflake connector (~0.3 s of CPU): imported while the
        # first round talks to Kafka, not after it, when the first sink is created.
        threading.Thread(target=_import_sink_module, name="eventray-import-sink",
                         daemon=True).start()
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

    def start(self, timeout_s: float = 120.0) -> int:
        """Reconcile now (topics, sinks, consumers); return the partition count. Rounds repeat
        while the tables are pending, up to ``timeout_s``; the lock is free between rounds."""
        deadline = time.monotonic() + timeout_s
        self._pool.requested_by_start()
        self._begun.set()
        while True:
            try:
                reconciled = self._reconcile(lock_wait_s=_LOCK_WAIT_S)
            except TablesPendingError:
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                continue
            if not reconciled:
                raise EventrayError(
                    f"a reconciliation has been running for over {_LOCK_WAIT_S:g}s")
            return self._partitions

    def config(self) -> PipelineConfig:
        """The config this supervisor and the actors it created run with."""
        return self._config

    def ready(self) -> bool:
        """True when every sink answers a ping and every consumer's session runs (it has read
        its committed offset and dedup window and is consuming), not merely exists."""
        import ray

        if self._partitions == 0:
            return False
        # The sinks partitions write through (one still waiting for a node has none).
        sinks = [sink_name(i) for i in self._pool.assigned_sinks()]
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
        size = self._pool.current_size()
        live = {n for n in map(sink_number, pipeline_actors(cfg.namespace).sinks)
                if n is not None}
        indices = sorted(set(range(size)) | live)
        loads = self._ask_all([sink_name(i) for i in indices], "load")
        sinks = [sink_status(i, answer, partitions, size)
                 for i, (answer, _) in zip(indices, loads, strict=True)]
        with self._state_lock:
            reconciled_at, last_error = self._reconciled_at, self._last_error
            autoscale = self._autoscale
        return PipelineStatus(topic=topic, namespace=cfg.namespace, partitions=partitions,
                              sinks=sinks, totals=totals_of(partitions),
                              reconciled_at=reconciled_at, last_error=last_error,
                              pool_size=size, autoscale=autoscale)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop reconciling, stop the consumers (finishing their batches), kill every actor.

        A reconciliation that does not end within ``timeout_s / 4`` (each of its calls has a
        timeout, so it ends) does not hold the stop up: the actors are stopped without the lock,
        and ``stop_pipeline`` kills this actor next and sweeps whatever it still created."""
        import ray

        self._stop.set()
        self._thread.join(timeout_s / 4)
        locked = self._reconcile_lock.acquire(timeout=timeout_s / 4)
        if not locked:
            log.warning("a reconciliation still runs after %.0fs; stopping without it",
                        timeout_s / 4)
        try:
            cfg = self._config
            # By name, not range(self._partitions): a restarted supervisor knows no partitions
            # before its first reconciliation, yet its predecessor's actors run on.
            names = pipeline_actors(cfg.namespace, cfg.topics.events)
            consumers = [handle for name in names.consumers
                         if (handle := find_actor(name, cfg.namespace)) is not None]
            refs: list[Any] = [c.stop.remote(timeout_s / 2) for c in consumers]
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s / 2)
            for handle in consumers:
                ray.kill(handle, no_restart=True)
            for name in names.sinks:
                handle = find_actor(name, cfg.namespace)
                if handle is not None:
                    ray.kill(handle, no_restart=True)
        finally:
            if locked:
                self._reconcile_lock.release()
        log.info("pipeline stopped namespace=%s", self._config.namespace)

    # -- reconciliation -----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self._config.reconcile_interval_s):
            if not self._begun.is_set():
                continue
            try:
                self._reconcile(lock_wait_s=0)  # start() is reconciling: skip this round
            except Exception as exc:  # recorded in status(), retried next interval
                with self._state_lock:
                    self._last_error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, TablesPendingError):  # expected while it lasts: no trace
                    log.warning("%s; retrying in %.1fs", exc, self._config.reconcile_interval_s)
                    continue
                log.exception("reconciliation failed; retrying in %.1fs",
                              self._config.reconcile_interval_s)

    def _metrics_loop(self) -> None:
        """Export lag, drain time, pool size and sink busy shares
        (``cluster.supervisor_metrics``), then ask the scaling policy."""
        from cluster.supervisor_metrics import SupervisorMetrics

        metrics = SupervisorMetrics()
        interval = self._config.metrics_interval_s
        while not self._stop.wait(interval):
            try:
                status = self.status()
                now = time.monotonic()
                metrics.publish(status.partitions, status.pool_size, now)
                busy = metrics.publish_sinks(status.sinks, now)
                self._autoscale_round(status, busy, metrics, now)
            except Exception:  # the gauges keep their last values; retried next interval
                log.exception("publishing metrics failed; retrying in %.1fs", interval)

    def _autoscale_round(self, status: PipelineStatus, busy: dict[str, float],
                         metrics: Any, now: float) -> None:
        """Ask the policy (``cluster.autoscale_policy``) for the pool's size: every decision
        exported, the ones that change the size and those whose rule differs from the last
        logged at INFO with their inputs (the others at DEBUG); a new size is applied by the
        next reconciliation."""
        from cluster.autoscale_policy import PolicyInputs, decide, drain_seconds, log_fields

        cfg = self._config
        changed_at = self._pool.changed_at
        inputs = PolicyInputs(
            pool_size=status.pool_size, partitions=len(status.partitions),
            lag=status.totals.lag,
            drain_rate=metrics.drain_rate(status.partitions, now),
            sink_busy=[busy[s.name] for s in status.sinks
                       if s.state != "retiring" and s.name in busy],
            since_change_s=None if changed_at is None else now - changed_at,
            pending_sinks=self._pool.pending(),
        )
        if not cfg.autoscale.enabled:
            metrics.publish_decision(status.pool_size, "hold",
                                     drain_seconds(inputs.lag, inputs.drain_rate))
            return
        if self._pool.wanted is not None:  # the last decision is not applied yet
            return
        decision = decide(cfg.autoscale, inputs)
        last = self._autoscale.decision
        level = (logging.INFO if decision.action != "hold" or last is None
                 or last.rule != decision.rule else logging.DEBUG)
        log.log(level, "autoscale decision %s: %s", log_fields(decision), decision.reason)
        with self._state_lock:
            self._autoscale = AutoscaleStatus(enabled=True, decision=decision,
                                              decided_at=time.time())
        if decision.action != "hold":
            self._pool.wanted = decision.size
        metrics.publish_decision(decision.size, decision.action, decision.drain_s)

    def _reconcile(self, lock_wait_s: float) -> bool:
        """One round; False when another round held the lock for ``lock_wait_s``."""
        if not self._reconcile_lock.acquire(timeout=lock_wait_s):
            return False
        try:
            if not self._stop.is_set():
                self._reconcile_locked()
        finally:
            self._reconcile_lock.release()
        return True

    def _reconcile_locked(self) -> None:
        from actors.kafka_admin import ensure_topics, partition_counts

        cfg = self._config
        events, dead_letter = cfg.topics.events, cfg.topics.dead_letter
        counts = partition_counts(cfg.kafka, [events, dead_letter])
        if events not in counts:
            ensure_topics(cfg.kafka, cfg.topics)
            counts = partition_counts(cfg.kafka, [events, dead_letter])
        partitions = counts[events]
        if partitions > self._partitions and self._partitions:
            log.info("partitions added topic=%s %d->%d", events, self._partitions, partitions)
        fresh = self._pool.size is None and self._nothing_runs()
        if not self._tables_ready:  # asked first: the DDL runs while the rest starts
            self._ask_tables()
        if counts.get(dead_letter, 0) < partitions:  # before a consumer dead-letters to it
            ensure_topics(cfg.kafka, cfg.topics)
        statuses = self._consumer_statuses(partitions)
        if fresh:
            self._start_in_pairs(partitions)
        self._pool.reconcile(partitions, statuses)  # sizes, creates, assigns, retires sinks
        self._replace_fenced(statuses)
        assignment = self._pool.assignment()
        for p in range(partitions):
            if self._stop.is_set():  # a shutdown waits for this round: create nothing more
                return
            self._ensure_consumer(p, assignment.sink_of(p))
        if not self._tables_ready:
            self._await_tables()
        with self._state_lock:
            self._partitions = partitions
            self._reconciled_at = time.time()
            self._last_error = None

    def _nothing_runs(self) -> bool:
        """No sink and no consumer in the namespace: a fresh pipeline (not a restarted
        supervisor's)."""
        names = pipeline_actors(self._config.namespace)
        return not names.sinks and not names.consumers

    def _start_in_pairs(self, partitions: int) -> None:
        """A fresh pipeline: each sink created with the first consumer that writes through it,
        pair after pair (where a fresh pool puts partitions, ``p % pool_size``), before the
        other consumers. Ray starts a node's worker processes a few at a time (as many as it
        has cores): the first pair to run commits the first rows while the rest start."""
        size = self._pool.current_size()
        for index in range(size):
            self._ensure_sink(index)
            if index < partitions:
                self._ensure_consumer(index, index)

    def _ask_tables(self) -> None:
        """Have the first sink create the events and offsets tables: one call, kept pending
        across rounds (not one more per round). Each partition's owners table comes with its
        first take, on the sink it writes through (different tables: no conflict)."""
        if self._tables_call is None:
            self._tables_call = self._ensure_sink(0).ensure_tables.remote()

    def _await_tables(self) -> None:
        """Wait ``_CALL_TIMEOUT_S`` per round for the tables asked by ``_ask_tables``.

        Consumers are created meanwhile: until the supervisor knows the tables exist, each new
        one waits for the same sink's ``ensure_tables`` before its first take. A warehouse that
        does not answer fails each round with a clear error (``status().last_error``) instead
        of holding the lock.
        """
        import ray

        from cluster.preflight import snowflake_location

        try:
            ray.get(self._tables_call, timeout=_CALL_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise TablesPendingError(
                f"{sink_name(0)} has not created the tables yet (waited {_CALL_TIMEOUT_S:g}s "
                f"this round; Snowflake at {snowflake_location(self._config.snowflake)}); the "
                f"consumers wait for it") from None
        except Exception:
            self._tables_call = None  # it failed: the next round asks again
            raise
        self._tables_call = None
        self._tables_ready = True

    def _consumer_statuses(self, partitions: int) -> list[ConsumerStatus | None]:
        """Each partition's consumer status, None when it did not answer (one call each,
        ``_STATUS_TIMEOUT_S`` at most)."""
        names = [consumer_name(self._config.topics.events, p) for p in range(partitions)]
        return [_as(answer, ConsumerStatus) for answer, _ in self._ask_all(names, "status")]

    def _replace_fenced(self, statuses: list[ConsumerStatus | None]) -> None:
        """Kill every consumer whose status says ``fenced``; the loop after this re-creates it
        (once Ray has released its name: this round or the next) and the new life takes a new
        epoch, fencing whichever life took the partition from it.

        A fenced consumer has stopped for good, so that it never fences the new owner back.
        When that new owner is a zombie (two lives took the partition at the same moment and
        the one Ray no longer counts won) and dies, nothing writes the partition: this is what
        unblocks it. ``statuses``: the round's (``_consumer_statuses``)."""
        import ray

        cfg = self._config
        names = [consumer_name(cfg.topics.events, p) for p in range(len(statuses))]
        for p, status in enumerate(statuses):
            if status is None or not status.fenced:
                continue
            handle = find_actor(names[p], cfg.namespace)
            if handle is None:
                continue
            log.warning("replacing fenced consumer name=%s partition=%d epoch=%s: %s",
                        names[p], p, status.epoch, status.last_error)
            ray.kill(handle, no_restart=True)

    def _ensure_sink(self, index: int) -> Any:
        from actors.sink import SnowflakeSinkActor

        cfg = self._config
        name = sink_name(index)
        handle = find_actor(name, cfg.namespace)
        if handle is None:
            log.info("creating sink name=%s", name)
            handle = SnowflakeSinkActor.options(
                name=name, namespace=cfg.namespace, lifetime="detached", get_if_exists=True,
                max_restarts=cfg.sink.max_restarts, num_cpus=cfg.sink.num_cpus,
                memory=cfg.sink.memory_bytes or None,  # 0: reserve none
            ).remote(cfg.snowflake, cfg.sink, index)
        return handle

    def _ensure_consumer(self, partition: int, sink: int | None) -> Any:
        """The partition's consumer, created when missing; one created before the tables are
        known to exist waits for them (``_await_tables``)."""
        from actors.consumer import partition_consumer_actor

        cfg = self._config
        name = consumer_name(cfg.topics.events, partition)
        handle = find_actor(name, cfg.namespace)
        if handle is None:
            if self._consumer_cls is None:
                self._consumer_cls = partition_consumer_actor()
            log.info("creating consumer name=%s", name)
            handle = self._consumer_cls.options(
                name=name, namespace=cfg.namespace, lifetime="detached", get_if_exists=True,
                max_restarts=cfg.consumer.max_restarts, num_cpus=cfg.consumer.num_cpus,
                memory=cfg.consumer.memory_bytes or None,  # 0: reserve none
                max_concurrency=4, scheduling_strategy="SPREAD",
            ).remote(cfg, partition, sink, None if self._tables_ready else 0)
        return handle

    def _ask_all(self, names: list[str], method: str) -> list[tuple[Any, str | None]]:
        """Call ``method`` on each named actor; (answer or None, error or None) per name."""
        import ray

        refs: list[Any] = []
        for name in names:
            handle = find_actor(name, self._config.namespace)
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


def _import_sink_module() -> None:
    import actors.sink  # noqa: F401


def _restarted() -> bool:
    """Whether this actor is a life Ray restarted."""
    import warnings

    import ray

    with warnings.catch_warnings():  # Ray's own property reads its deprecated actor_id
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def find_actor(name: str, namespace: str) -> Any:
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

    First logs the settings and checks that Kafka and Snowflake answer
    (``ServiceUnreachableError`` names the setting when one does not) and that the existing
    topics keep an acknowledged event on more than one broker (``DurabilityError``, unless
    ``topics.durability`` is local). A supervisor already running in the namespace with other
    settings gets them by replacement (see the module docstring), or, for settings a running
    pipeline cannot take, ``ConfigChangeRefusedError`` names them and nothing is changed.

    With no supervisor running, one is created before those checks, so that its worker process
    starts while they run; it reconciles nothing until ``start`` and is killed when a check
    fails.
    """
    import ray

    from actors.durability import check_durability
    from cluster.preflight import check_pipeline

    early = (None if find_actor(SUPERVISOR_NAME, config.namespace) is not None
             else _create_supervisor(config, wait_for_start=True))
    try:
        check_pipeline(config)
        check_durability(config.kafka, config.topics,
                         [config.topics.events, config.topics.dead_letter])
    except BaseException:
        if early is not None:  # it has created nothing: it waits for start()
            ray.kill(early, no_restart=True)
        raise
    _replace_if_changed(config, timeout_s=ready_timeout_s)
    supervisor = _create_supervisor(config, wait_for_start=False)  # or the one running
    partitions = ray.get(supervisor.start.remote(ready_timeout_s / 2), timeout=ready_timeout_s)
    deadline = time.monotonic() + ready_timeout_s
    while not ray.get(supervisor.ready.remote(), timeout=ready_timeout_s):
        if time.monotonic() > deadline:
            raise EventrayError(f"the pipeline did not become ready in {ready_timeout_s:g}s")
        time.sleep(0.5)
    log.info("pipeline ready namespace=%s partitions=%d", config.namespace, partitions)
    return supervisor


def _create_supervisor(config: PipelineConfig, *, wait_for_start: bool) -> Any:
    """The named, detached supervisor: created, or the running one (``get_if_exists``)."""
    return supervisor_actor().options(
        name=SUPERVISOR_NAME, namespace=config.namespace, lifetime="detached",
        get_if_exists=True, max_restarts=-1, max_concurrency=8, num_cpus=0,
    ).remote(config, wait_for_start=wait_for_start)


def _replace_if_changed(config: PipelineConfig, timeout_s: float) -> None:
    """Apply ``config`` to a supervisor running with other settings by replacing it (and, when
    more than its own settings changed, every consumer and sink: ``stop_pipeline`` then lets the
    new supervisor create them); raise ``ConfigChangeRefusedError`` for what cannot change."""
    import ray

    running = find_actor(SUPERVISOR_NAME, config.namespace)
    if running is None:
        return
    try:
        current: PipelineConfig = ray.get(running.config.remote(), timeout=timeout_s)
    except AttributeError:  # a supervisor of an eventray from before it could say
        raise EventrayError(f"{SUPERVISOR_NAME} in namespace {config.namespace} was started "
                            f"by an older eventray that cannot compare settings; stop the "
                            f"pipeline (eventray stop) and start it again") from None
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as exc:
        raise EventrayError(f"{SUPERVISOR_NAME} in namespace {config.namespace} did not say "
                            f"which settings it runs with ({type(exc).__name__}); nothing "
                            f"was changed") from None
    change = config_change(current, config)
    if not change.changed:
        return
    if change.refused:
        raise ConfigChangeRefusedError(refusal_message(change, config.namespace))
    if change.replaces_actors:
        log.info("settings changed namespace=%s changed=%s: replacing the supervisor, "
                 "consumers and sinks", config.namespace, ",".join(change.changed))
        stop_pipeline(current, timeout_s=timeout_s)
    else:
        log.info("settings changed namespace=%s changed=%s: replacing the supervisor",
                 config.namespace, ",".join(change.changed))
        ray.kill(running, no_restart=True)
        left = sweep(config.namespace, lambda: [SUPERVISOR_NAME], _RELEASE_WAIT_S)
        if left:
            raise EventrayError(f"{SUPERVISOR_NAME} was still registered "
                                f"{_RELEASE_WAIT_S:g}s after it was killed")


def stop_pipeline(config: PipelineConfig, *, timeout_s: float = 60.0) -> bool:
    """Stop consumers, then kill consumers, sinks and the supervisor, and wait until Ray has
    released their names (so nothing of the old pipeline runs when this returns). False if no
    supervisor ran; ``EventrayError`` naming what is still registered after the wait."""
    import ray

    supervisor = find_actor(SUPERVISOR_NAME, config.namespace)
    if supervisor is None:
        return False
    try:
        ray.get(supervisor.shutdown.remote(timeout_s / 2), timeout=timeout_s)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as exc:
        # Killed below all the same, and its actors found by name.
        log.warning("%s did not finish its shutdown (%s); killing the pipeline's actors",
                    SUPERVISOR_NAME, type(exc).__name__)
    ray.kill(supervisor, no_restart=True)

    def registered() -> list[str]:
        names = pipeline_actors(config.namespace, config.topics.events)
        return [SUPERVISOR_NAME, *names.consumers, *names.sinks]

    left = sweep(config.namespace, registered, _RELEASE_WAIT_S)
    if left:
        raise EventrayError(f"still registered {_RELEASE_WAIT_S:g}s after they were killed: "
                            f"{', '.join(left)}")
    return True


def sweep(namespace: str, names: Callable[[], list[str]], wait_s: float,
          on_wait: Callable[[list[str]], None] | None = None) -> list[str]:
    """Kill the actors ``names()`` lists, asking again each round (a reconciliation that ended
    late may have created one), until Ray has released every name or ``wait_s`` passed; the
    names still registered. ``on_wait`` hears the names left after each round of kills."""
    import ray

    deadline = time.monotonic() + wait_s
    while True:
        left = [name for name in names() if find_actor(name, namespace) is not None]
        if not left or time.monotonic() > deadline:
            return left
        for name in left:
            handle = find_actor(name, namespace)
            if handle is not None:
                ray.kill(handle, no_restart=True)
        if on_wait is not None:
            on_wait(left)
        time.sleep(0.2)


def get_status(config: PipelineConfig, *, timeout_s: float = 30.0) -> PipelineStatus | None:
    """The supervisor's status report, None when no supervisor runs in the namespace."""
    import ray

    supervisor = find_actor(SUPERVISOR_NAME, config.namespace)
    if supervisor is None:
        return None
    status: PipelineStatus = ray.get(supervisor.status.remote(), timeout=timeout_s)
    return status
