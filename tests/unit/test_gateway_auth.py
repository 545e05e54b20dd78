from __future__ import annotations

import pytest

from actors.secret import Secret
from gateway.auth import ApiKeyCheck
from gateway.exceptions import RequestRejectedError

CHECK = ApiKeyCheck([Secret("k-one"), Secret("k-two")])


@pytest.mark.parametrize("headers", [
    {"authorization": "Bearer k-one"},
    {"authorization": "bearer   k-two"},
    {"x-api-key": "k-two"},
])
def test_a_configured_key_passes(headers: dict[str, str]) -> None:
    CHECK.check(headers)


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"authorization": "Basic k-one"}, 401),
    ({"authorization": "Bearer "}, 401),
    ({"authorization": "Bearer k-three"}, 403),
    ({"x-api-key": "K-ONE"}, 403),
])
def test_missing_is_401_and_wrong_is_403(headers: dict[str, str], status: int) -> None:
    with pytest.raises(RequestRejectedError) as info:
        CHECK.check(headers)
    assert info.value.status == status


def test_no_configured_key_means_no_check() -> None:
    check = ApiKeyCheck([])
    assert not check.enabled
    check.check({})
