"""``eventray dlq``'s pure parts: times, filters from arguments, the outcome summary."""

from __future__ import annotations

import pytest

from actors.dlq_replay import ReplayOutcome
from actors.exceptions import ConfigError
from cluster.cli import build_parser
from cluster.cli.dlq import outcome_summary, parse_time, selection_of

NOW_MS = 1_772_366_400_000  # 2026-03-01T12:00:00Z


def test_times_are_ages_or_iso_8601_in_utc_unless_they_say_otherwise() -> None:
    assert parse_time("90s", NOW_MS) == NOW_MS - 90_000
    assert parse_time("30m", NOW_MS) == NOW_MS - 1_800_000
    assert parse_time("1.5h", NOW_MS) == NOW_MS - 5_400_000
    assert parse_time("2d", NOW_MS) == NOW_MS - 2 * 86_400_000
    assert parse_time("2026-03-01T12:00:00Z", 0) == NOW_MS
    assert parse_time("2026-03-01 12:00", 0) == NOW_MS  # naive: UTC
    assert parse_time("2026-03-01T13:00:00+01:00", 0) == NOW_MS
    assert parse_time("2026-03-01", 0) == NOW_MS - 12 * 3_600_000
    with pytest.raises(ValueError, match="neither an ISO 8601 time nor an age"):
        parse_time("yesterday", NOW_MS)


def test_arguments_make_the_filter() -> None:
    args = build_parser("dlq").parse_args(
        ["dlq", "list", "--reason", "contract", "--reason", "unknown_currency",
         "--partition", "2", "--account", "acct-1", "--since", "2026-03-01",
         "--until", "2026-03-02", "--time", "accepted"])
    selection = selection_of(args)
    assert selection.reasons == {"contract", "unknown_currency"}
    assert selection.partitions == {2} and selection.accounts == {"acct-1"}
    assert (selection.since_ms, selection.until_ms) == (NOW_MS - 43_200_000,
                                                       NOW_MS + 43_200_000)
    assert selection.time_field == "accepted" and not selection.is_empty
    backwards = build_parser("dlq").parse_args(
        ["dlq", "list", "--since", "2026-03-02", "--until", "2026-03-01"])
    with pytest.raises(ConfigError, match="--since must be before --until"):
        selection_of(backwards)


def test_replay_ids_are_checked_when_parsed() -> None:
    args = build_parser("dlq").parse_args(["dlq", "replay", "0:5", "3:17", "--dry-run"])
    assert [str(i) for i in args.ids] == ["0:5", "3:17"] and args.dry_run
    with pytest.raises(SystemExit):
        build_parser("dlq").parse_args(["dlq", "show", "5"])


def test_the_outcome_counts_every_fate_and_names_the_dead_letters() -> None:
    outcomes = [ReplayOutcome("0:1", 0, 10, "written"),
                ReplayOutcome("0:2", 0, 11, "dead-lettered", new_dead_letter="0:9",
                              reason="unknown_currency: XXZ"),
                *(ReplayOutcome(f"1:{n}", 1, 20 + n, "dropped") for n in range(12))]
    text = outcome_summary(outcomes).splitlines()
    assert text[0] == "outcome: 1 written, 1 dead-lettered again, 12 dropped as duplicates"
    assert text[1] == "  0:2 dead-lettered again as 0:9: unknown_currency: XXZ"
    assert text[2].endswith("1:0, 1:1, 1:2, 1:3, 1:4, 1:5, 1:6, 1:7, 1:8, 1:9 and 2 more")
