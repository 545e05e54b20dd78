"""The partition-pinned consumer: one Ray actor per (topic, partition).

The actor (named ``consumer:<topic>:<partition>``) builds its confluent-kafka Consumer inside
itself, ``assign()``s its one partition (no group rebalancing) and runs a loop in a thread:

1. consume records until the batch is full (events, bytes) or old enough (``ConsumerConfig``);
2. plan the batch (``plan_batch``, pure): decode against the contract, drop duplicates of events
   already written or dead-lettered within the dedup window (a client retrying), apply the
   business rules. After partitions were added, the window first learns what the partitions
   a batch's accounts went to before decided about them (``actors.partition_moves``);
3. dead-letter the invalid records in one Kafka transaction (``actors.dead_letter``);
4. send the rows to its sink as one ``SinkBatch``; only one batch is in flight, and the next
   one is consumed and planned while it is written. Which sink is the supervisor's to say
   (``use_sink``; ``sink:<p % pool_size>`` until it does): the consumer moves to another sink
   only with no batch in flight, so a partition's writes never overlap;
5. after the write committed, commit the consumer-group offset (for lag tools only).

Exactly once: the warehouse's offsets table is the authoritative position. At (re)start the
actor asks its sink for the committed offset, seeks there, and (when its first batch is ready)
rebuilds the dedup window from the rows written and the records dead-lettered before it, so the
batches planned again decide as before (``actors.window_rebuild``); the sink skips rows below
its committed offset and the DLQ producer
skips records at or below what a predecessor already dead-lettered, so any batch may be
re-processed or re-sent safely.

Fencing (docs/guarantees.md): each life of the actor takes a new owner epoch of its partition in
the warehouse before its first write and sends it with every batch. Once a newer life took the
partition, the old one's writes are refused (``FencedError``) and its loop ends for good,
status ``fenced``: restarting its session would take nothing back but re-initialise the
dead-letter producer and fence the new owner's. Every session start checks the epoch first,
and again after the dead-letter producer's ``init_transactions``; a fenced dead-letter
producer (``ProducerFencedError``) restarts the session, so that check decides: superseded ->
stop for good, still the owner -> carry on with a re-initialised producer.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from actors import steady_gc
from actors.batch_plan import BatchPlan, plan_batch
from actors.batching import Accumulator
from actors.config import PipelineConfig
from actors.contract import EventCodec
from actors.dead_letter import DeadLetterProducer, Recovered
from actors.exceptions import FencedError, KafkaDeliveryError, OffsetGapError, SinkError
from actors.partition_moves import MoveGuard, SinkMovesIO
from actors.rate_meter import RateMeter
from actors.records import RecordReader, SourceRecord
from actors.recovery import RecoveryProgress, RecoveryStatus, window_at_start
from actors.retry_window import DedupWindow
from actors.rows import FlushResult, SinkBatch, encode_rows
from actors.window_rebuild import window_since

log = logging.getLogger(__name__)

_MAX_BACKOFF_S: Final = 10.0
# Ray records an actor's repr once, when its __init__ returns (the dashboard's Repr column and
# its log prefix): __init__ waits this long for the committed offset so the repr can name it
# (a sink busy with other partitions may take longer; the repr then says committed=?).
_REPR_WAIT_S: Final = 10.0
# An idle consumer still looks up its topic's partition count this often, to mark a grown one.
_IDLE_LOOK_S: Final = 1.0
# The topic's metadata asked for before the first fetch (``_kafka_consumer``).
_METADATA_TIMEOUT_S: Final = 10.0


def consumer_name(topic: str, partition: int) -> str:
    """The Ray actor name of the consumer that owns ``topic``/``partition``."""
    return f"consumer:{topic}:{partition}"


def sink_name(index: int) -> str:
    return f"sink:{index}"


def sink_index(partition: int, pool_size: int) -> int:
    """The sink a fresh pool of ``pool_size`` gives partition p (``cluster.sink_assignment``
    keeps the assignment afterwards; ``ConsumerStatus.sink`` says where it writes now)."""
    return partition % pool_size


# --------------------------------------------------------------------------- the actor


class ConsumerStatus(msgspec.Struct, frozen=True):
    """A consumer's own view of its partition, as answered by ``PartitionConsumer.status``."""

    name: str
    topic: str
    partition: int
    node_id: str
    sink: str
    running: bool
    committed_offset: int | None  # the warehouse's, as of the last write or start
    position: int | None          # next offset the consumer will batch
    rows_written: int
    duplicates: int
    dead_lettered: int
    rows_per_s: float
    sessions: int                 # (re)starts of the loop inside this actor process
    last_error: str | None
    epoch: int | None = None      # this life's owner epoch (None before it took one)
    fenced: bool = False          # a newer owner took the partition: stopped for good
    recovery: RecoveryStatus | None = None  # the window rebuild of the latest session


