"""The supervisor and a changed config, on real Ray, the broker and the emulator: a pool resize
applied online while events flow, partitions moving between live sinks (every event exactly
once), settings a running pipeline cannot
take refused by name, supervisor-only settings applied by replacing the supervisor alone, and
no unbounded wait under the reconcile lock (a warehouse that accepts and never answers)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import msgspec
import pytest
import ray
from pipeline_helpers import (
    assert_exactly_once,
    landed,
    local_ray_session,
    pipeline_settings,
    produce_events,
    wait_for,
    wait_until_drained,
    workload,
)

from actors.config import KafkaConnection, PipelineConfig, SnowflakeConfig
from actors.consumer import consumer_name, sink_name
from cluster.config_change import ConfigChangeRefusedError
from cluster.pipeline_actors import named_actors
from cluster.settings import Settings
from cluster.supervisor import (
    SUPERVISOR_NAME,
    get_status,
    start_pipeline,
    stop_pipeline,
    supervisor_actor,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    with local_ray_session("eventray-supervisor-tests"):
        yield


@pytest.fixture
def pipeline(ray_session: None, kafka_connection: KafkaConnection,
             snowflake_config: SnowflakeConfig) -> Iterator[Settings]:
    settings = pipeline_settings(kafka_connection, snowflake_config, partitions=4,
                                 pool_size=2, batch_max_events=100)
    start_pipeline(settings.pipeline_config())
    try:
        yield settings
    finally:
        stop_pipeline(settings.pipeline_config())


def actor_id(name: str, namespace: str) -> str:
    return str(ray.get_actor(name, namespace=namespace)._actor_id.hex())


def committed_total(config: PipelineConfig) -> int:
    status = get_status(config)
    return 0 if status is None else sum(p.committed_offset or 0 for p in status.partitions)


def test_a_pool_resize_is_applied_online_while_events_flow(pipeline: Settings) -> None:
    config = pipeline.pipeline_config()
    topic = config.topics.events
    work = workload(5000, seed=31)
    batches = [*work.batches, *work.retry_batches]  # client retries after the originals
    done, give_up = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    sent: list[int] = []  # batches produced so far

    def produce() -> None:  # a batch every second, through the replacements
        try:
            for batch in batches:
                produce_events(config.kafka, topic, batch)
                sent.append(len(batch))
                if give_up.wait(1.0):
                    return
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        check_resizes(pipeline, sent, done)
    except BaseException:
        give_up.set()  # the test failed: stop producing
        raise
    finally:
        producer.join(timeout=120)
    assert done.is_set() and errors == []
    assert sum(sent) == sum(len(batch) for batch in batches)
    wait_until_drained(config)
    result = landed(pipeline)
    assert_exactly_once(result, work.valid_ids, work.invalid_ids)


def check_resizes(pipeline: Settings, sent: list[int], done: threading.Event) -> None:
    """2 -> 3 sinks while events flow, then back to 2."""
    config = pipeline.pipeline_config()
    topic, namespace = config.topics.events, config.namespace
    wait_for("the first rows", lambda: committed_total(config) > 0, timeout=120, interval=0.1)
    before = {name: actor_id(name, namespace)
              for name in [SUPERVISOR_NAME, sink_name(0), sink_name(1),
                           *(consumer_name(topic, p) for p in range(4))]}

    wider = pipeline.with_overrides({"pipeline.sink.pool_size": 3})
    sent_before = len(sent)
    assert not done.is_set()
    start_pipeline(wider.pipeline_config())
    # Applied online: the new sink takes a partition once it answers.
    wait_for("a partition on sink:2", lambda: partitions_per_sink(config) == [1, 1, 2],
             timeout=60)
    sent_after = len(sent)
    status = get_status(config)
    assert status is not None and status.pool_size == 3
    assert [s.name for s in status.sinks] == [sink_name(i) for i in range(3)]
    assert all(s.state == "running" for s in status.sinks)
    assert {p.sink for p in status.partitions} == {sink_name(i) for i in range(3)}
    # Only the supervisor is new: the consumers and the first two sinks ran on throughout.
    for name, old in before.items():
        assert (actor_id(name, namespace) != old) == (name == SUPERVISOR_NAME), name
    assert ray.get(ray.get_actor(SUPERVISOR_NAME, namespace=namespace).config.remote(),
                   timeout=30) == wider.pipeline_config()
    assert sent_after > sent_before  # events flowed while the pool grew

    start_pipeline(pipeline.pipeline_config())  # and back to 2: sink:2 retires
    wait_for("sink:2 to retire", lambda: sink_name(2) not in named_actors(namespace),
             timeout=60)
    status = get_status(config)
    assert status is not None and [s.name for s in status.sinks] == [sink_name(0),
                                                                       sink_name(1)]
    assert partitions_per_sink(config) == [2, 2]
    assert {p.sink for p in status.partitions} == {sink_name(0), sink_name(1)}


def partitions_per_sink(config: PipelineConfig) -> list[int]:
    """How many partitions each live sink serves (sorted), as the consumers report them."""
    status = get_status(config)
    if status is None:
        return []
    return sorted(len(s.partitions) for s in status.sinks if s.state != "retiring")


def test_settings_a_running_pipeline_cannot_take_are_refused_by_name(
        pipeline: Settings) -> None:
    config = pipeline.pipeline_config()
    namespace = config.namespace
    supervisor = actor_id(SUPERVISOR_NAME, namespace)
    consumers = {p: actor_id(consumer_name(config.topics.events, p), namespace)
                 for p in range(4)}
    renamed = pipeline.with_overrides({"topics.events": f"{config.topics.events}-renamed",
                                       "pipeline.sink.pool_size": 3})
    with pytest.raises(ConfigChangeRefusedError) as raised:
        start_pipeline(renamed.pipeline_config())
    message = str(raised.value)
    assert message.startswith(f"the pipeline in namespace {namespace} runs with other "
                              "settings that cannot change while it runs: topics.events (")
    assert "also changed, applicable online: pipeline.sink.pool_size" in message
    assert "stop the pipeline first" in message
    # Nothing was changed.
    assert actor_id(SUPERVISOR_NAME, namespace) == supervisor
    assert sink_name(2) not in named_actors(namespace)

    # The supervisor's own settings: only the supervisor is replaced.
    patient = pipeline.with_overrides({"pipeline.reconcile_interval_s": 5.0})
    start_pipeline(patient.pipeline_config())
    assert actor_id(SUPERVISOR_NAME, namespace) != supervisor
    assert {p: actor_id(consumer_name(config.topics.events, p), namespace)
            for p in range(4)} == consumers
    running = ray.get(ray.get_actor(SUPERVISOR_NAME, namespace=namespace).config.remote(),
                      timeout=30)
    assert running.reconcile_interval_s == 5.0


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        yield int(listener.getsockname()[1])


def test_a_warehouse_that_never_answers_blocks_neither_status_nor_stop(
        ray_session: None, kafka_connection: KafkaConnection,
        snowflake_config: SnowflakeConfig, silent_port: int) -> None:
    # The connector would wait for the login for an hour: the sink's ensure_tables hangs.
    silent = msgspec.structs.replace(snowflake_config, port=silent_port, login_timeout_s=3600)
    settings = pipeline_settings(kafka_connection, silent, partitions=2)
    config = settings.pipeline_config()
    namespace = config.namespace
    # Created directly: start_pipeline's preflight would refuse the silent warehouse.
    supervisor_actor().options(
        name=SUPERVISOR_NAME, namespace=namespace, lifetime="detached", max_restarts=-1,
        max_concurrency=8, num_cpus=0,
    ).remote(config)
    try:
        def tables_pending() -> bool:
            status = get_status(config, timeout_s=30)  # answers, or raises: a bound
            return (status is not None and status.last_error is not None
                    and "has not created the tables yet" in status.last_error)

        wait_for("status to report the pending tables", tables_pending, timeout=120)
        status = get_status(config, timeout_s=30)
        # The consumers are created beside the sinks and wait for the tables: none runs (one
        # still in its constructor does not answer).
        assert status is not None
        assert {p.state for p in status.partitions} <= {"starting", "unreachable"}
        assert stop_pipeline(config, timeout_s=60) is True  # raised GetTimeoutError before
        assert named_actors(namespace) == []
    finally:
        for name in named_actors(namespace):
            ray.kill(ray.get_actor(name, namespace=namespace), no_restart=True)


def test_a_supervisor_created_ahead_of_its_start_creates_nothing_before_it(
        ray_session: None, kafka_connection: KafkaConnection,
        snowflake_config: SnowflakeConfig) -> None:
    """What start_pipeline creates while it probes Kafka and Snowflake: its loop reconciles
    nothing (here over 10 of its intervals) until start() is called."""
    settings = pipeline_settings(kafka_connection, snowflake_config, partitions=2,
                                 pool_size=1, batch_max_events=100).with_overrides(
        {"pipeline.reconcile_interval_s": 0.2})
    config = settings.pipeline_config()
    namespace = config.namespace
    supervisor = supervisor_actor().options(
        name=SUPERVISOR_NAME, namespace=namespace, lifetime="detached", max_restarts=-1,
        max_concurrency=8, num_cpus=0,
    ).remote(config, wait_for_start=True)
    try:
        ray.get(supervisor.config.remote(), timeout=60)  # it runs
        stopped = threading.Event()
        stopped.wait(2.0)
        assert named_actors(namespace) == [SUPERVISOR_NAME]
        assert ray.get(supervisor.start.remote(), timeout=120) == 2
        assert {sink_name(0), consumer_name(config.topics.events, 0),
                consumer_name(config.topics.events, 1)} <= set(named_actors(namespace))
    finally:
        stop_pipeline(config, timeout_s=60)
