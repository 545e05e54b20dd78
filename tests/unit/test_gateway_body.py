"""The replica's bound on request body bytes in flight, and the body deadlines' watcher."""

from __future__ import annotations

import asyncio

import pytest

from gateway.body import BodyClaim, BodyDeadlines, InflightBodies
from gateway.exceptions import RequestRejectedError


def test_a_claim_past_the_bound_is_429_with_retry_after_and_takes_nothing() -> None:
    pool = InflightBodies(100)
    first, second = BodyClaim(pool), BodyClaim(pool)
    first.take(60, "1")
    with pytest.raises(RequestRejectedError) as refused:
        second.take(41, "3")
    assert (refused.value.status, refused.value.error) == (429, "gateway_busy")
    assert refused.value.headers == {"retry-after": "3"}
    assert (pool.held, second.held) == (60, 0)
    second.take(40, "1")  # exactly up to the bound is admitted
    assert pool.held == 100


def test_released_claims_give_their_bytes_back_once() -> None:
    pool = InflightBodies(100)
    claim = BodyClaim(pool)
    claim.take(30, "1")
    claim.take(20, "1")  # a chunked body, chunk by chunk
    claim.release()
    claim.release()  # a second release (finally after an early one) gives nothing back twice
    assert pool.held == 0
    BodyClaim(pool).take(100, "1")
    assert pool.held == 100


def test_the_watcher_cancels_only_the_reads_past_their_deadline() -> None:
    async def scenario() -> None:
        deadlines = BodyDeadlines()
        now = asyncio.get_running_loop().time()
        late = asyncio.create_task(asyncio.Event().wait())
        on_time = asyncio.create_task(asyncio.Event().wait())
        deadlines.reading[late] = now - 1
        deadlines.reading[on_time] = now + 3600
        watcher = asyncio.create_task(deadlines.watch(0.01))
        with pytest.raises(asyncio.CancelledError):
            await late
        assert deadlines.expired == {late}  # the reader tells its 408 from other cancels
        assert not on_time.done()
        for task in (on_time, watcher):
            task.cancel()
        await asyncio.gather(on_time, watcher, return_exceptions=True)

    asyncio.run(scenario())
