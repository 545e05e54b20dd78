"""The partition-pinned consumer: one Ray actor per (topic, partition).

The actor (named ``consumer:<topic>:<partition>``) builds its confluent-kafka Consumer inside
itself, ``assign()``s its one partition (no group rebalancing) and runs a loop in a thread:

1. consume records until the batch is full (events, bytes) or old enough (``ConsumerConfig``);
2. plan the batch (``plan_batch``, pure): decode against the contract, drop duplicates of events
   already written or dead-lettered within the dedup window (a client retrying), apply the
   business rules;
3. dead-letter the invalid records in one Kafka transaction (``actors.dead_letter``);
4. send the rows to its sink (``sink:<p % pool_size>``) as one ``SinkBatch``; only one batch is
   in flight, and the next one is consumed and planned while it is written;
5. after the write committed, commit the consumer-group offset (for lag tools only).

Exactly once: the warehouse's offsets table is the authoritative position. At (re)start the
actor asks its sink for the committed offset, seeks there, and rebuilds the dedup window from
the rows written recently; the sink skips rows below its committed offset and the DLQ producer
skips records at or below what a predecessor already dead-lettered, so any batch may be
re-processed or re-sent safely.
"""

from __future__ import annotations

import collections
import logging
import operator
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Final

import msgspec

from actors.config import ConsumerConfig, PipelineConfig, ValidationRules
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_REQUEST_ID,
    Event,
    EventCodec,
    FieldError,
    describe_error,
)
from actors.dead_letter import (
    NOTHING_RECOVERED,
    DeadLetter,
    DeadLetterProducer,
    Recovered,
    event_key,
    read_recent_keys,
)
from actors.exceptions import EventrayError, KafkaDeliveryError, OffsetGapError, SinkError
from actors.rows import EventRow, FlushResult, SinkBatch, encode_rows, row_from_event
from actors.validation import reason_code, validate_batch

log = logging.getLogger(__name__)

DedupKey = tuple[str, str]  # (account_id, event_id)
SourceHeaders = tuple[tuple[str, bytes | None], ...]

CONTRACT_REASON: Final = "contract"
_offset_of: Final = operator.attrgetter("offset")
_RATE_WINDOW_S: Final = 30.0
_MAX_BACKOFF_S: Final = 10.0


def consumer_name(topic: str, partition: int) -> str:
    """The Ray actor name of the consumer that owns ``topic``/``partition``."""
    return f"consumer:{topic}:{partition}"


def sink_name(index: int) -> str:
    return f"sink:{index}"


def sink_index(partition: int, pool_size: int) -> int:
    """Partition p always writes through sink ``p % pool_size``, which serializes its writes."""
    return partition % pool_size


# --------------------------------------------------------------------------- pure parts


class SourceRecord(msgspec.Struct, frozen=True, gc=False):
    """One Kafka record of the source partition, with the gateway's headers parsed.

    Not tracked by the cyclic GC (no cycles possible; see ``actors.contract._Strict``)."""

    offset: int
    key: bytes | None
    value: bytes | None
    # As the record carries them: a header may have a None value (dropped when dead-lettering).
    headers: SourceHeaders = ()
    request_id: str | None = None
    accepted_at_ms: int | None = None

    @property
    def size(self) -> int:
        return len(self.value or b"") + len(self.key or b"")


def parse_headers(headers: Sequence[tuple[str, bytes | None]] | None,
                  ) -> tuple[SourceHeaders, str | None, int | None]:
    """``(headers, request id, accepted-at ms)`` from a record's headers as confluent-kafka
    returns them. The headers are kept as they are (a header may have a None value; those are
    left out when dead-lettering, see ``DeadLetter``)."""
    if not headers:
        return (), None, None
    request_id: str | None = None
    accepted: int | None = None
    for key, value in headers:
        if value is None:
            continue
        if key == HEADER_REQUEST_ID:
            request_id = value.decode("utf-8", "replace")
        elif key == HEADER_ACCEPTED_AT_MS:
            try:
                accepted = int(value)
            except ValueError:
                accepted = None  # a foreign producer's header: fall back to processing time
    return tuple(headers), request_id, accepted


def record_from_message(msg: Any) -> SourceRecord:
    """A ``SourceRecord`` from a confluent-kafka ``Message``."""
    headers, request_id, accepted = parse_headers(msg.headers())
    return SourceRecord(msg.offset(), msg.key(), msg.value(), headers, request_id, accepted)


