"""The gateway as a Serve application builder, for Serve's config files (KubeRay ``serveConfigV2``,
``serve deploy``): ``import_path: cluster.gateway_app:app``.

Serve calls ``app(args)`` with the application's ``args`` as plain data. The gateway's config
Struct is built from the settings as every eventray process reads them (defaults < the
``EVENTRAY_CONFIG`` file < ``EVENTRAY_*`` variables, which carry the secrets in a pod), then
``args`` on top: dotted setting names, e.g. ``{"gateway.producer.linger_ms": 10}``. The builder
lives here rather than in ``gateway/`` because reading the settings tree is ``cluster``'s job
(``gateway`` never imports ``cluster``); the deployment itself is ``gateway.serve_app``'s.

Replica counts, autoscaling and ``ray_actor_options`` set in the config file's ``deployments``
entry named ``gateway`` override what the settings say (Serve's own precedence), as does the
file's ``http_options`` for ``gateway.host``/``gateway.port``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from actors.durability import check_durability
from actors.exceptions import ConfigError
from cluster.settings import Settings, load_settings
from gateway.serve_app import build_application

log = logging.getLogger(__name__)


def gateway_settings(args: Mapping[str, Any], base: Settings | None = None) -> Settings:
    """The settings with the application's ``args`` (dotted names) applied; ``ConfigError``
    names an unknown or invalid one."""
    if not isinstance(args, Mapping):
        raise ConfigError(f"application args must be a mapping of dotted settings, got "
                          f"{type(args).__name__}")
    settings = base if base is not None else load_settings()
    return settings.with_overrides({str(key): value for key, value in args.items()})


def app(args: dict[str, Any]) -> Any:
    """The Serve application builder (one parameter: the ``args`` dict). Refuses a topic whose
    replication makes acks=all meaningless (``DurabilityError``) unless ``topics.durability`` is
    local, so the deploy fails instead of accepting events it could lose."""
    config = gateway_settings(args).gateway_config()
    check_durability(config.kafka, config.topics, [config.topics.events])
    log.info("gateway application built app=%s topic=%s bootstrap=%s", config.serve.app_name,
             config.topics.events, config.kafka.bootstrap_servers)
    return build_application(config)
