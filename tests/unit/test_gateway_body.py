"""The replica's bound on request body bytes in flight (pure bookkeeping)."""

from __future__ import annotations

import pytest

from gateway.body import BodyClaim, InflightBodies
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
