"""``eventray bench gateway|pipeline|recovery|window|autoscale|latency``: benchmarks that
print ratios against raw baselines measured in the same run. Each benchmark module exposes
``add_arguments`` and ``run``."""

from __future__ import annotations

import argparse
import importlib

from cluster.settings import Settings

BENCHMARKS: dict[str, tuple[str, str]] = {
    "gateway": ("cluster.bench.gateway", "HTTP -> Kafka through Serve vs plain uvicorn vs produce"),
    "pipeline": ("cluster.bench.pipeline", "topic -> rows: pipeline vs raw consume vs raw sink"),
    "recovery": ("cluster.bench.recovery",
                 "a consumer's start on a full retry window vs raw fetch and tail read"),
    "autoscale": ("cluster.bench.autoscale",
                  "steady, burst, steady load: lag, sink pool, Ray nodes, accept-to-row p99"),
    "window": ("cluster.bench.window",
               "one consumer's retry window on disk: bytes/key, RSS, lookups, restore"),
    "latency": ("cluster.bench.latency",
                "open-loop Poisson load at shares of the measured maximum: ack and "
                "accept-to-row latency percentiles, lost, duplicated"),
    "warehouse": ("cluster.bench.warehouse",
                  "the sink's write transaction per table shape: emulator CPU per row vs DuckDB"),
    "consumer": ("cluster.bench.consumer",
                 "a partition consumer's CPU per event by stage, without Ray, vs raw consume"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (module_name, help_text) in BENCHMARKS.items():
        bench_parser = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).add_arguments(bench_parser)


def run(settings: Settings, args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHMARKS[args.benchmark][0])
    result: int = module.run(settings, args)
    return result
