"""``eventray dlq``: dead letters: ``list`` them, ``show`` one, ``replay`` them after a fix.

Against the running local stack (like ``eventray status``) or, with no stack recorded, the
cluster the settings name. Only Kafka is needed, and the warehouse for ``replay --wait``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec

from actors.dlq_select import (
    TIME_FIELDS,
    DeadLetterFilter,
    DeadLetterId,
    DeadLetterRecord,
    parse_dead_letter_id,
)
from actors.exceptions import ConfigError
from cluster.settings import Settings

if TYPE_CHECKING:
    from actors.dlq_replay import ReplayOutcome, ReplayResult

_AGO: Final = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_MS: Final = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_REASON_WIDTH: Final = 48
_SHOWN_BEFORE_REPLAY: Final = 10
_OUTCOME_LINES: Final = 10  # dead letters named per fate in a replay's outcome


# --------------------------------------------------------------------------- arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    listing = sub.add_parser("list", help="dead letters matching filters, as a table or JSON",
                             description="dead letters matching filters, oldest first per "
                                         "partition")
    _add_filters(listing)
    listing.add_argument("--limit", type=_positive_int, default=50,
                         help="show at most N (default 50; all matches are counted)")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    show = sub.add_parser("show", help="one dead letter: payload, reason, source, headers",
                          description="one dead letter: payload, reason, source partition and "
                                      "offset, accept time, request id, headers")
    show.add_argument("id", type=_dead_letter_id, metavar="PARTITION:OFFSET",
                      help="where it is in the dead-letter topic, as 'dlq list' prints it")
    show.add_argument("--json", action="store_true", help="as JSON")
    replay = sub.add_parser(
        "replay", help="produce dead letters back to the events topic (after a fix)",
        description="produce the selected dead letters back to their source partition of the "
                    "events topic. Each replay names its dead letter (header "
                    "eventray-replay-of), so a dead letter replayed twice lands once; what "
                    "still fails goes back to the dead-letter topic with its new reason.")
    replay.add_argument("ids", nargs="*", type=_dead_letter_id, metavar="PARTITION:OFFSET",
                        help="these dead letters (instead of filters)")
    _add_filters(replay)
    replay.add_argument("--all", action="store_true",
                        help="every dead letter (needed when neither ids nor filters are given)")
    replay.add_argument("--limit", type=_positive_int, help="replay at most N of the selection")
    replay.add_argument("--dry-run", action="store_true",
                        help="show what would be replayed; produce nothing")
    replay.add_argument("--wait", action="store_true",
                        help="then wait for the pipeline and tell what became of each replay")
    replay.add_argument("--timeout", type=float, default=180.0,
                        help="seconds --wait waits for the pipeline (default 180)")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", action="append", default=[], metavar="CODE",
                        help="reason code, e.g. unknown_currency or contract (repeatable)")
    parser.add_argument("--partition", action="append", default=[], type=int, metavar="P",
                        help="dead-letter (= source) partition (repeatable)")
    parser.add_argument("--account", action="append", default=[], metavar="ACCOUNT_ID",
                        help="the event's account id (repeatable)")
    parser.add_argument("--since", type=_time_arg, metavar="TIME",
                        help="from TIME on: ISO 8601 (UTC unless it has an offset) or an age "
                             "such as 30m, 2h, 1d")
    parser.add_argument("--until", type=_time_arg, metavar="TIME",
                        help="before TIME (same forms as --since)")
    parser.add_argument("--time", choices=TIME_FIELDS, default="dead-lettered",
                        dest="time_field",
                        help="what --since/--until apply to (default: dead-lettered)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return value


def _dead_letter_id(text: str) -> DeadLetterId:
    try:
        return parse_dead_letter_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _time_arg(text: str) -> int:
    try:
        return parse_time(text, time.time_ns() // 1_000_000)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_time(text: str, now_ms: int) -> int:
    """Epoch ms of ``text``: an age (``90s``, ``30m``, ``2h``, ``1d``) before ``now_ms``, or
    an ISO 8601 date or time (UTC unless it carries an offset)."""
    ago = _AGO.match(text.strip())
    if ago is not None:
        return now_ms - int(float(ago[1]) * _UNIT_MS[ago[2]])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time nor an age such as 30m, 2h, "
                         "1d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def selection_of(args: argparse.Namespace) -> DeadLetterFilter:
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise ConfigError("--since must be before --until")
    return DeadLetterFilter(reasons=frozenset(args.reason), partitions=frozenset(args.partition),
                            accounts=frozenset(args.account), since_ms=args.since,
                            until_ms=args.until, time_field=args.time_field)


# --------------------------------------------------------------------------- commands


_KAFKA_PROBE_S = 5.0


def run(settings: Settings, args: argparse.Namespace) -> int:
    target = _target(settings)
    command = {"list": _list, "show": _show, "replay": _replay}[args.dlq_command]
    return command(target, args)


def _target(settings: Settings) -> Settings:
    """The running local stack's settings when one is recorded, else the settings as given;
    Kafka must answer there (one clear error instead of librdkafka's retry lines)."""
    from cluster.local.stack import stack_settings, status
    from cluster.preflight import ServiceUnreachableError, check_kafka

    local = bool(status(settings))
    target = stack_settings(settings) if local else settings
    try:
        check_kafka(target.kafka, timeout_s=_KAFKA_PROBE_S)
    except ServiceUnreachableError as exc:
        hint = "" if local else " (no local stack is recorded: `eventray up`, or set kafka.*)"
        raise ServiceUnreachableError(f"{exc}{hint}") from None
    return target


def _list(settings: Settings, args: argparse.Namespace) -> int:
    from actors.dlq_reader import DeadLetterReader

    topics = settings.topics
    shown: list[DeadLetterRecord] = []
    matched = 0
    with DeadLetterReader(settings.kafka, topics.dead_letter) as reader:
        for record in reader.scan(selection_of(args)):
            matched += 1
            if len(shown) < args.limit:
                shown.append(record)
    if args.json:
        print(msgspec.json.encode({"topic": topics.dead_letter, "matched": matched,
                                   "records": [as_json(r) for r in shown]}).decode())
        return 0
    print(f"dead letters in {topics.dead_letter} (source topic {topics.events}): "
          f"{matched} matching" + (f", first {len(shown)} shown" if len(shown) < matched
                                   else ""))
    if shown:
        print(table(shown))
    if len(shown) < matched:
        print(f"({matched - len(shown)} more: raise --limit, or narrow the filters)")
    return 0


def _show(settings: Settings, args: argparse.Namespace) -> int:
    from actors.dlq_reader import DeadLetterReader

    topic = settings.topics.dead_letter
    with DeadLetterReader(settings.kafka, topic) as reader:
        record = reader.read([args.id]).get(args.id)
    if record is None:
        print(f"eventray dlq show: no dead letter at {args.id} in {topic}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.encode(as_json(record)).decode())
    else:
        print(details(record, topic))
    return 0


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from actors.dlq_replay import replay_dead_letters

    topics = settings.topics
    records = _replay_selection(settings, args)
    verb = "would replay" if args.dry_run else "replaying"
    print(f"{verb} {_letters(len(records))} from {topics.dead_letter} to {topics.events}")
    # A dry run lists every one; a replay the first few.
    shown = records if args.dry_run else records[:_SHOWN_BEFORE_REPLAY]
    if shown:
        print(table(shown))
    if len(shown) < len(records):
        print(f"... and {len(records) - len(shown)} more")
    if args.dry_run:
        print("dry run: nothing produced")
        return 0
    if not records:
        return 0
    result = replay_dead_letters(settings.kafka, topics.events, records,
                                 progress=_Progress(len(records)))
    print(replay_summary(result, topics.events))
    if result.failed:
        return 1
    if args.wait:
        return _wait(settings, result, args.timeout)
    return 0


def _replay_selection(settings: Settings, args: argparse.Namespace) -> list[DeadLetterRecord]:
    """The dead letters ``replay`` was asked for: by id, or by filter; checked replayable."""
    from actors.dlq_reader import DeadLetterReader
    from actors.dlq_select import replay_problem

    topics = settings.topics
    selection = selection_of(args)
    if args.ids and not selection.is_empty:
        raise ConfigError("give dead letter ids or filters, not both")
    if not args.ids and selection.is_empty and not args.all:
        raise ConfigError("select dead letters to replay: ids, filters, or --all")
    with DeadLetterReader(settings.kafka, topics.dead_letter) as reader:
        if args.ids:
            found = reader.read(args.ids)
            missing = [str(i) for i in args.ids if i not in found]
            if missing:
                raise ConfigError(f"no dead letter at {', '.join(missing)} in "
                                  f"{topics.dead_letter}")
            records = [found[i] for i in dict.fromkeys(args.ids)]
        else:
            records = list(reader.scan(selection))
    if args.limit is not None:
        records = records[:args.limit]
    problems = [p for p in (replay_problem(r, topics.events) for r in records) if p]
    if problems:
        raise ConfigError("; ".join(problems))
    return records


def _wait(settings: Settings, result: ReplayResult, timeout_s: float) -> int:
    from actors.dlq_replay import replay_outcomes

    print(f"waiting for the pipeline to commit past the replays (up to {timeout_s:g}s)",
          flush=True)
    outcomes = replay_outcomes(settings.kafka, settings.snowflake, settings.topics.events,
                               settings.topics.dead_letter, result, timeout_s=timeout_s)
    print(outcome_summary(outcomes))
    return 0


class _Progress:
    """Prints ``replayed n/total`` at most every half second, and at the end."""

    def __init__(self, total: int) -> None:
        self._total = total
        self._printed_at = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self._printed_at >= 0.5:
            self._printed_at = now
            print(f"  delivered {done}/{total}", flush=True)


# --------------------------------------------------------------------------- presentation


def _letters(count: int) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'}"


def _when(ms: int | None, *, precise: bool = False) -> str:
    if ms is None:
        return "-"
    at = datetime.fromtimestamp(ms / 1000, UTC)
    if precise:
        return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return at.strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def table(records: Sequence[DeadLetterRecord]) -> str:
    """One line per dead letter; times in UTC."""
    header = ("ID", "DEAD-LETTERED (UTC)", "ACCEPTED (UTC)", "SOURCE", "ACCOUNT", "EVENT",
              "REASON", "REPLAY OF")
    lines = [header] + [(
        str(r.id), _when(r.dead_lettered_at_ms), _when(r.accepted_at_ms),
        "-" if r.source_offset is None else f"{r.replay_partition}:{r.source_offset}",
        r.account_id or "-", r.event_id or "-", _short(r.reason or "-", _REASON_WIDTH),
        r.replay_of or "-",
    ) for r in records]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths,
                                                                         strict=True)).rstrip()
                     for line in lines)


