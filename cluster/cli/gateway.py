"""``eventray gateway``: deploy the HTTP gateway onto the running Ray instance (Ray Serve).

HAProxy ingress and throughput-optimized mode must be in the Ray cluster's environment when it
starts (``eventray up`` and the KubeRay manifest set them); this command cannot add them later.
"""

from __future__ import annotations

import argparse
import logging

from cluster.settings import Settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local", action="store_true",
                        help="point the settings at the local stack started by 'eventray up'")
    parser.add_argument("--address", help="Ray address (default: settings ray.address)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    import ray

    from cluster.local.stack import stack_settings
    from gateway.serve_app import deploy

    if args.local:
        settings = stack_settings(settings)
    if args.address:
        settings = settings.with_overrides({"ray.address": args.address})
    settings.connect_ray(log_to_driver=False, logging_level=logging.WARNING)
    try:
        url = deploy(settings.gateway_config())
    finally:
        ray.shutdown()  # the deployment lives on in the cluster
    print(f"gateway deployed: {url}  (POST {url}/v1/events, {url}/v1/events/batch; "
          f"docs {url}/openapi.json)")
    return 0
