"""Exactly-once dead-lettering of one source partition.

Source partition p dead-letters to partition p of the dead-letter topic, through a transactional
producer whose ``transactional.id`` belongs to that partition (``eventray-dlq-<topic>-<p>``).
``init_transactions()`` at start fences any zombie predecessor and aborts its open transaction;
each batch's invalid records are produced in one transaction, committed before the batch's rows
go to the warehouse. The same transaction carries the records the batch hands to another
partition after the topic grew (``actors.partition_moves``).

After a restart the consumer re-reads from the warehouse's committed offset, so records whose
dead letters were already committed come round again. ``recover()`` reads the tail of DLQ
partition p (``read_committed``) back to the committed offset and returns the source offsets
already dead-lettered there: those are not produced again, and a record in that range that is NOT
among them was valid the first time (a batch dead-letters all its invalid records at once), so
the consumer keeps the first verdict even if a time-based rule would now decide otherwise.

Both recovery reads (``read_recovered`` back to the committed offset, ``read_recent_keys`` over
the retry window's day of dead letters) stream the partition: a record is handed on as it is
read, never kept in a list, and a read fails only when it stops making progress (nothing read
and the end not reached for ``stall_s``), not after a fixed time, however long the tail. A
long read logs its progress; ``read_recent_keys`` resumes after its last record when the broker
connection fails midway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, Final

import msgspec

from actors.config import KafkaConnection
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_DLQ_REASON,
    HEADER_DLQ_SOURCE_OFFSET,
    HEADER_DLQ_SOURCE_PARTITION,
    HEADER_DLQ_SOURCE_TOPIC,
    HEADER_FORWARDED_FROM,
    HEADER_REPLAY_OF,
)
from actors.exceptions import KafkaDeliveryError, ProducerFencedError
from actors.records import Forward
from actors.retry_window import DecidedKey, replay_key

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
# Headers as carried on a record: a tuple, which the cyclic GC stops tracking (a list it does not).
RecordHeaders = tuple[tuple[str, bytes], ...]

_RECOVERY_SPAN: Final = 1024  # DLQ records read back first; multiplied while not far enough
# A recovery read that gets neither a record nor the partition's end for this long has
# stalled (ConsumerConfig.recovery_stall_s for the consumer's own reads).
RECOVERY_STALL_S: Final = 30.0
# Times a stalled or failed tail read resumes after its last record before it gives up.
_RECOVERY_ATTEMPTS: Final = 5
_PROGRESS_LOG_S: Final = 10.0
# librdkafka prefetches up to 64 MB per partition by default; a recovery reader keeps half
# (measured, a 300,000-record tail of 200 MB: 0.9 s with 64 MB, 1.1 s with 32, 4.0 s with 8).
_RECOVERY_QUEUE_KB: Final = 32768
_KAFKA_TIMEOUT_S: Final = 30.0
# librdkafka's _FENCED (-144) and the broker's PRODUCER_FENCED (90), INVALID_PRODUCER_EPOCH
# (47): a producer with our transactional.id was initialised after ours.
_FENCED_CODES: Final = frozenset({-144, 90, 47})


class DeadLetter(msgspec.Struct, frozen=True, gc=False):
    """One invalid record, with why it was refused."""

    source_offset: int
    key: bytes | None
    value: bytes
    reason: str
    headers: RecordHeaders = ()  # the source record's headers, carried over


class Recovered(msgspec.Struct, frozen=True):
    """What the DLQ partition already holds for the source partition.

    ``watermark`` is the highest source offset ever dead-lettered (-1 when none);
    ``offsets`` the dead-lettered source offsets at or after the floor ``recover`` was given.
    """

    watermark: int
    offsets: frozenset[int]

    def already(self, offset: int) -> bool:
        return offset in self.offsets


NOTHING_RECOVERED: Final = Recovered(watermark=-1, offsets=frozenset())

RecordsRead = Callable[[int], None]
"""Called with the number of records a tail read has read so far (a consumer's status)."""


def transactional_id(source_topic: str, partition: int) -> str:
    return f"eventray-dlq-{source_topic}-{partition}"


def dead_letter_headers(letter: DeadLetter, source_topic: str, partition: int) -> Headers:
    """The source headers plus the reason and the source coordinates."""
    own = {HEADER_DLQ_REASON, HEADER_DLQ_SOURCE_TOPIC, HEADER_DLQ_SOURCE_PARTITION,
           HEADER_DLQ_SOURCE_OFFSET}
    headers = [(k, v) for k, v in letter.headers if k not in own]
    headers += [
        (HEADER_DLQ_REASON, letter.reason.encode()),
        (HEADER_DLQ_SOURCE_TOPIC, source_topic.encode()),
        (HEADER_DLQ_SOURCE_PARTITION, str(partition).encode()),
        (HEADER_DLQ_SOURCE_OFFSET, str(letter.source_offset).encode()),
    ]
    return headers


def source_offset_of(headers: Sequence[tuple[str, bytes | None]] | None) -> int | None:
    """The ``eventray-dlq-source-offset`` header of a dead letter, if present."""
    for key, value in headers or ():
        if key == HEADER_DLQ_SOURCE_OFFSET and value is not None:
            return int(value)
    return None


class DeadLetterProducer:
    """The transactional producer of one source partition. Build and use it in one process."""

    def __init__(self, conn: KafkaConnection, dlq_topic: str, source_topic: str,
                 partition: int) -> None:
        self._conn = conn
        self._dlq_topic = dlq_topic
        self._source_topic = source_topic
        self._partition = partition
        self._producer: Any = None
        self._watermark = -1
        self._errors: list[Any] = []

    @property
    def watermark(self) -> int:
        """Highest source offset dead-lettered and committed so far (-1 if none)."""
        return self._watermark

    def start(self, floor: int) -> Recovered:
        """Fence predecessors, then read back what they committed at or after ``floor``."""
        from confluent_kafka import KafkaException, Producer

        conf = self._conn.client_config()
        conf.update({
            "transactional.id": transactional_id(self._source_topic, self._partition),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "client.id": f"eventray-dlq-{self._partition}",
        })
        self._producer = Producer(conf)
        try:
            # Fences a zombie with the same transactional.id and aborts its open transaction,
            # so the read_committed tail read below is final.
            self._producer.init_transactions(_KAFKA_TIMEOUT_S)
        except KafkaException as exc:
            raise _kafka_error("init_transactions failed", exc) from exc
        recovered = read_recovered(self._conn, self._dlq_topic, self._partition, floor)
        self._watermark = recovered.watermark
        log.info("dead-letter producer ready topic=%s partition=%d watermark=%d recovered=%d",
                 self._dlq_topic, self._partition, recovered.watermark, len(recovered.offsets))
        return recovered

    def publish(self, letters: Sequence[DeadLetter], forwards: Sequence[Forward] = ()) -> int:
        """Produce ``letters`` and ``forwards`` in one transaction; return how many letters
        were produced.

        Letters at or below the watermark were committed by a predecessor and are skipped;
        forwards are always produced (one produced before is a duplicate at its partition).
        Raises ``KafkaDeliveryError`` (with the librdkafka code) when the transaction did not
        commit; it was aborted then, so the same letters can be published again.
        """
        from confluent_kafka import KafkaException

        fresh = [letter for letter in letters if letter.source_offset > self._watermark]
        if not fresh and not forwards:
            return 0
        producer = self._producer
        if producer is None:
            raise KafkaDeliveryError("the dead-letter producer is not started")
        self._errors = []
        try:
            producer.begin_transaction()
            for letter in fresh:
                self._produce(letter)
            for forward in forwards:
                self._forward(forward)
            producer.commit_transaction(_KAFKA_TIMEOUT_S)
        except KafkaException as exc:
            err = exc.args[0]
            if err.txn_requires_abort():
                try:
                    producer.abort_transaction(_KAFKA_TIMEOUT_S)
                except KafkaException as abort_exc:
                    raise _kafka_error("aborting a dead-letter transaction failed",
                                       abort_exc) from abort_exc
            raise _kafka_error("dead-letter transaction failed", exc) from exc
        if self._errors:  # commit_transaction raises on failed deliveries; belt and braces
            err = self._errors[0]
            raise KafkaDeliveryError(f"dead letter not delivered: {err.str()}", code=err.code(),
                                     retriable=err.retriable())
        if fresh:
            self._watermark = max(letter.source_offset for letter in fresh)
        return len(fresh)

    def _forward(self, forward: Forward) -> None:
        """``forward``'s record to its partition of the source topic, as it came (key, value,
        headers with the accept time) plus where it was first."""
        record = forward.record
        headers = [(k, v) for k, v in record.headers
                   if v is not None and k != HEADER_FORWARDED_FROM]
        headers.append((HEADER_FORWARDED_FROM, f"{self._partition}:{record.offset}".encode()))
        self._send(self._source_topic, forward.partition, record.key, record.value, headers)

    def _produce(self, letter: DeadLetter) -> None:
        self._send(self._dlq_topic, self._partition, letter.key, letter.value,
                   dead_letter_headers(letter, self._source_topic, self._partition))

    def _send(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
              headers: Headers) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, partition=partition,
                                       headers=headers, on_delivery=self._on_delivery)
            except BufferError:
                self._producer.poll(0.1)  # local queue full: serve delivery reports, retry
            else:
                return

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(err)

    def close(self) -> None:
        """Drop the producer (an open transaction is aborted by the next ``init_transactions``)."""
        if self._producer is not None:
            left = self._producer.flush(5.0)
            self._producer = None
            if left:
                log.warning("dead-letter producer closed with unsent records count=%d", left)


