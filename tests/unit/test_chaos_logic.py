"""The pure parts of ``eventray chaos``: accounting from id lists, the recovery and drain
criteria, the client's retry delays and acknowledgement log, the report and its JSON."""

from __future__ import annotations

import json
from collections import Counter

import msgspec
import pytest

from cluster.chaos.accounting import Key, Landing, tally
from cluster.chaos.load import MAX_RETRY_DELAY_S, AckLog, retry_delay
from cluster.chaos.progress import Progress, caught_up
from cluster.chaos.report import RunResult, exit_code, format_table, to_json
from cluster.chaos.scenarios import SCENARIOS
from cluster.settings import Settings
from gateway.responses import Accepted, DeliveredEvent


def keys(*ids: int) -> list[Key]:
    return [(f"acct-{n % 3}", f"e-{n}") for n in ids]


# -- accounting --------------------------------------------------------------------------------


def test_nothing_lost_or_duplicated_when_each_acknowledged_event_landed_once() -> None:
    counts = tally(set(keys(1, 2, 3, 4)), Landing.from_ids(keys(1, 2, 3), keys(4)))
    assert (counts.acknowledged, counts.rows, counts.dead_lettered) == (4, 3, 1)
    assert (counts.lost, counts.duplicated) == (0, 0)


def test_an_acknowledged_event_in_neither_place_is_lost() -> None:
    counts = tally(set(keys(1, 2, 3)), Landing.from_ids(keys(1), keys(3)))
    assert counts.lost == 1
    assert counts.duplicated == 0


def test_an_event_never_acknowledged_is_not_lost_but_its_copies_count() -> None:
    # e-9 was given up on by the client, yet it landed twice: no promise, still a duplicate.
    counts = tally(set(keys(1)), Landing.from_ids(keys(1, 9, 9), []))
    assert counts.lost == 0
    assert counts.duplicated == 1


@pytest.mark.parametrize(("rows", "dead", "duplicated"), [
    (keys(1, 1), [], 1),              # two rows
    (keys(1, 1, 1), [], 2),           # three rows: two extra copies
    ([], keys(2, 2), 1),              # two dead letters
    (keys(1), keys(1), 1),            # a row and a dead letter of the same event
    (keys(1, 1), keys(1), 2),
    (keys(1, 2, 3), keys(4, 5), 0),
])
def test_duplicated_counts_the_copies_beyond_the_first_across_table_and_dead_letters(
        rows: list[Key], dead: list[Key], duplicated: int) -> None:
    counts = tally(set(rows) | set(dead), Landing.from_ids(rows, dead))
    assert counts.duplicated == duplicated
    # The same as counting copies one by one.
    assert duplicated == sum(n - 1 for n in Counter(rows + dead).values())


def test_the_same_event_id_under_another_account_is_another_event() -> None:
    counts = tally({("acct-1", "e-1")}, Landing.from_ids([("acct-2", "e-1")], []))
    assert counts.lost == 1


# -- recovery and drain ------------------------------------------------------------------------


def test_caught_up_once_every_partition_committed_an_event_acknowledged_after_the_fault() -> None:
    first_after = {0: 100, 1: 50}
    assert not caught_up(first_after, Progress(ends={0: 120, 1: 60}, committed={0: 100, 1: 60}))
    assert caught_up(first_after, Progress(ends={0: 120, 1: 60}, committed={0: 101, 1: 51}))


def test_a_partition_the_load_did_not_reach_after_the_fault_needs_no_lag() -> None:
    first_after = {0: 100}
    assert not caught_up(first_after, Progress(ends={0: 200, 1: 80}, committed={0: 150, 1: 79}))
    assert caught_up(first_after, Progress(ends={0: 200, 1: 80}, committed={0: 150, 1: 80}))
    # A partition never written (a new one) with nothing in it is caught up.
    assert caught_up({}, Progress(ends={0: 0, 1: 0}, committed={0: None, 1: None}))


def test_a_partition_without_a_committed_offset_is_not_caught_up_on_new_events() -> None:
    assert not caught_up({3: 0}, Progress(ends={3: 10}, committed={3: None}))
    assert caught_up({3: 0}, Progress(ends={3: 10}, committed={3: 1}))


def test_drained_when_the_warehouse_committed_every_record_in_the_topic() -> None:
    progress = Progress(ends={0: 10, 1: 0, 2: 5}, committed={0: 10, 1: None, 2: 4})
    assert not progress.drained()
    assert progress.lag() == 1
    assert Progress(ends={0: 10, 1: 0}, committed={0: 10, 1: None}).drained()


# -- the load client ---------------------------------------------------------------------------


def test_retry_delay_honours_retry_after_within_a_bound_else_backs_off() -> None:
    assert retry_delay("1", 0) == 1.0
    assert retry_delay("0", 3) == 0.0
    assert retry_delay("2.5", 0) == 2.5
    assert retry_delay("3600", 0) == MAX_RETRY_DELAY_S
    assert retry_delay("Wed, 21 Oct 2015 07:28:00 GMT", 0) == pytest.approx(0.2)
    backoff = [retry_delay(None, attempt) for attempt in range(8)]
    assert backoff[:3] == pytest.approx([0.2, 0.4, 0.8])
    assert backoff == sorted(backoff)
    assert max(backoff) == MAX_RETRY_DELAY_S


def accepted(*placed: tuple[int, int]) -> Accepted:
    return Accepted("req", len(placed), [DeliveredEvent(i, f"e-{i}", "events", p, o)
                                         for i, (p, o) in enumerate(placed)])