class RecordReader:
    """Turns consumed confluent-kafka ``Message``s into ``SourceRecord``s.

    The gateway gives every record of one HTTP request the same headers, so runs of records
    carry equal headers: those are parsed once and the records share the parsed values.
    """

    def __init__(self) -> None:
        self._last: Any = None
        self._parsed: tuple[SourceHeaders, str | None, int | None] = ((), None, None)

    def read(self, msgs: Iterable[Any]) -> tuple[list[SourceRecord], int, list[Any]]:
        """``(records, their size in bytes, the messages that carry an error)``."""
        records: list[SourceRecord] = []
        errors: list[Any] = []
        append = records.append
        nbytes = 0
        last, parsed = self._last, self._parsed
        for msg in msgs:
            if msg.error() is not None:
                errors.append(msg)
                continue
            raw = msg.headers()
            if raw != last:
                last, parsed = raw, parse_headers(raw)
            key, value = msg.key(), msg.value()
            if key is not None:
                nbytes += len(key)
            if value is not None:
                nbytes += len(value)
            append(SourceRecord(msg.offset(), key, value, *parsed))
        self._last, self._parsed = last, parsed
        return records, nbytes, errors


class DedupWindow:
    """Event keys written or dead-lettered for this partition within the last ``window_s``
    seconds of accept time, at most ``max_keys`` of them.

    Keys of one account land on one partition, so a per-partition window sees every duplicate.
    Entries are evicted approximately in accept order (a deque in insertion order). Memory is
    bounded by ``max_keys`` (~340 bytes per key measured): past it the oldest key is forgotten
    before its window ends and counted in ``evicted_early``, so the window a client retry is
    caught in shrinks, visibly, instead of the actor growing without bound.
    """

    def __init__(self, window_s: float, max_keys: int | None = None) -> None:
        self._window_ms = int(window_s * 1000)
        self._max_keys = max_keys
        self._at: dict[DedupKey, int] = {}
        self._order: collections.deque[tuple[int, DedupKey]] = collections.deque()
        self.evicted_early = 0  # keys forgotten inside their window because of max_keys

    def __len__(self) -> int:
        return len(self._at)

    def load(self, keys: Iterable[Sequence[str]], at_ms: int) -> None:
        """Keys read back from the warehouse; their accept time is unknown, so they count as
        accepted at ``at_ms`` (kept a little longer than needed, never shorter). Give them
        oldest first: when they exceed ``max_keys`` the last ones are kept."""
        for account_id, event_id in keys:
            self.add((str(account_id), str(event_id)), at_ms)

    def seen(self, key: DedupKey) -> bool:
        return key in self._at

    def add(self, key: DedupKey, at_ms: int) -> None:
        self.first_seen(key, at_ms)

    def first_seen(self, key: DedupKey, at_ms: int) -> bool:
        """Add ``key`` unless already in the window; True when it was not (not a duplicate)."""
        at = self._at
        if key in at:
            return False
        if self._max_keys is not None and len(at) >= self._max_keys:
            _, oldest = self._order.popleft()
            del at[oldest]
            self.evicted_early += 1
        at[key] = at_ms
        self._order.append((at_ms, key))
        return True

    def evict(self, now_ms: int) -> int:
        """Forget keys accepted before ``now_ms - window``; return how many."""
        cutoff = now_ms - self._window_ms
        evicted = 0
        while self._order and self._order[0][0] < cutoff:
            _, key = self._order.popleft()
            del self._at[key]
            evicted += 1
        return evicted


class Accumulator:
    """Collects records until a batch is full by count or bytes, or old enough, or the
    partition has nothing more for now."""

    def __init__(self, config: ConsumerConfig) -> None:
        self._max_events = config.batch_max_events
        self._max_bytes = config.batch_max_bytes
        self._max_wait_s = config.batch_max_wait_s
        self.records: list[SourceRecord] = []
        self.bytes = 0
        self.started: float | None = None

    @property
    def room(self) -> int:
        """How many more records fit by count."""
        return max(self._max_events - len(self.records), 0)

    def add(self, records: Sequence[SourceRecord], now: float, nbytes: int | None = None) -> None:
        """Add ``records``; ``nbytes``, when given, is their total ``size``."""
        if not records:
            return
        if self.started is None:
            self.started = now
        self.records.extend(records)
        self.bytes += sum(record.size for record in records) if nbytes is None else nbytes

    def full(self, now: float, *, drained: bool = False) -> bool:
        """Whether to flush now. ``drained``: the last read found no new record (the partition
        is caught up), so waiting longer would only add latency."""
        if not self.records:
            return False
        return (drained or len(self.records) >= self._max_events
                or self.bytes >= self._max_bytes
                or (self.started is not None and now - self.started >= self._max_wait_s))

    def take(self) -> list[SourceRecord]:
        records, self.records, self.bytes, self.started = self.records, [], 0, None
        return records


