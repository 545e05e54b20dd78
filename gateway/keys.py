"""Scoped API keys at rest: the keys file (``gateway.api_keys_file``), pure.

A key is 256 random bits (``erk_`` + 43 url-safe characters), shown once when it is created; the
file keeps only its SHA-256 (a hash of so much entropy cannot be reversed or guessed, so no slow
password hash is needed), its name, the accounts it may write for and its rate limit. The file
is JSON, written by ``eventray keys`` (or by hand), and may be a mounted Kubernetes Secret::

    {"keys": [{"name": "checkout", "sha256": "9f86d0...", "accounts": ["acct-1", "shop-*"],
               "rate_per_s": 500.0, "burst": 10000, "created_at": "2026-12-01T10:00:00Z"}]}

``accounts``: exact account ids, prefixes ending in ``*`` (``shop-*``), or ``*`` for every
account. ``rate_per_s``: events per second the key may post on one gateway replica, with
``burst`` events at once (a token bucket); no ``rate_per_s`` means no limit.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Annotated, Final

import msgspec

from gateway.exceptions import GatewayError

KEY_PREFIX: Final = "erk_"
NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_HEX64: Final = r"^[0-9a-f]{64}$"
_ACCOUNT: Final = r"^(\*|[^*\s]+\*?)$"


class KeyFileError(GatewayError):
    """The keys file cannot be read or is not valid; the message names the file and why."""


class KeyRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One key as stored: never the key itself."""

    name: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
    sha256: Annotated[str, msgspec.Meta(pattern=_HEX64)]
    accounts: Annotated[list[Annotated[str, msgspec.Meta(pattern=_ACCOUNT)]],
                        msgspec.Meta(min_length=1)]
    rate_per_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    burst: Annotated[int, msgspec.Meta(gt=0)] | None = None
    created_at: str = ""

    def __post_init__(self) -> None:
        if (self.rate_per_s is None) != (self.burst is None):
            raise ValueError(f"key {self.name}: rate_per_s and burst go together")


class KeyFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    keys: list[KeyRecord] = []

    def __post_init__(self) -> None:
        names = [key.name for key in self.keys]
        for what, values in (("name", names), ("sha256", [key.sha256 for key in self.keys])):
            repeated = sorted({value for value in values if values.count(value) > 1})
            if repeated:
                shown = repeated if what == "name" else ["(a hash)"]
                raise ValueError(f"repeated key {what}: {', '.join(shown)}")

    def named(self, name: str) -> KeyRecord | None:
        return next((key for key in self.keys if key.name == name), None)


class AccountScope:
    """Which accounts a key may write for: exact ids, prefixes, or every account."""

    __slots__ = ("_any", "_exact", "_prefixes")

    def __init__(self, accounts: list[str]) -> None:
        self._any = "*" in accounts
        self._exact = frozenset(a for a in accounts if not a.endswith("*"))
        self._prefixes = tuple(a[:-1] for a in accounts if a.endswith("*") and a != "*")

    def allows(self, account_id: str) -> bool:
        return (self._any or account_id in self._exact
                or (bool(self._prefixes) and account_id.startswith(self._prefixes)))


def new_key() -> str:
    """A fresh key: 256 bits from the OS's CSPRNG."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str | bytes) -> str:
    """The SHA-256 (hex) a key is stored and looked up by."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def parse_key_file(data: bytes, source: str) -> KeyFile:
    try:
        return msgspec.json.decode(data, type=KeyFile)
    except msgspec.ValidationError as exc:
        raise KeyFileError(f"keys file {source}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise KeyFileError(f"keys file {source}: not JSON: {exc}") from None


def read_key_file(path: str | Path, *, missing_ok: bool = False) -> KeyFile:
    """The keys file at ``path`` (``missing_ok``: an absent file is an empty one)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return KeyFile()
        raise KeyFileError(f"keys file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"keys file {path}: {exc.strerror}") from None
    return parse_key_file(data, str(path))


def write_key_file(path: str | Path, keys: KeyFile) -> None:
    """Replace the file at once (a reader sees the old or the new one, never half), owner-only."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(msgspec.json.format(msgspec.json.encode(keys), indent=2) + b"\n")
        os.chmod(temp, 0o600)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def valid_name(name: str) -> bool:
    return re.match(NAME_PATTERN, name) is not None
