"""The ``eventray`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(settings, args) -> int``; this module only parses, loads settings and dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Protocol

from actors.exceptions import EventrayError
from cluster.settings import load_settings

log = logging.getLogger(__name__)


class Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, settings: object, args: argparse.Namespace) -> int: ...


# name -> (module, help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch-kafka": ("cluster.cli.fetch_kafka", "download the pinned Kafka jars (cached)"),
    "up": ("cluster.cli.up", "start the local stack: Kafka, the Snowflake emulator, Ray"),
    "down": ("cluster.cli.down", "stop what 'up' started"),
    "status": ("cluster.cli.status", "what runs, and per-partition lag of the pipeline"),
    "stop": ("cluster.cli.stop", "stop the pipeline's actors (the stack keeps running)"),
    "logs": ("cluster.cli.logs", "print or follow the log of a service or actor"),
    "dlq": ("cluster.cli.dlq", "dead letters: list, show, replay"),
    "gateway": ("cluster.cli.gateway", "deploy the HTTP gateway onto the running Ray instance"),
    "run": ("cluster.cli.run", "the whole job on the local stack, with a generated workload"),
    "bench": ("cluster.cli.bench", "benchmarks: 'bench gateway|pipeline|recovery|window'"),
    "chaos": ("cluster.cli.chaos", "faults under load on the local stack, every event counted"),
    "keys": ("cluster.cli.keys", "the gateway's scoped API keys: create, list, revoke"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (a broken or heavy module elsewhere
    never stops another command, and ``eventray --help`` stays fast)."""
    parser = argparse.ArgumentParser(prog="eventray", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="settings TOML file (default: $EVENTRAY_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            _load(module_name).add_arguments(command_parser)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if arg in COMMANDS), None)


def _load(module_name: str) -> Command:
    module: Command = importlib.import_module(module_name)
    return module


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_chosen_command(arguments)).parse_args(arguments)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # Per-request / per-connection chatter from client libraries drowns the progress lines.
        for noisy in ("httpx", "snowflake.connector", "ray"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = load_settings(args.config)
        return _load(COMMANDS[args.command][0]).run(settings, args)
    except EventrayError as exc:
        print(f"eventray {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `eventray dlq list | head`: the reader left. Exit quietly, as Unix tools do, and keep
        # the interpreter's final flush of stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
