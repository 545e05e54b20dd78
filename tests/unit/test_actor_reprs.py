"""An actor whose ``__init__`` failed early still has a repr (Ray calls it for the dashboard
and its log prefix; an AttributeError there hid the real start-up error)."""

from __future__ import annotations

from actors.consumer import PartitionConsumer
from actors.sink import SnowflakeSink


def test_a_half_built_consumer_and_sink_have_a_repr() -> None:
    consumer = PartitionConsumer.__new__(PartitionConsumer)
    sink = SnowflakeSink.__new__(SnowflakeSink)
    assert repr(consumer) == "consumer(not started)"
    assert repr(sink) == "sink(not started)"
