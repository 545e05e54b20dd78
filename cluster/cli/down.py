"""``eventray down``: stop what ``eventray up`` started (by recorded pid, nothing else)."""

from __future__ import annotations

import argparse

from cluster.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds each service gets after SIGTERM before SIGKILL")


def run(settings: Settings, args: argparse.Namespace) -> int:
    from cluster.local.stack import down

    down(settings, timeout=args.timeout)
    return 0
