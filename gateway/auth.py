"""Who may write what: scoped API keys, their accounts and their rate limits.

Keys come from the keys file (``gateway.api_keys_file``, ``gateway.keys``: stored as SHA-256,
re-read every ``gateway.api_keys_reload_s``) and from ``gateway.api_keys`` in the settings (the
older plain list: each may write for every account, without a limit, named ``settings-<i>``).
No key from either means no check (local mode). A presented key is hashed and looked up by its
hash, so no stored key is compared byte by byte with it.

Two steps per request, both before anything is produced:

* ``identify(headers)`` before the body is read: no key -> 401, unknown key -> 403.
* ``admit(caller, events)`` once the events are decoded: an event for an account outside the
  key's accounts -> 403 naming its index and account; more events than the key's bucket holds
  now -> 429 with Retry-After; more than its burst at all -> 413. A refused request takes no
  tokens.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from actors.contract import Event
from actors.secret import Secret
from gateway.exceptions import Problem, RequestRejectedError
from gateway.keys import AccountScope, KeyFile, KeyFileError, key_hash, parse_key_file
from gateway.rate_limit import TokenBucket

log = logging.getLogger(__name__)

Clock = Callable[[], float]
RefusalReason = Literal["missing_key", "unknown_key", "account_not_allowed", "rate_limited",
                        "over_key_burst"]
NO_KEY: Final = "-"        # the key label of a request without a key
UNKNOWN_KEY: Final = "?"   # ... and of one whose key is not known
MAX_PROBLEMS: Final = 100  # account problems listed in one 403


class KeyRefusedError(RequestRejectedError):
    """A request refused for its API key; ``key_name`` and ``reason`` label the metric and the
    log line (never the key itself)."""

    def __init__(self, status: int, error: str, message: str, problems: list[Problem], *,
                 key_name: str, reason: RefusalReason, events: int = 1,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, error, message, problems, events=events, headers=headers)
        self.key_name = key_name
        self.reason = reason


@dataclass(slots=True)
class Caller:
    """The key a request came with, by name."""

    name: str
    scope: AccountScope
    bucket: TokenBucket | None = None
    limit: tuple[float, int] | None = field(default=None)  # (rate_per_s, burst) of the bucket


class ApiKeyCheck:
    """Accepts ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""

    def __init__(self, settings_keys: Sequence[Secret], keys_file: str = "", *,
                 clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._settings: dict[str, Caller] = {
            key_hash(key.reveal()): Caller(f"settings-{i}", AccountScope(["*"]))
            for i, key in enumerate(settings_keys)}
        self._file = keys_file
        self._from_file: dict[str, Caller] = {}
        self._file_bytes: bytes | None = None
        if keys_file:
            self.reload()  # a missing or broken file stops the start (KeyFileError)

    @property
    def enabled(self) -> bool:
        return bool(self._settings or self._file)

    @property
    def names(self) -> list[str]:
        return sorted(caller.name for caller in [*self._settings.values(),
                                                 *self._from_file.values()])

    def reload(self) -> bool:
        """Re-read the keys file; True when it changed. Raises ``KeyFileError`` (the keys in
        force stay as they were)."""
        try:
            with open(self._file, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise KeyFileError(f"keys file {self._file}: {exc.strerror}") from None
        if data == self._file_bytes:
            return False
        keys = parse_key_file(data, self._file)
        before = {caller.name for caller in self._from_file.values()}
        self._from_file = self._callers(keys)
        self._file_bytes = data
        after = {caller.name for caller in self._from_file.values()}
        log.info("API keys loaded file=%s keys=%d added=%s removed=%s", self._file, len(after),
                 ",".join(sorted(after - before)) or "-", ",".join(sorted(before - after)) or "-")
        return True

    def _callers(self, keys: KeyFile) -> dict[str, Caller]:
        """A caller per key; a key whose limit is unchanged keeps its bucket (a reload must not
        hand every key a full burst again)."""
        now = self._clock()
        callers = {}
        for record in keys.keys:
            limit = (None if record.rate_per_s is None or record.burst is None
                     else (record.rate_per_s, record.burst))
            old = self._from_file.get(record.sha256)
            if old is not None and old.limit == limit:
                bucket = old.bucket
            else:
                bucket = None if limit is None else TokenBucket(limit[0], limit[1], now)
            callers[record.sha256] = Caller(record.name, AccountScope(record.accounts), bucket,
                                            limit)
        return callers

    def identify(self, headers: Mapping[str, str]) -> Caller | None:
        """The request's key (None when no key is configured); 401 without one, 403 for one
        that is not known."""
        if not self.enabled:
            return None
        presented = headers.get("x-api-key")
        if presented is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                presented = token.strip()
        if not presented:
            raise KeyRefusedError(
                401, "unauthorized", "an API key is required",
                [Problem(None, "Authorization", "missing; send 'Authorization: Bearer <key>' "
                                                "or 'X-API-Key: <key>'")],
                key_name=NO_KEY, reason="missing_key")
        digest = key_hash(presented)
        caller = self._from_file.get(digest) or self._settings.get(digest)
        if caller is None:
            raise KeyRefusedError(403, "forbidden", "the API key is not valid",
                                  [Problem(None, "Authorization", "unknown API key")],
                                  key_name=UNKNOWN_KEY, reason="unknown_key")
        return caller

    def admit(self, caller: Caller | None, events: list[Event]) -> None:
        """Refuse (403/429/413) unless every event's account is the key's and its bucket holds
        the events; takes them from the bucket when admitted."""
        if caller is None:
            return
        outside = [Problem(i, "$.account_id",
                           f"account {event.account_id!r} is not one of key {caller.name!r}'s")
                   for i, event in enumerate(events) if not caller.scope.allows(event.account_id)]
        if outside:
            first = outside[0]
            account = events[first.index or 0].account_id
            raise KeyRefusedError(
                403, "account_not_allowed",
                f"key {caller.name!r} may not write for account {account!r} (event index "
                f"{first.index}); {len(outside)} of {len(events)} events are outside its "
                "accounts, nothing was written", outside[:MAX_PROBLEMS],
                key_name=caller.name, reason="account_not_allowed", events=len(events))
        if caller.bucket is None:
            return
        wait = caller.bucket.take(len(events), self._clock())
        if wait == 0:
            return
        bucket = caller.bucket
        if math.isinf(wait):
            raise KeyRefusedError(
                413, "over_key_burst",
                f"{len(events)} events exceed key {caller.name!r}'s burst of {bucket.burst}; "
                "send smaller batches", [], key_name=caller.name, reason="over_key_burst",
                events=len(events))
        raise KeyRefusedError(
            429, "rate_limited",
            f"key {caller.name!r} is over its rate of {bucket.rate_per_s:g} events/s "
            f"(burst {bucket.burst}); retry after {math.ceil(wait)}s, nothing was written", [],
            key_name=caller.name, reason="rate_limited", events=len(events),
            headers={"retry-after": str(max(1, math.ceil(wait)))})


class RefusalLog:
    """One log line per key and reason at most every ``every_s`` seconds, with how many
    refusals it stands for: a client hammering at its rate limit must not flood the log."""

    def __init__(self, every_s: float = 10.0, clock: Clock = time.monotonic) -> None:
        self._every_s = every_s
        self._clock = clock
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def refused(self, error: KeyRefusedError, request_id: str) -> None:
        now = self._clock()
        key = (error.key_name, error.reason)
        last, suppressed = self._last.get(key, (-math.inf, 0))
        if now - last < self._every_s:
            self._last[key] = (last, suppressed + 1)
            return
        self._last[key] = (now, 0)
        log.info("refused by API key key=%s reason=%s status=%d request_id=%s "
                 "similar_since_last=%d: %s", error.key_name, error.reason, error.status,
                 request_id, suppressed, error.message)


def reload_error(exc: KeyFileError) -> None:
    """A reload that failed keeps the keys in force; it says so every interval until fixed."""
    log.error("API keys not reloaded, the keys loaded before stay in force: %s", exc)