def recovered_from(source_offsets: Sequence[int], floor: int) -> Recovered:
    """``Recovered`` from the source offsets of a dead-letter tail that reaches below
    ``floor`` (or the start of the log)."""
    return Recovered(watermark=max(source_offsets, default=-1),
                     offsets=frozenset(o for o in source_offsets if o >= floor))


def read_recovered(conn: KafkaConnection, dlq_topic: str, partition: int,
                   floor: int) -> Recovered:
    """Read DLQ partition ``partition`` back from its end until a source offset below ``floor``
    (or the start of the log) and return what was dead-lettered (see ``Recovered``); only the
    offsets at or after ``floor`` are kept, whatever it reads."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(_recovery_consumer_config(conn, dlq_topic))
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(dlq_topic, partition),
                                                   timeout=_KAFKA_TIMEOUT_S)
        if high <= low:
            return NOTHING_RECOVERED
        span = _RECOVERY_SPAN
        while True:
            start = max(low, high - span)
            recovered, lowest = _recovered_since(consumer, dlq_topic, partition, start, floor)
            if start == low or (lowest is not None and lowest < floor):
                return recovered
            # Only aborted records/markers, or all at/after the floor: look further back.
            span *= 4
    except KafkaException as exc:
        raise _kafka_error(f"reading dead-letter partition {partition} failed", exc) from exc
    finally:
        consumer.close()


def _recovered_since(consumer: Any, topic: str, partition: int, start: int,
                     floor: int) -> tuple[Recovered, int | None]:
    """``recovered_from`` the committed dead letters from ``start`` to the partition's end, and
    the lowest source offset among them (None: none), counted as they are read."""
    watermark, lowest = -1, None
    offsets: set[int] = set()
    for msg in _read_to_end(consumer, topic, partition, start):
        offset = source_offset_of(msg.headers())
        if offset is None:
            continue
        watermark = max(watermark, offset)
        lowest = offset if lowest is None else min(lowest, offset)
        if offset >= floor:
            offsets.add(offset)
    return Recovered(watermark=watermark, offsets=frozenset(offsets)), lowest


def _read_to_end(consumer: Any, topic: str, partition: int, start: int, *,
                 stall_s: float = RECOVERY_STALL_S) -> Iterator[Any]:
    """The committed records of ``topic``/``partition`` from ``start`` to its end, as they are
    read. ``KafkaDeliveryError`` (retriable) when nothing is read and the end not reached for
    ``stall_s`` (time the caller spends between records does not count); none for a long tail
    that keeps coming."""
    from confluent_kafka import KafkaError, TopicPartition

    consumer.assign([TopicPartition(topic, partition, start)])
    idle = 0.0  # seconds spent waiting on the broker since the last record
    try:
        while True:
            asked = time.monotonic()
            msgs = consumer.consume(num_messages=1000, timeout=0.5)
            if not msgs:
                idle += time.monotonic() - asked
                if idle > stall_s:
                    raise KafkaDeliveryError(
                        f"reading {topic}/{partition} made no progress for {stall_s:g}s "
                        f"(from offset {start})", retriable=True)
                continue
            idle = 0.0
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return
                    raise KafkaDeliveryError(f"reading {topic}/{partition}: {err.str()}",
                                             code=err.code(), retriable=err.retriable())
                yield msg
    finally:
        consumer.unassign()


def _read_resuming(consumer: Any, topic: str, partition: int, start: int, *, stall_s: float,
                   progress: RecordsRead | None) -> Iterator[Any]:
    """``_read_to_end``, resumed after the last record read when it fails retriably (a stall,
    a lost broker connection), up to ``_RECOVERY_ATTEMPTS`` times in a row; logs its progress
    every ``_PROGRESS_LOG_S``."""
    next_offset = start
    read = failures = 0
    started = logged = time.monotonic()
    while True:
        try:
            for msg in _read_to_end(consumer, topic, partition, next_offset, stall_s=stall_s):
                next_offset = msg.offset() + 1
                read += 1
                failures = 0
                if read % 1000 == 0:
                    if progress is not None:
                        progress(read)
                    if time.monotonic() - logged >= _PROGRESS_LOG_S:
                        logged = time.monotonic()
                        log.info("reading dead-letter tail topic=%s partition=%d read=%d "
                                 "offset=%d elapsed_s=%.0f", topic, partition, read,
                                 next_offset, logged - started)
                yield msg
        except KafkaDeliveryError as exc:
            failures += 1
            if not exc.retriable or failures >= _RECOVERY_ATTEMPTS:
                raise
            log.warning("dead-letter tail read failed, resuming topic=%s partition=%d "
                        "offset=%d read=%d attempt=%d: %s", topic, partition, next_offset,
                        read, failures, exc)
            time.sleep(min(0.5 * 2 ** failures, 10.0))
            continue
        if progress is not None:
            progress(read)
        return


class _EventKey(msgspec.Struct):
    """The identity of a dead-lettered event (other fields ignored)."""

    account_id: str
    event_id: str


_KEY_DECODER: Final = msgspec.json.Decoder(_EventKey)


def event_key(value: bytes | None) -> tuple[str, str] | None:
    """``(account_id, event_id)`` of a record value, None when it has no such identity."""
    if not value:
        return None
    try:
        key = _KEY_DECODER.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None  # broke the contract: it has no event identity to de-duplicate on
    return key.account_id, key.event_id


def replay_of_header(headers: Sequence[tuple[str, bytes | None]] | None) -> str | None:
    """The ``eventray-replay-of`` header of a record, if present."""
    for key, value in headers or ():
        if key == HEADER_REPLAY_OF and value is not None:
            return value.decode("utf-8", "replace")
    return None


def read_recent_keys(conn: KafkaConnection, dlq_topic: str, partition: int,
                     since_ms: int, *, stall_s: float = RECOVERY_STALL_S,
                     progress: RecordsRead | None = None) -> Generator[DecidedKey, None, None]:
    """Event keys dead-lettered on ``partition`` since ``since_ms`` (epoch ms, dead-letter
    time, which is never before the accept time), not ``written``, and the replay key
    (``replay_key``) of each dead letter that was a replay failing again; each with its
    source offset and accept time (``decided_keys``), in the order they were dead-lettered.

    A generator: the tail is read as the caller takes keys (the consumer streams them into its
    window), in bounded memory, without a deadline for the whole tail (``_read_to_end``);
    ``progress`` is told how many records were read.

    With the warehouse's recent keys they rebuild the consumer's dedup window
    (``actors.window_rebuild``), so a client's retry of an invalid event is not dead-lettered
    twice, nor a dead letter replayed twice, across restarts too.
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(_recovery_consumer_config(conn, dlq_topic))
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(dlq_topic, partition),
                                                   timeout=_KAFKA_TIMEOUT_S)
        if high <= low:
            return
        found = consumer.offsets_for_times([TopicPartition(dlq_topic, partition, since_ms)],
                                           timeout=_KAFKA_TIMEOUT_S)
        start = found[0].offset
        if start < 0:  # no record at or after since_ms
            return
        for msg in _read_resuming(consumer, dlq_topic, partition, max(start, low),
                                  stall_s=stall_s, progress=progress):
            yield from decided_keys(msg.value(), msg.headers(), msg.timestamp()[1])
    except KafkaException as exc:
        raise _kafka_error(f"reading dead-letter partition {partition} failed", exc) from exc
    finally:
        consumer.close()


