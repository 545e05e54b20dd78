"""``eventray keys create|list|revoke``: the gateway's scoped API keys in the keys file.

The file (``--file``, else ``gateway.api_keys_file``) holds SHA-256 hashes only; ``create``
prints the new key once, on stdout, and nowhere else. A running gateway picks a change up within
``gateway.api_keys_reload_s``. On Kubernetes the file is a Secret: edit a copy, then replace the
Secret with it (docs/security.md).
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import UTC, datetime

import msgspec

from actors.exceptions import ConfigError
from cluster.settings import Settings
from gateway.keys import (
    KeyFile,
    KeyRecord,
    key_hash,
    new_key,
    read_key_file,
    valid_name,
    write_key_file,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", help="the keys file (default: gateway.api_keys_file)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="a new key: printed once, stored as its hash")
    create.add_argument("name", help="the key's name (letters, digits, . _ -), e.g. checkout")
    create.add_argument("--accounts", required=True,
                        help="comma-separated account ids and prefixes ending in * "
                             "(e.g. 'acct-1,shop-*'); '*' for every account")
    create.add_argument("--rate", type=float, default=None,
                        help="events per second per gateway replica (default: no limit)")
    create.add_argument("--burst", type=int, default=None,
                        help="events at once (default: 10000, the default "
                             "gateway.max_events_per_request, or the rate if higher)")
    sub.add_parser("list", help="the keys: name, accounts, rate, burst, created, hash prefix")
    revoke = sub.add_parser("revoke", help="remove a key: refused within one reload interval")
    revoke.add_argument("name")


def run(settings: Settings, args: argparse.Namespace) -> int:
    path = args.file or settings.gateway.api_keys_file
    if not path:
        raise ConfigError("no keys file: pass --file or set gateway.api_keys_file")
    if args.action == "create":
        return _create(path, args)
    if args.action == "revoke":
        return _revoke(path, args.name)
    _list(read_key_file(path, missing_ok=True))
    return 0


def _create(path: str, args: argparse.Namespace) -> int:
    if not valid_name(args.name):
        raise ConfigError(f"key name {args.name!r}: letters, digits, '.', '_', '-' "
                          "(up to 64, starting with a letter or digit)")
    keys = read_key_file(path, missing_ok=True)
    if keys.named(args.name) is not None:
        raise ConfigError(f"a key named {args.name!r} exists in {path}: revoke it first, or "
                          "choose another name (rotate: create the new key, move the client, "
                          "revoke the old one)")
    accounts = [account.strip() for account in args.accounts.split(",") if account.strip()]
    burst = args.burst
    if args.rate is not None and burst is None:
        burst = max(10_000, math.ceil(args.rate))
    if burst is not None and args.rate is None:
        raise ConfigError("--burst needs --rate")
    key = new_key()
    try:
        record = msgspec.convert({
            "name": args.name, "sha256": key_hash(key), "accounts": accounts,
            "rate_per_s": args.rate, "burst": burst,
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}, KeyRecord)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"key {args.name}: {exc}") from None
    write_key_file(path, KeyFile([*keys.keys, record]))
    print(f"created key {record.name} in {path} (accounts {','.join(record.accounts)}, "
          f"{_rate(record)}); give this key to its client, it is not stored and not shown "
          "again:", file=sys.stderr)
    print(key)
    return 0


def _revoke(path: str, name: str) -> int:
    keys = read_key_file(path)
    if keys.named(name) is None:
        known = ", ".join(key.name for key in keys.keys) or "none"
        raise ConfigError(f"no key named {name!r} in {path} (keys: {known})")
    write_key_file(path, KeyFile([key for key in keys.keys if key.name != name]))
    print(f"revoked key {name} in {path}: gateways refuse it within "
          "gateway.api_keys_reload_s of reading this file")
    return 0


def _list(keys: KeyFile) -> None:
    rows = [("NAME", "ACCOUNTS", "RATE", "CREATED (UTC)", "SHA-256")]
    rows += [(key.name, ",".join(key.accounts), _rate(key), key.created_at or "-",
              key.sha256[:12] + "…") for key in keys.keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    if not keys.keys:
        print("(no keys)")


def _rate(key: KeyRecord) -> str:
    if key.rate_per_s is None:
        return "no limit"
    return f"{key.rate_per_s:g}/s burst {key.burst}"