class BatchPlan(msgspec.Struct, frozen=True):
    """What to do with one batch of records: the sink batch and the dead letters."""

    batch: SinkBatch
    dead_letters: list[DeadLetter]
    consumed: int
    valid: int
    duplicates: int
    already_dead_lettered: int  # invalid records a predecessor dead-lettered already
    rejected: dict[str, int]    # dead letters by reason code


def batch_range(next_from: int | None, records: Sequence[SourceRecord]) -> tuple[int, int]:
    """``(from_offset, to_offset)`` of the batch made of ``records``.

    ``next_from`` is where the previous batch ended (the warehouse's committed offset after a
    start), or None for a partition never written, which then starts at its first record.
    """
    if not records:
        raise ValueError("an empty batch has no offset range")
    first, last = records[0].offset, records[-1].offset
    from_offset = first if next_from is None else next_from
    offsets = list(map(_offset_of, records))
    if first < from_offset or not all(map(operator.lt, offsets, islice(offsets, 1, None))):
        raise EventrayError(
            f"records out of order: first={first} from_offset={from_offset} last={last}")
    return from_offset, last + 1


def plan_batch(
    records: Sequence[SourceRecord], *, topic: str, partition: int, next_from: int | None,
    codec: EventCodec, rules: ValidationRules, now: datetime, window: DedupWindow,
    recovered: Recovered = NOTHING_RECOVERED, now_ms: int | None = None,
) -> BatchPlan:
    """Decode, validate and de-duplicate ``records`` (ascending offsets) into a ``BatchPlan``.

    Records at or below ``recovered.watermark`` were processed before a restart: those in
    ``recovered.offsets`` are already dead-lettered and skipped; the others were valid then and
    stay valid (the first verdict wins, so a time-based rule cannot flip them). An event whose
    key is in ``window`` is a duplicate: neither written nor dead-lettered. The keys of new
    rows and dead letters are added to ``window``, so duplicates inside the batch count too.
    A record that breaks the contract has no trustworthy key and is always dead-lettered.
    """
    from_offset, to_offset = batch_range(next_from, records)
    arrival_ms = now_ms if now_ms is not None else int(now.timestamp() * 1000)
    letters: list[DeadLetter] = []
    rejected: dict[str, int] = {}

    def dead_letter(record: SourceRecord, reason: str) -> None:
        headers = tuple((k, v) for k, v in record.headers if v is not None)
        letters.append(DeadLetter(source_offset=record.offset, key=record.key,
                                  value=record.value or b"", reason=reason,
                                  headers=headers))
        code = reason_code(reason)
        rejected[code] = rejected.get(code, 0) + 1

    decoded, events, verdicts, already = _decode_and_check(
        records, topic=topic, partition=partition, codec=codec, rules=rules, now=now,
        window=window, recovered=recovered, arrival_ms=arrival_ms, dead_letter=dead_letter)
    rows: list[EventRow] = []
    add_row = rows.append
    duplicates = 0
    first_seen = window.first_seen
    for record, event, reason in zip(decoded, events, verdicts, strict=True):
        accepted_at_ms = record.accepted_at_ms
        if not first_seen((event.account_id, event.event_id),
                          arrival_ms if accepted_at_ms is None else accepted_at_ms):
            duplicates += 1
        elif reason is not None:
            dead_letter(record, reason)
        else:
            add_row(row_from_event(event, topic=topic, partition=partition,
                                   offset=record.offset, request_id=record.request_id,
                                   accepted_at_ms=accepted_at_ms))
    letters.sort(key=lambda letter: letter.source_offset)  # contract failures were found first
    batch = SinkBatch(topic=topic, partition=partition, from_offset=from_offset,
                      to_offset=to_offset, rows_json=encode_rows(rows), row_count=len(rows))
    return BatchPlan(batch=batch, dead_letters=letters, consumed=len(records), valid=len(rows),
                     duplicates=duplicates, already_dead_lettered=already, rejected=rejected)