class _InFlight:
    """The one batch being written."""

    def __init__(self, plan: BatchPlan, ref: Any, sent_at: float) -> None:
        self.plan = plan
        self.ref = ref
        self.sent_at = sent_at


class PartitionConsumer:
    """Consumes one partition into its sink; the loop starts with the actor (and restarts)."""

    def __init__(self, config: PipelineConfig, partition: int, sink: int | None = None,
                 tables_sink: int | None = None) -> None:
        import ray

        self._config = config
        # Created before the supervisor knew the tables exist: the first session first waits
        # for this sink's ensure_tables (the one the supervisor asked), then takes the partition.
        self._tables_sink = tables_sink
        self._topic = config.topics.events
        self._partition = partition
        self._name = consumer_name(self._topic, partition)
        index = sink_index(partition, config.sink.pool_size) if sink is None else sink
        self._sink_name = sink_name(index)
        self._wanted_sink = self._sink_name  # use_sink's; taken with no batch in flight
        self._node_id = ray.get_runtime_context().get_node_id()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._committed: int | None = None
        self._position: int | None = None
        self._rows = RateMeter()
        self._duplicates = 0
        self._dead_lettered = 0
        self._sessions = 0
        self._last_error: str | None = None
        self._running = False
        self._metrics: Any = None
        self._sink_handle: Any = None
        # This life (actor incarnation) takes one owner epoch, before its first write; a
        # newer life's epoch fences it (actors.sink). OWNER in the owners table.
        self._life = f"{self._name}@{self._node_id[:12]}#{uuid.uuid4().hex[:12]}"
        self._seen_epoch: int | None = None  # the partition's epoch before this life took it
        self._epoch: int | None = None
        self._fenced = False
        self._recovery: RecoveryProgress | None = None  # the latest session's window rebuild
        self._window: DedupWindow | None = None  # the latest session's (written after commits)
        self._thread = threading.Thread(target=self._run, name=f"eventray-{self._name}",
                                        daemon=True)
        self._offset_read = threading.Event()
        self._thread.start()
        self._offset_read.wait(_REPR_WAIT_S)

    def __repr__(self) -> str:
        """``consumer(events/3 committed=1234)``: ``?`` before the sink answered, ``none`` for
        a partition never written. Only a lock, no Ray calls: Ray calls it on its threads."""
        if "_offset_read" not in self.__dict__:  # __init__ failed before it got that far
            return "consumer(not started)"
        with self._lock:
            committed = self._committed
        if not self._offset_read.is_set():
            return f"consumer({self._topic}/{self._partition} committed=?)"
        shown = "none" if committed is None else str(committed)
        return f"consumer({self._topic}/{self._partition} committed={shown})"

    # -- actor methods ------------------------------------------------------------------

    def ping(self) -> str:
        return self._name

    def status(self) -> ConsumerStatus:
        with self._lock:
            return ConsumerStatus(
                name=self._name, topic=self._topic, partition=self._partition,
                node_id=self._node_id, sink=self._sink_name,
                running=self._running and self._thread.is_alive(),
                committed_offset=self._committed, position=self._position,
                rows_written=self._rows.total, duplicates=self._duplicates,
                dead_lettered=self._dead_lettered, rows_per_s=self._rows.rate(time.monotonic()),
                sessions=self._sessions, last_error=self._last_error, epoch=self._epoch,
                fenced=self._fenced,
                recovery=None if self._recovery is None else self._recovery.snapshot(),
            )

    def use_sink(self, index: int) -> None:
        """Write through ``sink:<index>`` from the next batch on (the supervisor moves
        partitions between sinks). Taken when no batch is in flight, so ``status().sink``
        naming the new sink means nothing of this consumer is left on the old one."""
        with self._lock:
            self._wanted_sink = sink_name(index)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Finish the batch in flight and stop; True when the loop ended in time."""
        self._stop.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # -- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        from actors.metrics import PipelineMetrics

        self._metrics = PipelineMetrics(self._topic, self._partition)
        backoff = 0.5
        while not self._stop.is_set():
            with self._lock:
                self._sessions += 1
            try:
                self._session()
                backoff = 0.5
            except FencedError as exc:
                self._stop_fenced(exc)
                break
            except Exception as exc:  # recorded, logged, session rebuilt from the warehouse
                # Also a fenced dead-letter producer (ProducerFencedError): the next session
                # first asks the warehouse whose partition it is (_own_partition).
                with self._lock:
                    self._running = False
                    self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("consumer session failed name=%s: restarting from the "
                              "warehouse offset in %.1fs", self._name, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        with self._lock:
            self._running = False

    def _stop_fenced(self, exc: FencedError) -> None:
        """A newer consumer owns the partition: end the loop for good. Restarting would take
        nothing back (one epoch per life) but re-initialise the dead-letter producer and fence
        the new owner's."""
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        with self._lock:
            self._fenced = True
            self._running = False
            self._last_error = f"FencedError: {reason}"[:500]
        log.warning("consumer fenced name=%s epoch=%s owner=%s: %s; stopping for good",
                    self._name, self._epoch, self._life, reason)

    def _own_partition(self) -> int | None:
        """Before a session (re)starts: take this life's owner epoch (once per life), else
        check that it is still the partition's; ``FencedError`` when a newer life took it.
        Returns the partition's committed offset, read by the same sink call after the take
        (or the check)."""
        topic, partition, life = self._topic, self._partition, self._life
        if self._epoch is not None:
            checked: tuple[int | None, int | None] = self._call_sink(
                lambda s: s.owner_epoch_and_offset.remote(topic, partition))
            self._raise_if_superseded(checked[0])
            return checked[1]
        if self._seen_epoch is None:  # seen once: a retried take compares with the same
            self._seen_epoch = self._call_sink(
                lambda s: s.owner_epoch.remote(topic, partition)) or 0
        seen = self._seen_epoch
        taken: tuple[int, int | None] = self._call_sink(
            lambda s: s.take_ownership_and_offset.remote(topic, partition, life, seen))
        epoch, committed = taken
        with self._lock:
            self._epoch = epoch
        log.info("partition owner epoch taken name=%s epoch=%d owner=%s", self._name, epoch,
                 life)
        return committed

    def _wait_for_tables(self) -> bool:
        """Once per life, when created before the tables were known to exist: wait for the
        sink the supervisor asked to create them (its ``ensure_tables`` runs once per sink
        life, so asking again returns when they exist). False when a stop ended the wait."""
        import ray

        index = self._tables_sink
        if index is None:
            return True
        backoff = self._config.sink.retry_backoff_s
        while not self._stop.is_set():
            try:
                ref: Any = ray.get_actor(sink_name(index), namespace=self._config.namespace
                                         ).ensure_tables.remote()
                while not ray.wait([ref], timeout=0.5)[0]:
                    if self._stop.is_set():
                        return False
                ray.get(ref)
            except (ray.exceptions.RayActorError, ValueError) as exc:  # not there (yet)
                log.warning("waiting for the tables name=%s sink=%s retry_in=%.1fs: %s",
                            self._name, sink_name(index), backoff, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            self._tables_sink = None
            return True
        return False

    def _check_epoch(self) -> None:
        """``FencedError`` unless this life's epoch is still the partition's."""
        topic, partition = self._topic, self._partition
        self._raise_if_superseded(
            self._call_sink(lambda s: s.owner_epoch.remote(topic, partition)))

    def _raise_if_superseded(self, current: int | None) -> None:
        if current != self._epoch:
            topic, partition = self._topic, self._partition
            raise FencedError(f"partition {topic}/{partition} is owned by epoch {current}, "
                              f"this consumer's is {self._epoch}")

    def _sink(self) -> Any:
        """The sink's handle, looked up once (a GCS round trip) and again after a failure."""
        import ray

        if self._sink_handle is None:
            self._sink_handle = ray.get_actor(self._sink_name, namespace=self._config.namespace)
        return self._sink_handle

    def _call_sink(self, call: Callable[[Any], Any]) -> Any:
        """``ray.get(call(sink))``, retried while the sink is dead, restarting or recreated."""
        import ray
        from ray.exceptions import RayActorError

        backoff = self._config.sink.retry_backoff_s
        while True:
            try:
                return ray.get(call(self._sink()))
            except (RayActorError, ValueError) as exc:  # ValueError: no such named actor yet
                self._note_retry(exc, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _follow_sink(self) -> None:
        """Take the sink ``use_sink`` named; call only with no batch in flight (or after the
        one in flight failed)."""
        with self._lock:
            if self._wanted_sink == self._sink_name:
                return
            log.info("consumer moves name=%s sink=%s->%s", self._name, self._sink_name,
                     self._wanted_sink)
            self._sink_name, self._sink_handle = self._wanted_sink, None

    def _note_retry(self, exc: BaseException, backoff: float) -> None:
        self._follow_sink()  # the call failed: nothing of ours is in flight on that sink
        self._sink_handle = None  # the supervisor may have replaced the actor: look it up again
        with self._lock:
            self._last_error = f"{type(exc).__name__}: {exc}"
        log.warning("sink unavailable name=%s sink=%s retry_in=%.1fs: %s",
                    self._name, self._sink_name, backoff, exc)

    def _session(self) -> None:
        cfg = self._config
        topic, partition = self._topic, self._partition
        if not self._wait_for_tables():
            return  # stopped
        committed = self._own_partition()
        with self._lock:
            self._committed = committed
        self._offset_read.set()
        dlq = DeadLetterProducer(cfg.kafka, cfg.topics.dead_letter, topic, partition)
        consumer: Any = None
        try:
            # Reading is no write: the first records are fetched while the dead-letter
            # producer fences its predecessors and the epoch is checked again.
            consumer = self._kafka_consumer(committed)
            recovered = dlq.start(floor=committed if committed is not None else 0)
            # Our init_transactions fenced any other producer of the partition's dead letters:
            # if a newer owner took the partition meanwhile, stop before publishing anything.
            self._check_epoch()
            with self._lock:
                self._committed = self._position = committed
                self._running = True
                self._last_error = None
            log.info("consumer started name=%s node=%s committed=%s dlq_watermark=%d",
                     self._name, self._node_id, committed, recovered.watermark)
            self._loop(consumer, dlq, recovered, committed)
        finally:
            if consumer is not None:
                consumer.close()
            dlq.close()

    def _kafka_consumer(self, committed: int | None) -> Any:
        """The partition's consumer, assigned at ``committed`` (its start when never written):
        librdkafka starts fetching at once."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        cfg = self._config
        conf = cfg.kafka.client_config()
        conf.update({
            "group.id": cfg.consumer.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "client.id": self._name,
        })
        consumer = Consumer(conf)
        # librdkafka resolves a logical start (the beginning) once it has the topic's metadata,
        # else after a ~0.5 s retry: asked for first, a fresh partition's first records came
        # 0.4 s sooner (0.18 s instead of 0.60, measured on the local broker).
        consumer.list_topics(self._topic, timeout=_METADATA_TIMEOUT_S)
        start = committed if committed is not None else OFFSET_BEGINNING
        consumer.assign([TopicPartition(self._topic, self._partition, start)])
        return consumer

    def _loop(self, consumer: Any, dlq: DeadLetterProducer, recovered: Recovered,
              committed: int | None) -> None:
        cfg = self._config
        codec = EventCodec()
        acc = Accumulator(cfg.consumer)
        reader = RecordReader()
        next_from = committed
        pending: _InFlight | None = None
        window: DedupWindow | None = None  # rebuilt when the first batch is ready
        moves = self._move_guard(consumer)
        looked = 0.0  # when the partition count was last looked up
        flush_caught_up = cfg.consumer.flush_when_caught_up
        steady_gc.settle(cfg.consumer.batch_max_events)  # start-up's objects out of the GC's way
        while not self._stop.is_set():
            if pending is not None and _ready(pending.ref):
                self._finish(pending, consumer)
                pending = None
            if pending is None:
                self._follow_sink()  # idle: move now, not at the next batch
            msgs = consumer.consume(num_messages=max(acc.room, 1),
                                    timeout=cfg.consumer.poll_timeout_s)
            records, nbytes = self._records(reader, msgs)
            acc.add(records, time.monotonic(), nbytes)
            idle = flush_caught_up and (pending is None or _ready(pending.ref))
            if not acc.full(time.monotonic(), drained=not records, idle=idle):
                if not records and time.monotonic() - looked >= _IDLE_LOOK_S:
                    pending, next_from = self._idle_look(
                        consumer, moves, next_from, window=window, pending=pending, acc=acc)
                    looked = time.monotonic()
                continue
            now = datetime.now(UTC)
            now_ms = int(now.timestamp() * 1000)
            batch = acc.take()
            # Every batch: its records were consumed before this look, so one a producer
            # routed by a grown partition count is planned knowing of it.
            moves.observe(next_from)
            looked = time.monotonic()
            if window is None:
                window = self._rebuild_window(batch[0].accepted_at_ms or now_ms, committed)
            finisher = _Finisher(self, pending, consumer)
            moved = moves.prepare(batch, window, self._stop.wait, finisher)
            if finisher.done:
                pending = None
            if moved < 0:
                break  # stopping while waiting for another partition: the batch is not planned
            plan = plan_batch(batch, topic=self._topic, partition=self._partition,
                              next_from=next_from, codec=codec, rules=cfg.rules, now=now,
                              window=window, recovered=recovered, now_ms=now_ms,
                              forwards=moves.forward_targets(batch))
            next_from = plan.batch.to_offset
            self._metrics.count(plan.consumed, plan.valid, plan.duplicates, plan.rejected)
            if window.evicted_early:
                self._note_window_full(window)
            # Dead letters are committed before the batch's rows: a crash in between replays
            # the batch, and the DLQ watermark keeps it from dead-lettering twice.
            self._publish(dlq, plan)
            if pending is not None:
                self._finish(pending, consumer)
            pending = self._send(plan)
        if pending is not None:
            self._finish(pending, consumer)

    def _idle_look(self, consumer: Any, moves: MoveGuard, next_from: int | None, *,
                   window: DedupWindow | None, pending: _InFlight | None,
                   acc: Accumulator) -> tuple[_InFlight | None, int | None]:
        """Nothing consumed: mark a grown partition count (other partitions may wait for our
        mark), and with nothing in hand commit past trailing transaction markers.
        ``(pending, next_from)`` afterwards."""
        moves.observe(next_from)
        if pending is not None or acc.records:
            return pending, next_from
        skipped = self._past_markers(consumer, next_from, window)
        return (None, next_from) if skipped is None else (skipped,
                                                          skipped.plan.batch.to_offset)

    def _past_markers(self, consumer: Any, next_from: int | None,
                      window: DedupWindow | None) -> _InFlight | None:
        """Idle at the partition's end: when the consumer's position is past ``next_from``,
        only transaction markers lie between (records handed on from another partition come
        in transactions, ``actors.partition_moves``), and a batch without rows commits up to
        the position, so the partition's lag reaches 0. None when there is nothing to skip."""
        from confluent_kafka import TopicPartition

        if next_from is None:
            return None
        (position,) = consumer.position([TopicPartition(self._topic, self._partition)])
        if position.offset <= next_from:
            return None  # also OFFSET_INVALID (negative): nothing consumed yet
        batch = SinkBatch(topic=self._topic, partition=self._partition, from_offset=next_from,
                          to_offset=position.offset, rows_json=encode_rows([]), row_count=0)
        if window is not None:
            window.seal(batch.to_offset)  # a window on disk stands at the batch's end too
        plan = BatchPlan(batch=batch, dead_letters=[], consumed=0, valid=0, duplicates=0,
                         already_dead_lettered=0, rejected={})
        return self._send(plan)

    def _move_guard(self, consumer: Any) -> MoveGuard:
        """Retries across added partitions (``actors.partition_moves``) for this session."""
        cfg = self._config
        io = SinkMovesIO(self._topic, self._partition, call_sink=self._call_sink,
                         consumer=consumer, kafka=cfg.kafka,
                         dead_letter_topic=cfg.topics.dead_letter)
        return MoveGuard(self._topic, self._partition, cfg.consumer.dedup_window_s, io)

    def _rebuild_window(self, first_accepted_ms: int, committed: int | None) -> DedupWindow:
        """The retry window as the consumer life before this one left it at ``committed``
        (``actors.window_rebuild``), for a first batch starting with a record accepted at
        ``first_accepted_ms``. Called after the dead-letter producer fenced its predecessor,
        so the dead-letter tail read here is final. Read by this actor itself, streamed
        (``actors.recovery``): the sink goes on writing for the other partitions it serves.
        A window on disk that provably stands at ``committed`` is kept instead
        (``window_at_start``)."""
        progress = RecoveryProgress()
        with self._lock:
            self._recovery = progress
        if self._window is not None:  # the session before's: its directory is reopened
            self._window.close()
            self._window = None
        since_ms = window_since(first_accepted_ms, self._config.consumer.dedup_window_s)
        self._window = window_at_start(self._config, self._partition, since_ms=since_ms,
                                       committed=committed, progress=progress,
                                       epochs=(self._seen_epoch, self._epoch))
        return self._window

    def _note_window_full(self, window: DedupWindow) -> None:
        """Report keys the dedup window forgot early (its ``max_keys`` is too small for the
        event rate times ``dedup_window_s``): a retry older than the kept keys is written."""
        forgotten, window.evicted_early = window.evicted_early, 0
        self._metrics.dedup_evicted_early(forgotten)
        log.warning("dedup window full name=%s keys=%d forgotten_early=%d: raise "
                    "consumer.dedup_max_keys or lower consumer.dedup_window_s", self._name,
                    len(window), forgotten)

    def _records(self, reader: RecordReader,
                 msgs: Sequence[Any]) -> tuple[list[SourceRecord], int]:
        """The records of ``msgs`` and their size in bytes; errors are logged or raised."""
        from confluent_kafka import KafkaError

        records, nbytes, errors = reader.read(msgs)
        for msg in errors:
            err = msg.error()
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            if err.retriable() or not err.fatal():
                log.warning("consume error name=%s code=%s: %s", self._name, err.name(),
                            err.str())
            else:
                raise KafkaDeliveryError(f"consume failed: {err.str()}", code=err.code())
        return records, nbytes

    def _publish(self, dlq: DeadLetterProducer, plan: BatchPlan) -> None:
        """The batch's dead letters and the records it hands on, in one transaction."""
        backoff = 0.5
        while True:
            try:
                produced = dlq.publish(plan.dead_letters, plan.forwards)
            except KafkaDeliveryError as exc:
                if not exc.retriable or self._stop.is_set():
                    raise
                log.warning("dead-letter transaction aborted name=%s code=%s retry_in=%.1fs",
                            self._name, exc.code, backoff)
                with self._lock:
                    self._last_error = f"KafkaDeliveryError: {exc}"
            else:
                with self._lock:
                    self._dead_lettered += produced
                return
            time.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _send(self, plan: BatchPlan) -> _InFlight:
        return _InFlight(plan, self._submit(plan.batch), time.monotonic())

    def _submit(self, batch: SinkBatch) -> Any:
        """Send ``batch`` to the sink; called only with no other batch in flight."""
        from ray.exceptions import RayActorError

        self._follow_sink()
        backoff = self._config.sink.retry_backoff_s
        while True:
            try:
                return self._sink().write.remote(batch, self._epoch)
            except (RayActorError, ValueError) as exc:
                self._note_retry(exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _finish(self, pending: _InFlight, consumer: Any) -> None:
        """Wait for the batch's write (re-sending the same batch while the sink is down), then
        commit the group offset for lag tools."""
        import ray
        from ray.exceptions import RayActorError

        batch = pending.plan.batch
        backoff = self._config.sink.retry_backoff_s
        attempts = 0
        while True:
            try:
                result: FlushResult = ray.get(pending.ref)
                break
            except (OffsetGapError, FencedError):
                raise  # our position is wrong, or the partition is no longer ours
            except (RayActorError, SinkError) as exc:
                attempts += 1
                self._note_retry(exc, backoff)
                if isinstance(exc, SinkError) and attempts >= self._config.sink.retry_attempts:
                    raise
            time.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            pending.ref = self._submit(batch)
        self._metrics.flushed(result.rows_written)
        if self._window is not None:  # the window on disk follows the warehouse, never leads
            self._window.persist(result.committed_offset, self._epoch)
        with self._lock:
            self._committed = result.committed_offset
            self._position = batch.to_offset
            self._duplicates += pending.plan.duplicates
            self._rows.add(result.rows_written, time.monotonic())
        self._commit_group_offset(consumer, result.committed_offset)

    def _commit_group_offset(self, consumer: Any, offset: int) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        tp = TopicPartition(self._topic, self._partition, offset)
        try:
            consumer.commit(offsets=[tp], asynchronous=False)
        except KafkaException as exc:
            # Only lag tools read the group offset; the warehouse holds the real position
            # (the supervisor exports each partition's lag from it).
            err = exc.args[0]
            log.warning("group offset commit failed name=%s offset=%d code=%s: %s",
                        self._name, offset, err.name(), err.str())


class _Finisher:
    """Finishes the write in flight once, when called: before waiting for another partition,
    which may itself be waiting for this write."""

    def __init__(self, owner: PartitionConsumer, pending: _InFlight | None,
                 consumer: Any) -> None:
        self._owner, self._pending, self._consumer = owner, pending, consumer
        self.done = False

    def __call__(self) -> None:
        if self._pending is not None and not self.done:
            self._owner._finish(self._pending, self._consumer)
            self.done = True


def _ready(ref: Any) -> bool:
    import ray

    done, _ = ray.wait([ref], timeout=0)
    return bool(done)


def partition_consumer_actor() -> Any:
    """The Ray actor class (``ray.remote`` applied lazily so importing needs no Ray)."""
    import ray

    return ray.remote(PartitionConsumer)
