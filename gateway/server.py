"""Run the gateway app under plain uvicorn: in a thread (tests) or as a process (benchmarks).

``serve_uvicorn(config)`` is a context manager that starts the app on ``config.host`` and
``config.port`` (0 picks a free port) in a background thread and yields its base URL;
leaving it shuts the server down (lifespan shutdown flushes the producer).

``python -m gateway.server`` reads a JSON ``GatewayConfig`` on stdin (secrets in clear), serves
it, and prints ``listening on <url>`` once the socket is bound.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from actors.durability import check_durability
from actors.secret import Secret, secret_dec_hook
from gateway.app import GatewayApp, create_app
from gateway.config import GatewayConfig
from gateway.exceptions import GatewayError

log = logging.getLogger(__name__)


def build_server(config: GatewayConfig, *, log_level: str = "warning",
                 app: GatewayApp | None = None) -> Any:
    """A ``uvicorn.Server`` for the app (``create_app(config)`` unless given; not started)."""
    import uvicorn

    uv_config = uvicorn.Config(
        app if app is not None else create_app(config), host=config.host, port=config.port,
        log_level=log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(uv_config)


def bound_url(server: Any) -> str:
    """The base URL of a started server (resolves port 0)."""
    sock = server.servers[0].sockets[0]
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


@contextmanager
def serve_uvicorn(config: GatewayConfig, *, start_timeout_s: float = 30.0,
                  app: GatewayApp | None = None) -> Iterator[str]:
    """Serve the app in a background thread; yield its base URL; stop it on exit.

    Pass ``app`` (from ``create_app(config)``) to keep a handle on it, e.g. its
    ``app.state.gateway``. Refuses a topic whose replication makes acks=all meaningless
    (``DurabilityError``) unless ``topics.durability`` is local."""
    check_durability(config.kafka, config.topics, [config.topics.events])
    server = build_server(config, app=app)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:
            errors.append(exc)
            raise

    thread = threading.Thread(target=run, name="eventray-gateway-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if errors or not thread.is_alive():
            raise GatewayError(f"the gateway did not start: {errors[0] if errors else 'exited'}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise GatewayError(f"the gateway did not start within {start_timeout_s:g}s")
        time.sleep(0.02)
    try:
        yield bound_url(server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def encode_config(config: GatewayConfig) -> bytes:
    """JSON for ``python -m gateway.server`` (secrets revealed: pipe it, never log it)."""

    def reveal(obj: Any) -> Any:
        if isinstance(obj, Secret):
            return obj.reveal()
        raise NotImplementedError(type(obj))

    return msgspec.json.encode(config, enc_hook=reveal)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve the gateway under plain uvicorn; "
                                                 "reads a JSON GatewayConfig on stdin")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = msgspec.json.decode(sys.stdin.buffer.read(), type=GatewayConfig,
                                 dec_hook=secret_dec_hook)
    check_durability(config.kafka, config.topics, [config.topics.events])
    server = build_server(config, log_level=args.log_level)

    def announce_when_started() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.01)
        if server.started:
            print(f"listening on {bound_url(server)}", flush=True)

    threading.Thread(target=announce_when_started, daemon=True).start()
    server.run()  # uvicorn's own loop setup (uvloop when installed), as Serve replicas use
    return 0


if __name__ == "__main__":
    sys.exit(main())