def _decode_and_check(
    records: Sequence[SourceRecord], *, topic: str, partition: int, codec: EventCodec,
    rules: ValidationRules, now: datetime, window: DedupWindow, recovered: Recovered,
    arrival_ms: int, dead_letter: Callable[[SourceRecord, str], None],
) -> tuple[list[SourceRecord], list[Event], list[str | None], int]:
    """Decode ``records`` (dead-lettering contract failures) and apply the business rules:
    ``(records that decoded, their events, their verdicts (None: valid), records skipped as
    already dead-lettered)``."""
    already = 0
    todo: list[SourceRecord] = []  # the records not dead-lettered before a restart
    watermark = recovered.watermark
    for record in records:
        if record.offset <= watermark and recovered.already(record.offset):
            already += 1
            key = event_key(record.value)
            if key is not None:  # a later retry of it is a duplicate
                window.add(key, record.accepted_at_ms or arrival_ms)
            continue
        todo.append(record)
    events, positions, failures = codec.decode_each(
        [record.value if record.value is not None else b"" for record in todo])
    for at, exc in failures:
        _contract_failure(todo[at], describe_error(exc), replayed=todo[at].offset <= watermark,
                          topic=topic, partition=partition, dead_letter=dead_letter)
    decoded = [todo[at] for at in positions]
    # Positions in ``events`` of the fresh ones: a replayed record's first verdict was valid,
    # so it stays valid.
    fresh_at = [at for at, record in enumerate(decoded) if record.offset > watermark]
    fresh = [events[at] for at in fresh_at]
    if len(fresh) == len(events):
        return decoded, events, validate_batch(events, rules, now), already
    verdicts: list[str | None] = [None] * len(events)
    for at, reason in zip(fresh_at, validate_batch(fresh, rules, now), strict=True):
        verdicts[at] = reason
    return decoded, events, verdicts, already


def _contract_failure(record: SourceRecord, error: FieldError, *, replayed: bool, topic: str,
                      partition: int, dead_letter: Callable[[SourceRecord, str], None]) -> None:
    """Dead-letter a record that breaks the contract; below the watermark that is corruption:
    it was valid (or dead-lettered, and skipped) the first time."""
    if replayed:
        raise EventrayError(
            f"{topic}/{partition} offset {record.offset} breaks the contract "
            f"({error.field}: {error.reason}) but is not in the dead-letter topic below "
            "its watermark")
    dead_letter(record, f"{CONTRACT_REASON}: {error.field}: {error.reason}")


