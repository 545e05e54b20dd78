import gzip
from collections.abc import Iterator

import pytest
from snowflake.connector import network

from actors.request_compression import (
    CONNECTOR_DEFAULT_LEVEL,
    effective_level,
    set_request_compression,
)

BODY = b'{"sqlText": "INSERT ...", "bindings": {"1": {"value": "' + b"[1,2,3]," * 20_000 + b'"}}}'


@pytest.fixture(autouse=True)
def restore_connector_level() -> Iterator[None]:
    yield
    set_request_compression(CONNECTOR_DEFAULT_LEVEL)


def test_the_connector_compresses_at_the_chosen_level() -> None:
    set_request_compression(1)
    fast = network.gzip.compress(BODY)
    set_request_compression(9)
    small = network.gzip.compress(BODY)

    assert gzip.decompress(fast) == BODY  # still plain gzip: any server reads it
    assert len(fast) == len(gzip.compress(BODY, 1))  # same bytes but the header's mtime
    assert len(small) < len(fast)


def test_setting_it_twice_keeps_one_shim() -> None:
    set_request_compression(1)
    shim = network.gzip
    set_request_compression(3)
    assert network.gzip is shim
    assert network.gzip.level == 3


def test_level_zero_sends_the_body_stored_in_gzip_framing() -> None:
    set_request_compression(0)
    stored = network.gzip.compress(BODY)
    assert gzip.decompress(stored) == BODY
    assert len(stored) > len(BODY)  # not compressed at all


@pytest.mark.parametrize("level", [-1, 10])
def test_levels_outside_gzip_range_are_refused(level: int) -> None:
    with pytest.raises(ValueError, match=r"0\.\.9"):
        set_request_compression(level)


@pytest.mark.parametrize(("configured", "host", "expected"), [
    (None, "127.0.0.1", 0), (None, "localhost", 0), (None, None, 1),
    (None, "acme-eu.snowflakecomputing.com", 1), (5, "127.0.0.1", 5), (0, None, 0)])
def test_unset_level_stores_on_loopback_and_compresses_elsewhere(
        configured: int | None, host: str | None, expected: int) -> None:
    assert effective_level(configured, host) == expected