def decided_keys(value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None,
                 timestamp_ms: int) -> list[DecidedKey]:
    """What a dead letter put in the retry window: its event key (not written), when its value
    has one, and its replay key when it replays another dead letter; at its source offset and
    accept time (the header the consumer stamped; for older dead letters their own time)."""
    offset: int | None = None
    accepted = timestamp_ms
    replay_of: str | None = None
    for name, raw in headers or ():
        if raw is None:
            continue
        if name == HEADER_DLQ_SOURCE_OFFSET:
            offset = int(raw)
        elif name == HEADER_ACCEPTED_AT_MS and raw.isdigit():
            accepted = int(raw)
        elif name == HEADER_REPLAY_OF:
            replay_of = raw.decode("utf-8", "replace")
    if offset is None:
        return []  # not one of ours
    keys: list[DecidedKey] = []
    if replay_of is not None:
        keys.append(DecidedKey(offset, accepted, replay_key(replay_of)))
    key = event_key(value)
    if key is not None:
        keys.append(DecidedKey(offset, accepted, key, written=False))
    return keys


def _kafka_error(message: str, exc: Any) -> KafkaDeliveryError:
    err = exc.args[0] if exc.args else None
    if err is None or not hasattr(err, "code"):
        return KafkaDeliveryError(f"{message}: {exc}")
    kind = ProducerFencedError if err.code() in _FENCED_CODES else KafkaDeliveryError
    return kind(f"{message}: {err.str()}", code=err.code(), retriable=err.retriable())


def _recovery_consumer_config(conn: KafkaConnection, dlq_topic: str) -> dict[str, Any]:
    """A consumer that sees only committed dead letters (aborted transactions are skipped)."""
    conf = conn.client_config()
    conf.update({
        "group.id": f"eventray-dlq-recovery-{dlq_topic}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "queued.max.messages.kbytes": _RECOVERY_QUEUE_KB,
    })
    return conf
