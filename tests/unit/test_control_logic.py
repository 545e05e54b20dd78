"""Pure parts of ``status``/``stop`` from anywhere: which names are the pipeline's, the control
job's log protocol, the actor table, and the sink's repr."""

from __future__ import annotations

import msgspec

from actors.config import SinkConfig, SnowflakeConfig
from actors.sink import SnowflakeSink
from cluster.cli.dashboard_client import ActorRow, format_actors, parse_control_log
from cluster.control import ERROR_MARK, PROGRESS_MARK, RESULT_MARK, StopResult
from cluster.pipeline_actors import PipelineActorNames, classify


def test_classify_picks_consumers_and_sinks_in_numeric_order() -> None:
    names = ["eventray-supervisor", "consumer:events:10", "consumer:events:2", "sink:1",
             "sink:0", "consumer:other:0", "sinker", "sink:x", "consumer:events:x", "gateway"]
    assert classify(names) == PipelineActorNames(
        consumers=["consumer:events:2", "consumer:events:10", "consumer:other:0"],
        sinks=["sink:0", "sink:1"])
    assert classify(names, topic="events").consumers == ["consumer:events:2",
                                                         "consumer:events:10"]
    assert classify([], topic="events") == PipelineActorNames(consumers=[], sinks=[])


def test_control_log_yields_progress_and_the_result_among_ray_lines() -> None:
    result = StopResult(namespace="ns", stopped=["sink:0"], unfinished=[], remaining=[])
    log = "\n".join([
        "2026-01-01 INFO worker.py:1 -- Connecting to existing Ray cluster",
        f"{PROGRESS_MARK}stopped eventray-supervisor",
        "(raylet) some warning with @@eventray-result inside, not at the start",
        f"{PROGRESS_MARK}stopped sink:0",
        f"{RESULT_MARK}{msgspec.json.encode(result).decode()}",
        "",
    ])
    progress, raw, error = parse_control_log(log)
    assert progress == ["stopped eventray-supervisor", "stopped sink:0"]
    assert raw is not None and error is None
    assert msgspec.json.decode(raw, type=StopResult) == result
    assert parse_control_log("only Ray's lines\n") == ([], None, None)
    assert parse_control_log(f"x\n{ERROR_MARK}wrong session\n") == ([], None, "wrong session")


def test_actor_table_shows_every_column_and_placeholders() -> None:
    rows = [
        ActorRow(name="consumer:events:0", state="ALIVE", class_name="PartitionConsumer",
                 node_id="0123456789abcdef", pid=42, restarts=1,
                 repr_name="consumer(events/0 committed=7)"),
        ActorRow(name="", state="PENDING_CREATION", class_name="Anonymous", node_id=None,
                 pid=None, restarts=0, repr_name=""),
    ]
    lines = format_actors(rows, "ns").splitlines()
    assert lines[0] == "actors in namespace ns:"
    assert lines[1].split() == ["ACTOR", "STATE", "NODE", "PID", "RESTARTS", "REPR", "AT",
                                "START"]
    assert lines[2].split() == ["consumer:events:0", "ALIVE", "0123456789ab", "42", "1",
                                "consumer(events/0", "committed=7)"]
    assert lines[3].split() == ["(Anonymous)", "PENDING_CREATION", "-", "-", "0", "-"]
    assert format_actors([], "ns") == "actors: none in namespace ns"


def test_sink_repr_names_its_index_and_written_partitions() -> None:
    sink = SnowflakeSink(SnowflakeConfig(), SinkConfig(pool_size=2), index=1)
    assert repr(sink) == "sink(1 wrote=-)"
    # What write() records once a batch committed (no warehouse here).
    sink._written = frozenset({("events", 3), ("events", 1), ("other", 5)})
    assert repr(sink) == "sink(1 wrote=events/1,3;other/5)"
    assert repr(SnowflakeSink(SnowflakeConfig(), SinkConfig(pool_size=2))) == \
        "sink(wrote=-)"
