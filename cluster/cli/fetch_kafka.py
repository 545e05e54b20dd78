"""``eventray fetch-kafka``: download the pinned Kafka jars into the cache (once)."""

from __future__ import annotations

import argparse
import sys

from cluster.local.kafka_jars import dist_dir, ensure_kafka, is_fetched
from cluster.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="fetch again even when cached")


def run(settings: Settings, args: argparse.Namespace) -> int:
    cache = settings.cache_path()
    version = settings.local.kafka_version
    if is_fetched(cache, version) and not args.force:
        print(f"Kafka {version}: cached in {dist_dir(cache, version)}")
        return 0
    ensure_kafka(cache, version, force=args.force, out=sys.stdout)
    return 0
