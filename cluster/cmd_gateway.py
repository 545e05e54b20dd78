"""``eventray gateway``: deploy the HTTP gateway onto the running Ray instance (Ray Serve).

HAProxy ingress and throughput-optimized mode must be in the Ray cluster's environment when it
starts (``eventray up`` and the KubeRay manifest set them); this command cannot add them later.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging

from cluster.settings import Settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local", action="store_true",
                        help="point the settings at the local stack started by 'eventray up'")
    parser.add_argument("--address", help="Ray address (default: settings ray.address)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    import ray

    from gateway.serve_app import deploy

    if args.local:
        if importlib.util.find_spec("cluster.stack") is None:
            log.warning("cluster.stack is not available; using the settings as given")
        else:
            settings = importlib.import_module("cluster.stack").stack_settings(settings)
    address = args.address or settings.ray.address
    ray.init(address=address, namespace=settings.ray.namespace, log_to_driver=False,
             logging_level=logging.WARNING)
    try:
        url = deploy(settings.gateway_config())
    finally:
        ray.shutdown()  # the deployment lives on in the cluster
    print(f"gateway deployed: {url}  (POST {url}/v1/events, {url}/v1/events/batch; "
          f"docs {url}/openapi.json)")
    return 0
