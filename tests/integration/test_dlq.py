"""``eventray dlq``: listing, showing and replaying dead letters against the real broker, the
emulator and Ray. A replayed dead letter lands exactly once: replayed twice, replayed while its
consumer restarts, replayed after a pipeline restart (the retry window rebuilt from the table
and the dead-letter topic); what still fails goes back with its new reason."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import ray
import snowflake.connector
from pipeline_helpers import (
    local_ray_session,
    pipeline_settings,
    produce_events,
    wait_for,
    wait_until_drained,
)

from actors.config import KafkaConnection, SinkConfig, SnowflakeConfig
from actors.consumer import consumer_name
from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_REQUEST_ID,
    PaymentBody,
    PaymentCaptured,
)
from actors.dead_letter import DeadLetter, DeadLetterProducer
from actors.dlq_reader import DeadLetterReader
from actors.dlq_select import DeadLetterFilter, DeadLetterRecord
from actors.retry_window import replay_key
from actors.rows import SinkBatch, encode_rows, row_from_event
from actors.sink import SnowflakeWriter
from cluster.cli import build_parser
from cluster.cli import dlq as dlq_cli
from cluster.settings import Settings
from cluster.supervisor import start_pipeline, stop_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Before the fix, events older than a day are refused; after it, up to five years are fine.
# Amounts above 1000 are refused before and after.
STRICT = {"pipeline.rules.max_past_age_days": 1, "pipeline.rules.max_amount_minor": 1000}
FIXED = {"pipeline.rules.max_past_age_days": 1825}
T0 = 1_772_366_400_000


def payment(event_id: str, account: str, *, days_ago: float = 0,
            amount: int = 100) -> PaymentCaptured:
    return PaymentCaptured(event_id=event_id, account_id=account,
                           occurred_at=datetime.now(UTC) - timedelta(days=days_ago),
                           body=PaymentBody(amount_minor=amount, currency="EUR",
                                            merchant_id="m-1"))


def run_dlq(settings: Settings, capsys: pytest.CaptureFixture[str],
            *argv: str) -> tuple[int, str]:
    """``eventray dlq ARGV`` with ``settings``: (exit code, what it printed)."""
    capsys.readouterr()
    args = build_parser("dlq").parse_args(["dlq", *argv])
    code = dlq_cli.run(settings, args)
    return code, capsys.readouterr().out


def run_json(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out = run_dlq(settings, capsys, *argv, "--json")
    assert code == 0, out
    return msgspec.json.decode(out)


# --------------------------------------------------------------------------- list and show


@pytest.fixture
def dlq_settings(kafka_connection: KafkaConnection, snowflake_config: SnowflakeConfig,
                 topic_factory: Callable[..., str], tmp_path: Path) -> Settings:
    """Settings whose dead-letter topic is a fresh 2-partition topic (no pipeline)."""
    settings = pipeline_settings(kafka_connection, snowflake_config, partitions=2,
                                 extra={"local.state_dir": str(tmp_path)})
    dlq = topic_factory(partitions=2, prefix="dlq")
    return settings.with_overrides({"topics.dead_letter": dlq})


def publish(settings: Settings, partition: int, letters: Sequence[DeadLetter]) -> None:
    """Dead letters as a consumer of ``partition`` writes them (one transaction)."""
    producer = DeadLetterProducer(settings.kafka, settings.topics.dead_letter,
                                  settings.topics.events, partition)
    producer.start(floor=0)
    try:
        assert producer.publish(letters) == len(letters)
    finally:
        producer.close()


def letter(offset: int, account: str, reason: str, accepted_ms: int) -> DeadLetter:
    value = (f'{{"type":"payment.captured","account_id":"{account}",'
             f'"event_id":"e-{offset}"}}').encode()
    return DeadLetter(source_offset=offset, key=account.encode(), value=value, reason=reason,
                      headers=((HEADER_REQUEST_ID, f"req-{offset}".encode()),
                               (HEADER_ACCEPTED_AT_MS, str(accepted_ms).encode())))


def test_list_and_show_select_dead_letters_by_reason_partition_account_and_time(
        dlq_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    settings = dlq_settings
    publish(settings, 0, [letter(10, "acct-1", "unknown_currency: XYZ", T0),
                          letter(11, "acct-2", "amount_above_max: 5000 > 1000", T0 + 60_000)])
    time.sleep(0.05)  # the next dead letters get a later record time (ms)
    second_at = time.time_ns() // 1_000_000
    publish(settings, 1, [letter(20, "acct-1", "unknown_currency: ABC", T0 + 120_000),
                          DeadLetter(source_offset=21, key=None, value=b"not json",
                                     reason="contract: $: malformed")])

    everything = run_json(settings, capsys, "list")
    assert everything["matched"] == 4
    assert [r["id"] for r in everything["records"]] == ["0:0", "0:1", "1:0", "1:1"]

    def ids(*filters: str) -> list[str]:
        return [r["id"] for r in run_json(settings, capsys, "list", *filters)["records"]]

    assert ids("--reason", "unknown_currency") == ["0:0", "1:0"]
    assert ids("--reason", "contract", "--reason", "amount_above_max") == ["0:1", "1:1"]
    assert ids("--partition", "1") == ["1:0", "1:1"]
    assert ids("--account", "acct-1") == ["0:0", "1:0"]
    assert ids("--account", "acct-1", "--partition", "0") == ["0:0"]
    accepted = ["--time", "accepted"]
    assert ids(*accepted, "--since", "2026-03-01T12:01:00Z") == ["0:1", "1:0"]
    assert ids(*accepted, "--until", "2026-03-01T12:01:00Z") == ["0:0"]
    assert ids("--since", str(datetime.fromtimestamp(second_at / 1000, UTC))) == ["1:0", "1:1"]
    assert ids("--since", "1h") == ["0:0", "0:1", "1:0", "1:1"]
    limited = run_json(settings, capsys, "list", "--limit", "1")
    assert limited["matched"] == 4 and len(limited["records"]) == 1

    code, table = run_dlq(settings, capsys, "list", "--partition", "0")
    assert code == 0
    header, *lines = table.splitlines()[1:]
    assert header.split()[:3] == ["ID", "DEAD-LETTERED", "(UTC)"]
    assert lines[0].split()[0] == "0:0" and "unknown_currency: XYZ" in lines[0]

    shown = run_json(settings, capsys, "show", "0:1")
    assert shown["reason"] == "amount_above_max: 5000 > 1000"
    assert shown["source"] == {"topic": settings.topics.events, "partition": 0, "offset": 11}
    assert shown["accepted_at"] == "2026-03-01T12:01:00.000Z"
    assert shown["request_id"] == "req-11" and shown["account_id"] == "acct-2"
    assert shown["payload"]["event_id"] == "e-11"
    assert ["eventray-dlq-reason", "amount_above_max: 5000 > 1000"] in shown["headers"]
    code, text = run_dlq(settings, capsys, "show", "1:1")
    assert code == 0 and "contract: $: malformed" in text and "not json" in text
    code, _ = run_dlq(settings, capsys, "show", "1:7")
    assert code == 1


# --------------------------------------------------------------------------- replays


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    with local_ray_session("eventray-dlq-tests"):
        yield


class Workload(msgspec.Struct):
    """Events per purpose, each purpose on accounts of its own."""

    valid: list[PaymentCaptured]
    old: list[PaymentCaptured]          # refused before the fix, valid after
    old_and_big: list[PaymentCaptured]  # refused before the fix, and for its amount after
    restart_old: list[PaymentCaptured]  # for the replay while consumers restart


@pytest.fixture(scope="module")
def fixed_pipeline(ray_session: None, kafka_connection: KafkaConnection,
                   snowflake_config: SnowflakeConfig,
                   tmp_path_factory: pytest.TempPathFactory,
                   ) -> Iterator[tuple[Settings, Workload]]:
    """A pipeline that dead-lettered the workload under the strict rules, restarted with the
    fix (its retry window rebuilt from the table and the dead-letter topic)."""
    state_dir = str(tmp_path_factory.mktemp("no-stack"))
    strict = pipeline_settings(kafka_connection, snowflake_config, partitions=2,
                               extra={**STRICT, "local.state_dir": state_dir})
    tag = uuid.uuid4().hex[:6]
    work = Workload(
        valid=[payment(f"v-{tag}-{n}", f"acct-a{n % 2}") for n in range(20)],
        old=[payment(f"o-{tag}-{n}", f"acct-b{n % 2}", days_ago=10) for n in range(30)],
        old_and_big=[payment(f"ob-{tag}-{n}", f"acct-b{n % 2}", days_ago=10, amount=5000)
                     for n in range(6)],
        restart_old=[payment(f"r-{tag}-{n}", f"acct-c{n % 4}", days_ago=10)
                     for n in range(1200)],
    )
    start_pipeline(strict.pipeline_config())
    try:
        produce_events(strict.kafka, strict.topics.events,
                       work.valid + work.old + work.old_and_big + work.restart_old)
        wait_until_drained(strict.pipeline_config())
    finally:
        stop_pipeline(strict.pipeline_config())
    fixed = strict.with_overrides(FIXED)
    start_pipeline(fixed.pipeline_config())
    try:
        yield fixed, work
    finally:
        stop_pipeline(fixed.pipeline_config())


def table_rows(settings: Settings) -> list[tuple[str, str, int, int, str | None]]:
    """(account, event id, partition, offset, replay of) of every row of the events topic."""
    config = settings.snowflake
    conn = snowflake.connector.connect(**config.connect_kwargs(), paramstyle="qmark")
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT ACCOUNT_ID, EVENT_ID, KAFKA_PARTITION, KAFKA_OFFSET, REPLAY_OF "
                       f"FROM {config.events_table} WHERE KAFKA_TOPIC = ?",
                       (settings.topics.events,))
        return [(str(a), str(e), int(p), int(o), None if r is None else str(r))
                for a, e, p, o, r in cursor.fetchall()]
    finally:
        conn.close()


def dead_letter_records(settings: Settings) -> list[DeadLetterRecord]:
    with DeadLetterReader(settings.kafka, settings.topics.dead_letter) as reader:
        return list(reader.scan(DeadLetterFilter()))


def ids_of(events: Sequence[PaymentCaptured]) -> set[str]:
    return {e.event_id for e in events}


def test_replay_after_a_rule_fix_lands_once_and_what_still_fails_goes_back(
        fixed_pipeline: tuple[Settings, Workload],
        capsys: pytest.CaptureFixture[str]) -> None:
    settings, work = fixed_pipeline
    before = dead_letter_records(settings)
    refused = [d for d in before if d.account_id in ("acct-b0", "acct-b1")]
    assert {d.event_id for d in refused} == ids_of(work.old + work.old_and_big)
    assert {d.reason_code for d in refused} == {"occurred_too_old"}
    selection = ["--reason", "occurred_too_old", "--account", "acct-b0", "--account",
                 "acct-b1"]

    code, out = run_dlq(settings, capsys, "replay", *selection, "--dry-run")
    assert code == 0 and "dry run: nothing produced" in out
    assert len(dead_letter_records(settings)) == len(before)

    code, out = run_dlq(settings, capsys, "replay", *selection, "--wait", "--timeout", "120")
    assert code == 0, out
    assert "outcome: 30 written, 6 dead-lettered again, 0 dropped as duplicates" in out
    rows = table_rows(settings)
    replayed_rows = [r for r in rows if r[0] in ("acct-b0", "acct-b1")]
    assert Counter(r[1] for r in replayed_rows) == Counter(ids_of(work.old))  # once each
    by_id = {str(d.id): d for d in refused}
    for _, event_id, _, _, replay_of in replayed_rows:
        assert replay_of is not None and by_id[replay_of].event_id == event_id
    back = [d for d in dead_letter_records(settings) if d.replay_of is not None]
    assert {d.event_id for d in back} == ids_of(work.old_and_big)
    assert {d.reason_code for d in back} == {"amount_above_max"}
    assert all(by_id[d.replay_of].event_id == d.event_id for d in back if d.replay_of)

    # The same replay again: every replay is dropped, nothing lands twice.
    code, out = run_dlq(settings, capsys, "replay", *selection, "--wait", "--timeout", "120")
    assert code == 0 and "outcome: 0 written, 0 dead-lettered again, 36 dropped" in out
    # A client retrying one of the replayed events is dropped too.
    produce_events(settings.kafka, settings.topics.events, work.old[:5])
    wait_until_drained(settings.pipeline_config())
    assert sorted(table_rows(settings)) == sorted(rows)
    dead_after = dead_letter_records(settings)
    assert len(dead_after) == len(before) + len(work.old_and_big)

    # After a pipeline restart (the window rebuilt from the table and the dead-letter topic):
    # the old replays are still dropped; a replay of a dead letter of a failed replay goes
    # back once more, naming that dead letter.
    stop_pipeline(settings.pipeline_config())
    start_pipeline(settings.pipeline_config())
    code, out = run_dlq(settings, capsys, "replay", *selection, "--wait", "--timeout", "120")
    assert code == 0 and "outcome: 0 written, 0 dead-lettered again, 36 dropped" in out
    first_back = str(back[0].id)
    code, out = run_dlq(settings, capsys, "replay", first_back, "--wait", "--timeout", "120")
    assert code == 0 and "outcome: 0 written, 1 dead-lettered again, 0 dropped" in out
    newest = [d for d in dead_letter_records(settings) if d.replay_of == first_back]
    assert len(newest) == 1 and newest[0].reason_code == "amount_above_max"
    assert sorted(table_rows(settings)) == sorted(rows)


def test_replays_while_consumers_restart_land_once(
        fixed_pipeline: tuple[Settings, Workload],
        capsys: pytest.CaptureFixture[str]) -> None:
    settings, work = fixed_pipeline
    config = settings.pipeline_config()
    accounts = ["--account", "acct-c0", "--account", "acct-c1", "--account", "acct-c2",
                "--account", "acct-c3"]
    code, out = run_dlq(settings, capsys, "replay", *accounts)
    assert code == 0 and "replayed 1200 dead letters" in out, out

    def landed() -> int:
        return sum(r[0].startswith("acct-c") for r in table_rows(settings))

    wait_for("the first replays to land", lambda: landed() > 0, timeout=120, interval=0.2)
    # Kill both consumers while their replays are in flight, and replay the same dead letters
    # again while they restart.
    for partition in (0, 1):
        ray.kill(ray.get_actor(consumer_name(config.topics.events, partition),
                               namespace=config.namespace), no_restart=False)
    code, out = run_dlq(settings, capsys, "replay", *accounts)
    assert code == 0, out
    wait_until_drained(config)
    rows = [r for r in table_rows(settings) if r[0].startswith("acct-c")]
    assert Counter(r[1] for r in rows) == Counter(ids_of(work.restart_old))
    assert len({r[4] for r in rows}) == len(rows)
    assert not [d for d in dead_letter_records(settings)
                if d.replay_of is not None and (d.account_id or "").startswith("acct-c")]


# --------------------------------------------------------------------------- the table


def test_ensure_tables_adds_replay_of_to_an_events_table_made_before_it(
        snowflake_config: SnowflakeConfig) -> None:
    tag = uuid.uuid4().hex[:8].upper()
    config = msgspec.structs.replace(snowflake_config, events_table=f"OLD_EVENTS_{tag}",
                                     offsets_table=f"OLD_OFFSETS_{tag}")
    conn = snowflake.connector.connect(**config.connect_kwargs(), paramstyle="qmark",
                                       autocommit=True)
    try:
        cursor = conn.cursor()
        # The events table as earlier versions created it, with one row.
        cursor.execute(f"""CREATE TABLE {config.events_table} (
            EVENT_ID VARCHAR NOT NULL, ACCOUNT_ID VARCHAR NOT NULL, EVENT_TYPE VARCHAR NOT NULL,
            OCCURRED_AT TIMESTAMP_TZ NOT NULL, SCHEMA_VERSION NUMBER(10, 0) NOT NULL,
            BODY VARIANT, KAFKA_TOPIC VARCHAR NOT NULL, KAFKA_PARTITION NUMBER(10, 0) NOT NULL,
            KAFKA_OFFSET NUMBER(38, 0) NOT NULL, REQUEST_ID VARCHAR, ACCEPTED_AT TIMESTAMP_TZ,
            WRITTEN_AT TIMESTAMP_TZ NOT NULL)""")
        cursor.execute(f"INSERT INTO {config.events_table} SELECT 'e-old', 'acct-1', "
                       "'payment.captured', CURRENT_TIMESTAMP(), 1, NULL, 't', 0, 0, NULL, "
                       "CURRENT_TIMESTAMP(), CURRENT_TIMESTAMP()")
        writer = SnowflakeWriter(config, SinkConfig(retry_attempts=3, retry_backoff_s=0.1))
        try:
            writer.ensure_tables()
            writer.ensure_tables()  # again: the column is there, nothing changes
            event = payment("e-new", "acct-1")
            rows = [row_from_event(event, topic="t", partition=0, offset=1, request_id=None,
                                   accepted_at_ms=None, replay_of="0:7")]
            epoch = writer.take_ownership("t", 0, "test-upgrade", writer.owner_epoch("t", 0) or 0)
            writer.write(SinkBatch(topic="t", partition=0, from_offset=1, to_offset=2,
                                   rows_json=encode_rows(rows), row_count=1), epoch)
            keys = writer.recent_keys("t", 0, 0)
        finally:
            writer.close()
        cursor.execute(f"SELECT EVENT_ID, REPLAY_OF FROM {config.events_table} "
                       "ORDER BY KAFKA_OFFSET")
        assert [tuple(r) for r in cursor.fetchall()] == [("e-old", None), ("e-new", "0:7")]
    finally:
        conn.close()
    assert [k.key for k in keys] == [("acct-1", "e-new"), replay_key("0:7"), ("acct-1", "e-old")]
