"""Pure parts of ``eventray logs`` (which actor to read, the tail of a file) and of ``up``'s
port planning (a service that died comes back where the Ray head expects it)."""

from __future__ import annotations

import socket
from pathlib import Path

from cluster.cli.logs import pick_actor, tail_lines
from cluster.local.processes import ProcessRecord, free_port
from cluster.local.stack import ServiceInfo, resolve_ports
from cluster.settings import Settings


def test_pick_actor_prefers_the_namespace_and_the_live_one() -> None:
    rows = [
        {"name": "sink:0", "actor_id": "a", "state": "DEAD", "ray_namespace": "eventray"},
        {"name": "sink:0", "actor_id": "b", "state": "ALIVE", "ray_namespace": "other"},
        {"name": "sink:0", "actor_id": "c", "state": "ALIVE", "ray_namespace": "eventray"},
        {"name": "sink:1", "actor_id": "d", "state": "ALIVE", "ray_namespace": "eventray"},
    ]
    assert pick_actor(rows, "sink:0", "eventray") == rows[2]
    assert pick_actor(rows[:2], "sink:0", "eventray") == rows[0]  # only dead in ours
    assert pick_actor(rows[1:2], "sink:0", "eventray") == rows[1]  # only in another namespace
    assert pick_actor(rows, "consumer:events:0", "eventray") is None


def test_tail_lines_reads_the_end_across_blocks(tmp_path: Path) -> None:
    path = tmp_path / "service.log"
    lines = [f"line {n} " + "x" * 100 for n in range(5000)]  # ~0.5 MB: several blocks
    path.write_text("\n".join(lines) + "\n")
    tail, position = tail_lines(path, 1500)
    assert tail == lines[-1500:]
    assert position == path.stat().st_size
    assert tail_lines(path, -1)[0] == lines
    assert tail_lines(path, 0)[0] == []
    short = tmp_path / "short.log"
    short.write_text("only\n")
    assert tail_lines(short, 10)[0] == ["only"]


def dead(name: str, ports: dict[str, int]) -> ServiceInfo:
    # pid 0 never matches a live process: a recorded service that died.
    return ServiceInfo(name, ProcessRecord(0, ("gone",), "/nonexistent"), ports, "x")


def test_a_dead_service_comes_back_on_its_recorded_ports_when_the_setting_says_any() -> None:
    broker, controller, http = free_port(), free_port(), free_port()
    recorded = {"kafka": dead("kafka", {"broker": broker, "controller": controller}),
                "snowflake": dead("snowflake", {"http": http})}
    any_port = Settings().with_overrides({"local.kafka_port": 0,
                                          "local.kafka_controller_port": 0,
                                          "local.snowflake_port": 0})
    local = resolve_ports(any_port, recorded, {}).local
    assert (local.kafka_port, local.kafka_controller_port, local.snowflake_port) == (
        broker, controller, http)
    # Running services keep theirs whatever the settings say.
    fixed = Settings()  # 9092 / 9093 / 8089
    assert resolve_ports(fixed, recorded, recorded).local == local
    # Configured ports win over the record of a dead service.
    assert resolve_ports(fixed, recorded, {}).local.kafka_port == 9092


def test_a_recorded_port_taken_meanwhile_is_replaced_by_a_free_one() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        recorded = {"snowflake": dead("snowflake", {"http": taken})}
        settings = Settings().with_overrides({"local.kafka_port": 0,
                                              "local.kafka_controller_port": 0,
                                              "local.snowflake_port": 0})
        local = resolve_ports(settings, recorded, {}).local
    assert local.snowflake_port not in (0, taken)
    assert 0 not in (local.kafka_port, local.kafka_controller_port)
    assert local.kafka_port != local.kafka_controller_port