def _payload(value: bytes) -> Any:
    """The payload as JSON when it is JSON, else its text."""
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError:
        return value.decode("utf-8", "replace")


def as_json(record: DeadLetterRecord) -> dict[str, Any]:
    return {
        "id": str(record.id), "partition": record.partition, "offset": record.offset,
        "dead_lettered_at": _when(record.dead_lettered_at_ms, precise=True),
        "accepted_at": (None if record.accepted_at_ms is None
                        else _when(record.accepted_at_ms, precise=True)),
        "reason": record.reason, "reason_code": record.reason_code,
        "source": {"topic": record.source_topic, "partition": record.source_partition,
                   "offset": record.source_offset},
        "request_id": record.request_id, "replay_of": record.replay_of,
        "account_id": record.account_id, "event_id": record.event_id,
        "key": None if record.key is None else record.key.decode("utf-8", "replace"),
        "headers": [[k, v.decode("utf-8", "replace")] for k, v in record.headers],
        "payload": _payload(record.value),
    }


def details(record: DeadLetterRecord, topic: str) -> str:
    source = ("-" if record.source_offset is None else
              f"{record.source_topic} partition {record.source_partition} "
              f"offset {record.source_offset}")
    payload = _payload(record.value)
    body = (msgspec.json.format(msgspec.json.encode(payload), indent=2).decode()
            if not isinstance(payload, str) else payload)
    fields = [
        ("reason", record.reason or "-"),
        ("dead-lettered", _when(record.dead_lettered_at_ms, precise=True)),
        ("source", source),
        ("accepted", _when(record.accepted_at_ms, precise=True)),
        ("request id", record.request_id or "-"),
        ("replay of", record.replay_of or "-"),
        ("account", record.account_id or "-"),
        ("event id", record.event_id or "-"),
        ("key", "-" if record.key is None else record.key.decode("utf-8", "replace")),
    ]
    lines = [f"dead letter {record.id} in {topic}"]
    lines += [f"  {name:<14} {value}" for name, value in fields]
    lines.append("  headers")
    lines += [f"    {k}: {v.decode('utf-8', 'replace')}" for k, v in record.headers]
    lines.append("  payload")
    lines += [f"    {line}" for line in body.splitlines()]
    return "\n".join(lines)


