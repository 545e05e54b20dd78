"""A consumer's start reads its retry window's day of dead letters as a stream (issue 12, item
5): into the window as they come, never all of them into a list first, and without a deadline
for the whole tail: a read fails only when it stops making progress, and resumes after its
last record when it does. Against the real broker.

Before, ``read_recent_keys`` returned a list of every key after holding every record of the
tail, all within one fixed 60 s deadline: a tail too long to read in 60 s failed every session
start, forever.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer
from conftest import TopicFactory

from actors.config import KafkaConnection
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_REQUEST_ID,
    EventCodec,
    PaymentBody,
    PaymentCaptured,
)
from actors.dead_letter import DeadLetter, dead_letter_headers, read_recent_keys
from actors.retry_window import DecidedKey
from actors.window_rebuild import stream_window
from cluster.local.kafka_broker import LocalKafka

pytestmark = pytest.mark.integration

T_MS = int(time.time() * 1000)
WINDOW_S = 24 * 3600.0


def fill_tail(conn: KafkaConnection, topic: str, count: int) -> int:
    """``count`` dead letters of source offsets 0.. as the consumer writes them, on partition
    0 of ``topic``; returns the bytes of their values and headers."""
    codec = EventCodec()
    producer = Producer({**conn.client_config(), "linger.ms": 20, "acks": "all",
                         "queue.buffering.max.messages": 200_000})
    size = 0
    for offset in range(count):
        value = codec.encode(PaymentCaptured(
            event_id=f"e-{offset}", account_id=f"acct-{offset % 97}",
            occurred_at=datetime.fromtimestamp(T_MS / 1000, UTC),
            body=PaymentBody(amount_minor=10**16, currency="EUR", merchant_id="m-1",
                             description="x" * 200)))
        letter = DeadLetter(offset, b"acct", value, "amount_above_max: too much",
                            ((HEADER_REQUEST_ID, b"r" * 32),
                             (HEADER_ACCEPTED_AT_MS, str(T_MS + offset).encode())))
        headers = dead_letter_headers(letter, "events", 0)
        size += len(value) + sum(len(k) + len(v) for k, v in headers)
        producer.produce(topic, value=value, key=b"acct", partition=0, headers=headers)
        producer.poll(0)
    assert producer.flush(60) == 0
    return size


@pytest.fixture
def tail(kafka_connection: KafkaConnection, topic_factory: TopicFactory) -> Iterator[str]:
    topic = topic_factory(partitions=1, prefix="dlq")
    yield topic


def test_the_tail_streams_into_the_window_in_bounded_memory(
        kafka_connection: KafkaConnection, tail: str) -> None:
    count = 40_000  # ~26 MB of values and headers
    tail_bytes = fill_tail(kafka_connection, tail, count)
    read: list[int] = []
    tracemalloc.start()
    try:
        window = stream_window(WINDOW_S, 100, since_ms=0, committed=count, table=[],
                               dead=read_recent_keys(kafka_connection, tail, 0, 0,
                                                     progress=read.append))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read[-1] == count  # every record of the tail was read
    assert (len(window), window.evicted_early) == (100, count - 100)
    assert window.seen(("acct-" + str((count - 1) % 97), f"e-{count - 1}"))
    # What the old list held: every record (values and headers) and every key. Now: the
    # window's 100 keys and a bounded batch of records at a time.
    assert peak < tail_bytes / 4, (peak, tail_bytes)


def test_a_long_tail_is_read_as_long_as_it_makes_progress(
        kafka_connection: KafkaConnection, tail: str) -> None:
    count = 5_000
    fill_tail(kafka_connection, tail, count)
    keys: list[DecidedKey] = []
    started = time.monotonic()
    for key in read_recent_keys(kafka_connection, tail, 0, 0, stall_s=0.2):
        if len(keys) in (1, count // 2):
            time.sleep(0.5)  # the window's side takes its time: not a stall of the read
        keys.append(key)
    assert [k.offset for k in keys] == list(range(count))
    assert time.monotonic() - started >= 1.0  # in all, five times what a stall may last


def test_a_read_that_stalls_resumes_after_its_last_record(
        kafka_connection: KafkaConnection, kafka_broker: LocalKafka, tail: str,
        caplog: pytest.LogCaptureFixture) -> None:
    count = 80_000  # ~50 MB: more than the reader's prefetch (32 MB), it needs the broker again
    fill_tail(kafka_connection, tail, count)
    pid = kafka_broker.pid
    assert pid is not None
    keys = read_recent_keys(kafka_connection, tail, 0, 0, stall_s=0.5)
    offsets = [next(keys).offset]
    os.kill(pid, signal.SIGSTOP)  # the broker stops answering mid-read
    resume = threading.Timer(3.0, os.kill, (pid, signal.SIGCONT))
    resume.start()
    try:
        with caplog.at_level(logging.WARNING, logger="actors.dead_letter"):
            offsets += [key.offset for key in keys]
    finally:
        resume.join()
        os.kill(pid, signal.SIGCONT)
    assert offsets == list(range(count))  # each record once, none lost at the resume
    assert any("resuming" in r.getMessage() for r in caplog.records)
