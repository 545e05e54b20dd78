"""``python -m cluster.job``: the pipeline as a Ray job.

What ``ray job submit --working-dir . -- python -m cluster.job`` runs: load the settings,
connect to the cluster, start the pipeline (supervisor, sinks, consumers; all detached), then
log its status every ``--interval`` seconds until SIGTERM/SIGINT. The detached actors keep
running after the job ends unless ``--stop-on-exit``, or ``--stop-on-sigint`` and the job got
SIGINT (the KubeRay RayJob: ``ray job stop`` sends SIGINT there, while a head pod shutting down
must not take the pipeline with it); ``--once`` returns right after the start.
An invalid setting, or Kafka or Snowflake not answering where the settings say
(``cluster.preflight``), ends the job with exit code 1 and one line naming the setting.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from actors.exceptions import EventrayError
from cluster.pipeline_status import format_status
from cluster.settings import load_settings
from cluster.supervisor import get_status, start_pipeline, stop_pipeline

log = logging.getLogger("cluster.job")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cluster.job",
                                     description="start the eventray pipeline on a Ray cluster")
    parser.add_argument("--config", help="settings TOML (default: $EVENTRAY_CONFIG)")
    parser.add_argument("--once", action="store_true", help="exit once the pipeline is ready")
    parser.add_argument("--stop-on-exit", action="store_true",
                        help="stop the pipeline's actors when the job ends")
    parser.add_argument("--stop-on-sigint", action="store_true",
                        help="stop the pipeline's actors when the job gets SIGINT (what `ray job "
                             "stop` sends with RAY_JOB_STOP_SIGNAL=SIGINT); on SIGTERM, e.g. "
                             "its node shutting down, they keep running")
    parser.add_argument("--interval", type=float, default=30.0,
                        help="seconds between status logs")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A job's entry point owns its process, so configuring logging here is ours to do.
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The start-up probe's login would log the connector's version banner at INFO.
    logging.getLogger("snowflake.connector").setLevel(logging.WARNING)
    try:
        return run(args)
    except EventrayError as exc:
        # An invalid setting or a service that does not answer: the message names the setting;
        # a traceback through the actors would only bury it.
        print(f"python -m cluster.job: error: {exc}", file=sys.stderr, flush=True)
        return 1


def run(args: argparse.Namespace) -> int:
    import ray

    settings = load_settings(args.config)
    config = settings.pipeline_config()
    settings.connect_ray()
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal=%s: leaving", signal.Signals(signum).name)
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        start_pipeline(config)
        log.info("pipeline started topic=%s namespace=%s", config.topics.events,
                 config.namespace)
        while not args.once and not stop.wait(args.interval):
            try:
                status = get_status(config)
            except (EventrayError, ray.exceptions.RayError) as exc:
                log.warning("status unavailable: %s", exc)
                continue
            log.info("status\n%s", format_status(status) if status else "no supervisor")
    finally:
        if args.stop_on_exit or (args.stop_on_sigint and signal.SIGINT in received):
            stop_pipeline(config)
            log.info("pipeline stopped")
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
