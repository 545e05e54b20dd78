from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from actors.contract import EventCodec
from cluster.bench.workload import WorkloadSpec, generate

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_workload_is_reproducible_and_partitions_ids() -> None:
    spec = WorkloadSpec(events=2000, batch_size=300, run_id="t")
    first, second = generate(spec, NOW), generate(spec, NOW)
    assert [e.event_id for b in first.batches for e in b] == [
        e.event_id for b in second.batches for e in b
    ]
    assert first.unique_events == 2000
    assert not first.valid_ids & first.invalid_ids
    assert 0 < len(first.invalid_ids) < 200
    assert [len(b) for b in first.batches] == [300] * 6 + [200]


def test_retries_repeat_only_valid_events() -> None:
    workload = generate(WorkloadSpec(events=5000, retry_share=0.05, run_id="t"), NOW)
    retried = {(e.account_id, e.event_id) for b in workload.retry_batches for e in b}
    assert len(retried) == 250
    assert retried <= workload.valid_ids


def test_every_generated_event_passes_the_contract_and_every_refused_body_fails_it() -> None:
    codec = EventCodec()
    workload = generate(WorkloadSpec(events=3000, refused_share=0.01, run_id="t"), NOW)
    for batch in workload.batches:
        for event in batch:
            assert codec.decode_json(codec.encode(event)) == event
    assert len(workload.refused_bodies) == 30
    for body in workload.refused_bodies:
        with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
            codec.decode_json(body)