def test_ack_log_keeps_the_first_offset_per_partition_acknowledged_after_the_fault() -> None:
    log = AckLog()
    log.sending(keys(1, 2, 3, 4, 5))
    log.accepted(keys(1), accepted((0, 7)), at=10.0)
    log.mark_fault(20.0)
    log.accepted(keys(2, 3), accepted((0, 12), (1, 40)), at=21.0)
    log.accepted(keys(4), accepted((0, 9)), at=22.0)  # acknowledged later, stored earlier
    assert log.first_after() == {0: 9, 1: 40}
    assert log.after_fault() == {0: 2, 1: 1}
    assert log.wait_for_partition(1, timeout_s=0)
    assert not log.wait_for_partition(2, timeout_s=0)
    assert log.acknowledged() == set(keys(1, 2, 3, 4))
    assert log.unacknowledged() == 1
    assert log.wait_for(4, timeout_s=0)
    assert not log.wait_for(5, timeout_s=0)


def test_ack_log_names_the_events_acknowledged_close_to_the_fault() -> None:
    log = AckLog()
    assert log.acknowledged_around_fault(1.0, 3.0) == set()  # no fault yet
    for n, at in enumerate([5.0, 9.5, 10.0, 12.9, 13.5]):
        log.accepted(keys(n), accepted((0, n)), at=at)
    log.accepted(keys(1), accepted((0, 9)), at=20.0)  # a re-send: the first answer counts
    log.mark_fault(10.0)
    assert log.acknowledged_around_fault(1.0, 3.0) == set(keys(1, 2, 3))


def test_ack_log_counts_retried_attempts_by_reason() -> None:
    log = AckLog()
    log.retried("503")
    log.retried("503")
    log.retried("connection (ConnectError)")
    assert log.retries_text() == "503 x2, connection (ConnectError) x1"


# -- the report --------------------------------------------------------------------------------


BASE = RunResult(scenario="", run=1, acknowledged=1000, rows=970, dead_lettered=30, lost=0,
                 duplicated=0, recovery_s=4.2, fault="killed kafka pid 1")


def result(scenario: str, **changes: object) -> RunResult:
    return msgspec.structs.replace(BASE, scenario=scenario, **changes)


def test_json_has_the_runs_with_the_documented_keys_first() -> None:
    document = json.loads(to_json([result("broker-kill"), result("zombie", recovery_s=None)]))
    assert list(document) == ["runs"]
    first, second = document["runs"]
    assert list(first)[:8] == ["scenario", "run", "acknowledged", "rows", "dead_lettered",
                               "lost", "duplicated", "recovery_s"]
    assert first["recovery_s"] == 4.2
    assert second["recovery_s"] is None


def test_exit_code_is_non_zero_when_any_run_lost_duplicated_or_failed() -> None:
    assert exit_code([result("a"), result("b")]) == 0
    assert exit_code([result("a"), result("b", duplicated=3)]) == 1
    assert exit_code([result("a", lost=1)]) == 1
    assert exit_code([result("a", error="prepare: no node")]) == 1
    assert exit_code([]) == 1


def test_the_table_has_a_row_per_run_and_says_what_was_injected() -> None:
    text = format_table([result("broker-kill", acknowledged=12345),
                         result("add-partitions", duplicated=34, recovery_s=None,
                                fault="partitions 4->5", drained=False)])
    header, first, second = text.splitlines()[:3]
    assert header.split() == ["SCENARIO", "RUN", "ACKNOWLEDGED", "ROWS", "DEAD", "LETTERS",
                              "LOST", "DUPLICATED", "RECOVERY", "RESULT"]
    assert first.split() == ["broker-kill", "1", "12,345", "970", "30", "0", "0", "4.2s", "ok"]
    assert second.split() == ["add-partitions", "1", "1,000", "970", "30", "0", "34", "-",
                              "FAIL"]
    assert "broker-kill run 1: killed kafka pid 1" in text
    assert "add-partitions run 1: partitions 4->5; NOT DRAINED within the bound" in text


# -- the injectors ----------------------------------------------------------------------------


def test_a_process_blocked_reading_a_socket_is_seen_waiting_on_it() -> None:
    import socket
    import subprocess
    import sys

    from cluster.chaos.faults import wait_until_on_socket, waiting_on_socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        # Blocks in recv with a timeout, as the Snowflake connector's HTTP client does.
        child = subprocess.Popen([sys.executable, "-c", (
            "import socket, time; time.sleep(0.5); "
            f"s = socket.create_connection(('127.0.0.1', {port})); s.settimeout(30); s.recv(1)")])
        try:
            assert not waiting_on_socket(child.pid)  # still sleeping
            conn, _ = server.accept()
            with conn:
                assert wait_until_on_socket(child.pid, timeout_s=10)
        finally:
            child.kill()
            child.wait()
    assert not waiting_on_socket(child.pid)  # gone


# -- the command -------------------------------------------------------------------------------


def test_every_scenario_of_the_issue_is_offered() -> None:
    assert set(SCENARIOS) == {"broker-kill", "emulator-kill", "consumer-kill", "zombie",
                              "node-loss", "resize-sinks", "add-partitions"}


def test_the_chaos_gateway_refreshes_topic_metadata_unless_the_settings_say_otherwise() -> None:
    from cluster.cli.chaos import METADATA_REFRESH, gateway_config

    assert gateway_config(Settings()).kafka.extra == {METADATA_REFRESH: "2000"}
    own = Settings().with_overrides({"kafka.extra": {METADATA_REFRESH: "60000"}})
    assert gateway_config(own).kafka.extra == {METADATA_REFRESH: "60000"}
