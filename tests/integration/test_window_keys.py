"""A restarting consumer reads its retry window's rows itself, in pages on its own warehouse
session (``actors.window_keys``): the same keys, accept times and order the sink's
``recent_keys`` gives, one page at a time. Against the real connector and the emulator."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import msgspec
import pytest

from actors.config import SinkConfig, SnowflakeConfig
from actors.contract import PaymentBody, PaymentCaptured
from actors.retry_window import DecidedKey
from actors.rows import SinkBatch, encode_rows, row_from_event
from actors.sink import SnowflakeWriter
from actors.window_keys import TableKeys
from actors.window_rebuild import window_order

pytestmark = pytest.mark.integration

SINK = SinkConfig(retry_attempts=3, retry_backoff_s=0.1)
BASE_MS = 1_772_366_400_000


@pytest.fixture(scope="module")
def tables(snowflake_config: SnowflakeConfig) -> SnowflakeConfig:
    config = msgspec.structs.replace(snowflake_config, events_table="WINDOW_KEYS_EVENTS",
                                     offsets_table="WINDOW_KEYS_OFFSETS")
    writer = SnowflakeWriter(config, SINK)
    writer.ensure_tables()
    writer.close()
    return config


@pytest.fixture
def writer(tables: SnowflakeConfig) -> Iterator[SnowflakeWriter]:
    w = SnowflakeWriter(tables, SINK)
    yield w
    w.close()


def write_rows(writer: SnowflakeWriter, topic: str, partition: int, offsets: range, *,
               accepted: bool = True) -> None:
    """One batch with a row per offset; every third replays a dead letter."""
    rows = [row_from_event(
        PaymentCaptured(event_id=f"e-{partition}-{o}", account_id=f"acct-{o % 5}",
                        occurred_at=datetime(2026, 3, 1, tzinfo=UTC),
                        body=PaymentBody(amount_minor=10, currency="EUR", merchant_id="m-1")),
        topic=topic, partition=partition, offset=o, request_id=None,
        accepted_at_ms=BASE_MS + o if accepted else None,
        replay_of=f"{partition}:{o}" if o % 3 == 0 else None) for o in offsets]
    batch = SinkBatch(topic=topic, partition=partition, from_offset=offsets.start,
                      to_offset=offsets.stop, rows_json=encode_rows(rows), row_count=len(rows))
    seen = writer.owner_epoch(topic, partition) or 0
    epoch = writer.take_ownership(topic, partition, f"test-{uuid.uuid4().hex[:6]}", seen)
    writer.write(batch, epoch)


def read(config: SnowflakeConfig, topic: str, since_ms: int, limit: int,
         page_rows: int = 3) -> tuple[list[DecidedKey], list[int]]:
    """The keys, and the rows read so far after each page."""
    pages: list[int] = []
    with TableKeys(config, topic, 0, page_rows=page_rows) as table:
        keys = list(table.keys(since_ms, limit, pages.append))
    return keys, pages


def test_the_pages_hold_what_recent_keys_holds_in_window_order(
        tables: SnowflakeConfig, writer: SnowflakeWriter) -> None:
    topic = f"t-{uuid.uuid4().hex[:10]}"
    write_rows(writer, topic, 0, range(0, 11))
    write_rows(writer, topic, 1, range(0, 4))  # another partition: never read
    for since_ms, limit in ((BASE_MS, 100), (BASE_MS + 4, 100), (BASE_MS, 7), (BASE_MS + 9, 1)):
        expected = sorted(writer.recent_keys(topic, 0, since_ms, limit), key=window_order)
        keys, pages = read(tables, topic, since_ms, limit, page_rows=3)
        assert keys == expected, (since_ms, limit)
        rows = len({k.offset for k in expected})
        assert pages == [*range(3, rows, 3), rows]  # a page of 3 rows at a time
    assert read(tables, topic, BASE_MS + 11, 100) == ([], [])
    assert read(tables, f"t-{uuid.uuid4().hex[:10]}", 0, 100) == ([], [])


def test_rows_without_an_accept_time_count_from_their_write(
        tables: SnowflakeConfig, writer: SnowflakeWriter) -> None:
    topic = f"t-{uuid.uuid4().hex[:10]}"
    before_ms = int(time.time() * 1000) - 60_000
    write_rows(writer, topic, 0, range(0, 4), accepted=False)
    keys, _ = read(tables, topic, before_ms, 100, page_rows=2)
    assert keys == sorted(writer.recent_keys(topic, 0, before_ms), key=window_order)
    assert len(keys) == 6  # 4 event keys, 2 replay keys
    assert read(tables, topic, int(time.time() * 1000) + 3_600_000, 100) == ([], [])
