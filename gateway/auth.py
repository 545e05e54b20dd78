"""API key check: constant-time comparison against the configured keys."""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence

from actors.secret import Secret
from gateway.exceptions import Problem, RequestRejectedError


class ApiKeyCheck:
    """Accepts ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

    No configured key means no check (local mode). Missing key -> 401, wrong key -> 403.
    """

    def __init__(self, keys: Sequence[Secret]) -> None:
        self._keys = [key.reveal().encode() for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise ``RequestRejectedError`` (401/403) unless the headers carry a valid key."""
        if not self._keys:
            return
        presented = headers.get("x-api-key")
        if presented is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                presented = token.strip()
        if not presented:
            raise RequestRejectedError(
                401, "unauthorized", "an API key is required",
                [Problem(None, "Authorization", "missing; send 'Authorization: Bearer <key>' "
                                                "or 'X-API-Key: <key>'")])
        candidate = presented.encode()
        # Compare against every key (no early exit) so timing does not tell which matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise RequestRejectedError(
                403, "forbidden", "the API key is not valid",
                [Problem(None, "Authorization", "unknown API key")])