class RateMeter:
    """Rows per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = _RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self.total = 0

    def add(self, rows: int, now: float) -> None:
        self.total += rows
        self._samples.append((now, self.total))
        while self._samples and self._samples[0][0] < now - self._window_s:
            self._samples.popleft()

    def rate(self, now: float) -> float:
        if not self._samples:
            return 0.0
        first_t, first_total = self._samples[0]
        span = max(now - first_t, 1.0)
        return (self.total - first_total) / span if len(self._samples) > 1 else 0.0


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


class _InFlight:
    """The one batch being written."""

    def __init__(self, plan: BatchPlan, ref: Any, sent_at: float) -> None:
        self.plan = plan
        self.ref = ref
        self.sent_at = sent_at


class PartitionConsumer:
    """Consumes one partition into its sink; the loop starts with the actor (and restarts)."""

    def __init__(self, config: PipelineConfig, partition: int) -> None:
        import ray

        self._config = config
        self._topic = config.topics.events
        self._partition = partition
        self._name = consumer_name(self._topic, partition)
        self._sink_name = sink_name(sink_index(partition, config.sink.pool_size))
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
        self._thread = threading.Thread(target=self._run, name=f"eventray-{self._name}",
                                        daemon=True)
        self._thread.start()

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
                sessions=self._sessions, last_error=self._last_error,
            )

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
            except Exception as exc:  # recorded, logged, session rebuilt from the warehouse
                with self._lock:
                    self._running = False
                    self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("consumer session failed name=%s: restarting from the "
                              "warehouse offset in %.1fs", self._name, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
        with self._lock:
            self._running = False

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

    def _note_retry(self, exc: BaseException, backoff: float) -> None:
        self._sink_handle = None  # the supervisor may have replaced the actor: look it up again
        with self._lock:
            self._last_error = f"{type(exc).__name__}: {exc}"
        log.warning("sink unavailable name=%s sink=%s retry_in=%.1fs: %s",
                    self._name, self._sink_name, backoff, exc)

    def _session(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        cfg = self._config
        topic, partition = self._topic, self._partition
        committed: int | None = self._call_sink(
            lambda s: s.committed_offset.remote(topic, partition))
        now_ms = time.time_ns() // 1_000_000
        max_keys = cfg.consumer.dedup_max_keys
        window = DedupWindow(cfg.consumer.dedup_window_s, max_keys)
        since_ms = now_ms - int(cfg.consumer.dedup_window_s * 1000)
        newest_first = self._call_sink(
            lambda s: s.recent_keys.remote(topic, partition, since_ms, max_keys))
        window.load(reversed(newest_first), now_ms)
        dlq = DeadLetterProducer(cfg.kafka, cfg.topics.dead_letter, topic, partition)
        consumer: Any = None
        try:
            recovered = dlq.start(floor=committed if committed is not None else 0)
            window.load(read_recent_keys(cfg.kafka, cfg.topics.dead_letter, partition,
                                         since_ms), now_ms)
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
            start = committed if committed is not None else OFFSET_BEGINNING
            consumer.assign([TopicPartition(topic, partition, start)])
            with self._lock:
                self._committed = self._position = committed
                self._running = True
                self._last_error = None
            log.info("consumer started name=%s node=%s committed=%s dedup_keys=%d "
                     "dlq_watermark=%d", self._name, self._node_id, committed, len(window),
                     recovered.watermark)
            self._loop(consumer, dlq, window, recovered, committed)
        finally:
            if consumer is not None:
                consumer.close()
            dlq.close()

    def _loop(self, consumer: Any, dlq: DeadLetterProducer, window: DedupWindow,
              recovered: Recovered, committed: int | None) -> None:
        cfg = self._config
        codec = EventCodec()
        acc = Accumulator(cfg.consumer)
        reader = RecordReader()
        next_from = committed
        pending: _InFlight | None = None
        while not self._stop.is_set():
            if pending is not None and _ready(pending.ref):
                self._finish(pending, consumer)
                pending = None
            msgs = consumer.consume(num_messages=max(acc.room, 1),
                                    timeout=cfg.consumer.poll_timeout_s)
            records, nbytes = self._records(reader, msgs)
            acc.add(records, time.monotonic(), nbytes)
            if not acc.full(time.monotonic(), drained=not records):
                continue
            now = datetime.now(UTC)
            now_ms = int(now.timestamp() * 1000)
            window.evict(now_ms)
            plan = plan_batch(acc.take(), topic=self._topic, partition=self._partition,
                              next_from=next_from, codec=codec, rules=cfg.rules, now=now,
                              window=window, recovered=recovered, now_ms=now_ms)
            next_from = plan.batch.to_offset
            self._metrics.count(plan.consumed, plan.valid, plan.duplicates, plan.rejected)
            if window.evicted_early:
                self._note_window_full(window)
            # Dead letters are committed before the batch's rows: a crash in between replays
            # the batch, and the DLQ watermark keeps it from dead-lettering twice.
            self._publish(dlq, plan.dead_letters)
            if pending is not None:
                self._finish(pending, consumer)
            pending = self._send(plan)
        if pending is not None:
            self._finish(pending, consumer)

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

    def _publish(self, dlq: DeadLetterProducer, letters: Sequence[DeadLetter]) -> None:
        backoff = 0.5
        while True:
            try:
                produced = dlq.publish(letters)
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
        from ray.exceptions import RayActorError

        backoff = self._config.sink.retry_backoff_s
        while True:
            try:
                return self._sink().write.remote(batch)
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
            except OffsetGapError:
                raise  # our position is wrong: the session restarts from the warehouse
            except (RayActorError, SinkError) as exc:
                attempts += 1
                self._note_retry(exc, backoff)
                if isinstance(exc, SinkError) and attempts >= self._config.sink.retry_attempts:
                    raise
            time.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            pending.ref = self._submit(batch)
        self._metrics.flushed(result.rows_written, result.seconds)
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
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high is not None and high >= 0:
                self._metrics.set_lag(max(high - offset, 0))
        except KafkaException as exc:
            # Only lag tools read the group offset; the warehouse holds the real position.
            err = exc.args[0]
            log.warning("group offset commit failed name=%s offset=%d code=%s: %s",
                        self._name, offset, err.name(), err.str())


def _ready(ref: Any) -> bool:
    import ray

    done, _ = ray.wait([ref], timeout=0)
    return bool(done)


def partition_consumer_actor() -> Any:
    """The Ray actor class (``ray.remote`` applied lazily so importing needs no Ray)."""
    import ray

    return ray.remote(PartitionConsumer)
