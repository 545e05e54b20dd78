"""Replaying dead letters: produce them back to the events topic, then see what became of them.

``replay_dead_letters`` produces each selected dead letter to its source partition of the events
topic with an idempotent ``acks=all`` producer, every delivery report checked. Each replay
carries ``eventray-replay-of: <dlq partition>:<dlq offset>`` (``dlq_select.replay_headers``),
which the partition's consumer de-duplicates on (``actors.batch_plan``): a dead letter replayed
twice, or replayed again after a consumer restart, lands once. Running a replay again after a
failed delivery is therefore safe.

``replay_outcomes`` waits until the pipeline has committed past the replayed offsets and tells,
for each replay, whether it became a row, went back to the dead-letter topic (with its new
reason), or was dropped as a duplicate.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import msgspec

from actors.config import KafkaConnection, SnowflakeConfig
from actors.dlq_reader import DeadLetterReader
from actors.dlq_select import DeadLetterFilter, DeadLetterRecord, replay_headers
from actors.exceptions import EventrayError, KafkaDeliveryError, SinkError
from actors.warehouse import warehouse_sql

# (replays delivered or failed so far, replays to deliver)
ProgressCallback = Callable[[int, int], None]

_DELIVERY_TIMEOUT_S: Final = 60.0
# Dead letters of replays are looked for from this long before the replay (clock skew between
# this machine and the consumers' record timestamps).
_CLOCK_SKEW_MS: Final = 5 * 60 * 1000


class Replayed(msgspec.Struct, frozen=True):
    """A dead letter produced back to the events topic, where it landed."""

    dead_letter: str  # <dlq partition>:<dlq offset>
    partition: int
    offset: int


class ReplayFailure(msgspec.Struct, frozen=True):
    """A dead letter whose replay Kafka did not acknowledge."""

    dead_letter: str
    error: str
    code: int | None


class ReplayResult(msgspec.Struct, frozen=True):
    replayed_at_ms: int
    replayed: list[Replayed]
    failed: list[ReplayFailure]


def replay_dead_letters(conn: KafkaConnection, events_topic: str,
                        records: Sequence[DeadLetterRecord], *,
                        progress: ProgressCallback | None = None,
                        delivery_timeout_s: float = _DELIVERY_TIMEOUT_S) -> ReplayResult:
    """Produce ``records`` to ``events_topic``, each to its source partition; return every
    delivery report. Raises ``KafkaDeliveryError`` when reports are still missing after
    the delivery timeout (nothing is ever left unaccounted for)."""
    from confluent_kafka import Producer

    conf = conn.client_config()
    conf.update({
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "delivery.timeout.ms": int(delivery_timeout_s * 1000),
        "client.id": "eventray-dlq-replay",
    })
    producer = Producer(conf)
    replayed_at_ms = time.time_ns() // 1_000_000
    replayed: list[Replayed] = []
    failed: list[ReplayFailure] = []
    total = len(records)

    def on_delivery(dead_letter: str, err: Any, msg: Any) -> None:
        if err is not None:
            failed.append(ReplayFailure(dead_letter, err.str(), err.code()))
        else:
            replayed.append(Replayed(dead_letter, msg.partition(), msg.offset()))
        if progress is not None:
            progress(len(replayed) + len(failed), total)

    for record in records:
        headers: list[tuple[str, str | bytes | None]] = list(
            replay_headers(record, replayed_at_ms))
        callback = functools.partial(on_delivery, str(record.id))
        while True:
            try:
                producer.produce(events_topic, key=record.key, value=record.value,
                                 partition=record.replay_partition, headers=headers,
                                 on_delivery=callback)
            except BufferError:
                producer.poll(0.1)  # local queue full: serve delivery reports, retry
            else:
                break
        producer.poll(0)
    left = producer.flush(delivery_timeout_s + 10.0)
    if left:
        raise KafkaDeliveryError(
            f"{left} of {total} replays got no delivery report in {delivery_timeout_s:g}s; "
            "running the replay again is safe (a dead letter replayed twice lands once)")
    replayed.sort(key=lambda r: (r.partition, r.offset))
    return ReplayResult(replayed_at_ms=replayed_at_ms, replayed=replayed, failed=failed)


# --------------------------------------------------------------------------- outcomes

Fate = Literal["written", "dead-lettered", "dropped"]


class ReplayOutcome(msgspec.Struct, frozen=True):
    """What the pipeline made of one replay."""

    dead_letter: str
    partition: int
    offset: int
    fate: Fate  # a row; back in the dead-letter topic; dropped as a duplicate
    new_dead_letter: str | None = None  # where it went back to, when dead-lettered
    reason: str | None = None


def classify_outcomes(replayed: Sequence[Replayed], rows: set[tuple[int, int]],
                      dead_letters: Sequence[DeadLetterRecord]) -> list[ReplayOutcome]:
    """The fate of each replay, given the events-topic ``(partition, offset)`` of the rows and
    the dead letters (of the events topic) found for the replayed offsets. A replay that is
    neither was dropped as a duplicate: its dead letter was replayed before, or its event was
    written meanwhile."""
    again = {(d.replay_partition, d.source_offset): d for d in dead_letters}
    outcomes: list[ReplayOutcome] = []
    for replay in replayed:
        at = (replay.partition, replay.offset)
        if at in rows:
            outcomes.append(ReplayOutcome(replay.dead_letter, *at, fate="written"))
        elif at in again:
            letter = again[at]
            outcomes.append(ReplayOutcome(replay.dead_letter, *at, fate="dead-lettered",
                                          new_dead_letter=str(letter.id),
                                          reason=letter.reason))
        else:
            outcomes.append(ReplayOutcome(replay.dead_letter, *at, fate="dropped"))
    return outcomes


def replay_outcomes(conn: KafkaConnection, warehouse: SnowflakeConfig, events_topic: str,
                    dlq_topic: str, result: ReplayResult, *, timeout_s: float,
                    poll_s: float = 1.0) -> list[ReplayOutcome]:
    """Wait (up to ``timeout_s``) until the warehouse's committed offset of each partition is
    past its replays, then classify them. Raises ``EventrayError`` on timeout, naming the
    partitions still behind (is the pipeline running?)."""
    import snowflake.connector
    from snowflake.connector import errors as sf_errors

    if not result.replayed:
        return []
    ends: dict[int, int] = {}  # partition -> the offset after its last replay
    for replay in result.replayed:
        ends[replay.partition] = max(ends.get(replay.partition, 0), replay.offset + 1)
    sql = warehouse_sql(warehouse)
    rows: set[tuple[int, int]] = set()
    try:
        session = snowflake.connector.connect(**warehouse.connect_kwargs(), paramstyle="qmark",
                                              autocommit=True)
        try:
            cursor = session.cursor()
            _wait_committed(cursor, sql.committed_offset, events_topic, ends,
                            timeout_s=timeout_s, poll_s=poll_s)
            for partition, end in ends.items():
                start = min(r.offset for r in result.replayed if r.partition == partition)
                cursor.execute(sql.rows_in_range, (events_topic, partition, start, end))
                rows.update((int(p), int(o)) for p, o in cursor.fetchall())
        finally:
            session.close()
    except sf_errors.Error as exc:
        raise SinkError(f"reading the replays' rows from the warehouse failed: {exc}") from exc
    offsets = {(r.partition, r.offset) for r in result.replayed}
    selection = DeadLetterFilter(partitions=frozenset(ends),
                                 since_ms=result.replayed_at_ms - _CLOCK_SKEW_MS)
    with DeadLetterReader(conn, dlq_topic) as reader:
        again = [d for d in reader.scan(selection)
                 if d.source_topic in (None, events_topic)
                 and (d.replay_partition, d.source_offset) in offsets]
    return classify_outcomes(result.replayed, rows, again)


def _wait_committed(cursor: Any, committed_sql: str, topic: str, ends: dict[int, int], *,
                    timeout_s: float, poll_s: float) -> None:
    """Until the warehouse's committed offset of each partition reaches ``ends``."""
    deadline = time.monotonic() + timeout_s
    while True:
        behind: dict[int, int | None] = {}
        for partition, end in ends.items():
            cursor.execute(committed_sql, (topic, partition))
            row = cursor.fetchone()
            committed = None if row is None or row[0] is None else int(row[0])
            if committed is None or committed < end:
                behind[partition] = committed
        if not behind:
            return
        if time.monotonic() > deadline:
            raise EventrayError(
                f"the pipeline did not commit past the replays in {timeout_s:g}s: "
                + ", ".join(f"partition {p} committed {c}, replays end at {ends[p]}"
                            for p, c in sorted(behind.items()))
                + " (is it running? see 'eventray status')")
        time.sleep(poll_s)