def replay_summary(result: ReplayResult, events_topic: str) -> str:
    by_partition: dict[int, list[int]] = {}
    for replay in result.replayed:
        by_partition.setdefault(replay.partition, []).append(replay.offset)
    where = ", ".join(
        f"partition {p} offset{'s' if len(o) > 1 else ''} "
        + (f"{min(o)}-{max(o)}" if len(o) > 1 else str(o[0]))
        for p, o in sorted(by_partition.items()))
    lines = [f"replayed {_letters(len(result.replayed))} to {events_topic}"
             + (f": {where}" if where else "")]
    if result.failed:
        lines.append(f"NOT delivered: {len(result.failed)} (running the replay again is safe:"
                     " a dead letter replayed twice lands once)")
        lines += [f"  {f.dead_letter}: {f.error} (code {f.code})" for f in result.failed]
    return "\n".join(lines)


def outcome_summary(outcomes: Sequence[ReplayOutcome]) -> str:
    counts = {fate: sum(o.fate == fate for o in outcomes)
              for fate in ("written", "dead-lettered", "dropped")}
    lines = [f"outcome: {counts['written']} written, {counts['dead-lettered']} dead-lettered "
             f"again, {counts['dropped']} dropped as duplicates"]
    again = [o for o in outcomes if o.fate == "dead-lettered"]
    lines += [f"  {o.dead_letter} dead-lettered again as {o.new_dead_letter}: {o.reason}"
              for o in again[:_OUTCOME_LINES]]
    if len(again) > _OUTCOME_LINES:
        lines.append(f"  ... and {len(again) - _OUTCOME_LINES} more dead-lettered again")
    dropped = [o.dead_letter for o in outcomes if o.fate == "dropped"]
    if dropped:
        listed = ", ".join(dropped[:_OUTCOME_LINES])
        more = f" and {len(dropped) - _OUTCOME_LINES} more" if len(dropped) > _OUTCOME_LINES else ""
        lines.append(f"  dropped (replayed before, or the event is in the table already): "
                     f"{listed}{more}")
    return "\n".join(lines)
