"""``eventray up``: start the local stack (Kafka, the Snowflake emulator, a Ray head)."""

from __future__ import annotations

import argparse

from cluster.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("Ports and directories come from the [local] and [ray] settings, e.g. "
                     "EVENTRAY_LOCAL__STATE_DIR, EVENTRAY_LOCAL__KAFKA_PORT (0 = any free port), "
                     "EVENTRAY_RAY__DASHBOARD_PORT.")


def run(settings: Settings, args: argparse.Namespace) -> int:
    import logging

    from cluster.local.stack import up

    # Readiness probes would log every poll at INFO.
    for noisy in ("httpx", "snowflake.connector"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    up(settings)
    print("'eventray status' shows what runs; 'eventray down' stops it.")
    return 0
