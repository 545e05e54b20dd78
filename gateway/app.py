"""The gateway's Starlette app: explicit routes, a lifespan that owns the producer.

``create_app(config)`` builds everything the app needs (decoders, metrics, producer object)
and returns the app; the Kafka client itself is created when the lifespan starts, in the
process that serves. Nothing lives at module level, so the same factory runs under plain
uvicorn and inside a Ray Serve replica.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import repeat
from typing import Final

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from actors.contract import (
    HEADER_ACCEPTED_AT_MS,
    HEADER_CONTENT_TYPE,
    HEADER_REQUEST_ID,
    HEADER_SCHEMA_VERSION,
    RECORD_CONTENT_TYPE,
    SCHEMA_VERSION,
    Event,
    EventCodec,
)
from gateway.auth import ApiKeyCheck, KeyRefusedError, RefusalLog, reload_error
from gateway.body import BodyClaim, BodyReader, InflightBodies
from gateway.config import GatewayConfig
from gateway.decoding import BodyDecoder, parse_media_type
from gateway.exceptions import (
    ClientDisconnectedError,
    KafkaRejectedError,
    KafkaUnavailableError,
    Problem,
    ProducerBusyError,
    ProducerClosedError,
    RequestRejectedError,
)
from gateway.keys import KeyFileError
from gateway.metrics import METRICS_CONTENT_TYPE, MetricsFactory, PrometheusGatewayMetrics
from gateway.openapi import openapi_document
from gateway.producer import DeliveryProducer
from gateway.readiness import KafkaReadiness
from gateway.responses import (
    Accepted,
    DeliveredEvent,
    ErrorBody,
    Health,
    ProblemBody,
    Readiness,
)

log = logging.getLogger(__name__)

JSON: Final = "application/json"
_SCHEMA_VERSION_BYTES: Final = str(SCHEMA_VERSION).encode()
_RECORD_CONTENT_TYPE_BYTES: Final = RECORD_CONTENT_TYPE.encode()

_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._:\-]+$")


class Gateway:
    """The request handlers and the state they share; one per app."""

    def __init__(self, config: GatewayConfig, *, request_id_header: bool = True,
                 metrics: MetricsFactory = PrometheusGatewayMetrics) -> None:
        self.config = config
        self.request_id_header = request_id_header
        self.codec = EventCodec()
        self.decoder = BodyDecoder(self.codec, config.max_events_per_request)
        self.auth = ApiKeyCheck(config.api_keys, config.api_keys_file)
        self.refusal_log = RefusalLog()
        self.producer = DeliveryProducer(config)
        self.readiness = KafkaReadiness(config)
        self.metrics = metrics(self.producer.queue_length)
        self.encoder = msgspec.json.Encoder()
        self.retry_after = str(config.producer.retry_after_s)
        self.inflight = InflightBodies(config.max_inflight_body_bytes)
        self.body = BodyReader(config.max_body_bytes, config.body_timeout_s, self.retry_after)
        self.openapi = msgspec.json.encode(openapi_document(config))

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.producer.start()
        # Everything alive now (the imported modules: Ray's alone are 100k+ objects) lives
        # as long as the process: out of the cyclic GC's reach, a full collection no longer
        # walks it. Measured with Ray imported: 5.8 -> 5.1 us of CPU per event. Serve's
        # throughput-optimized mode freezes at replica start too; this covers plain uvicorn
        # and what the app built since.
        gc.freeze()
        sampler = None
        if self.metrics.sample_interval_s is not None:
            sampler = asyncio.create_task(self._sample_metrics(self.metrics.sample_interval_s))
        deadlines = asyncio.create_task(self.body.deadlines.watch(), name="eventray-body-deadlines")
        keys = None
        if self.config.api_keys_file:
            keys = asyncio.create_task(self._reload_keys(self.config.api_keys_reload_s),
                                       name="eventray-api-keys")
        try:
            yield
        finally:
            deadlines.cancel()
            if keys is not None:
                keys.cancel()
            if sampler is not None:
                sampler.cancel()
            self.readiness.close()
            await self.producer.aclose(self.config.producer.flush_timeout_s)
            self.metrics.sample()  # what was counted since the last sample

    async def _sample_metrics(self, interval_s: float) -> None:
        """Gauges that are pushed, not read at scrape time (Ray metrics under Serve)."""
        while True:
            try:
                self.metrics.sample()
            except Exception:  # a gauge keeps its last value; sampled again next interval
                log.exception("sampling the gateway metrics failed")
            await asyncio.sleep(interval_s)

    async def _reload_keys(self, interval_s: float) -> None:
        """Re-read the keys file: a created or revoked key counts within one interval."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.auth.reload)
            except KeyFileError as exc:
                reload_error(exc)

    # -- events ---------------------------------------------------------------------------

    async def post_event(self, request: Request) -> Response:
        return await self._accept(request.scope["headers"], request.receive, batch=False)

    async def post_batch(self, request: Request) -> Response:
        return await self._accept(request.scope["headers"], request.receive, batch=True)

    async def handle_post(self, scope: Scope, receive: Receive, send: Send, *,
                          batch: bool) -> None:
        """POST /v1/events[/batch] straight from ASGI, without Starlette's middleware, routing
        and request objects around it (they were ~25% of a Serve replica's CPU per 1-event
        request in py-spy)."""
        try:
            response = await self._accept(scope["headers"], receive, batch=batch)
        except Exception:
            # As Starlette's ServerErrorMiddleware: a plain 500, the error goes on to the
            # server's log. Nothing was sent yet: every answer is sent below.
            await send({"type": "http.response.start", "status": 500,
                        "headers": _SERVER_ERROR_HEADERS})
            await send({"type": "http.response.body", "body": _SERVER_ERROR})
            raise
        if response.status_code == 499:  # the client left: nobody to answer
            return
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _accept(self, raw_headers: list[tuple[bytes, bytes]], receive: Receive, *,
                      batch: bool) -> Response:
        route = "/v1/events/batch" if batch else "/v1/events"
        headers = _RequestHeaders(raw_headers)
        request_id = _request_id(headers.request_id)
        events: list[Event] = []
        claim = BodyClaim(self.inflight)
        body: bytes | None = None
        try:
            caller = self.auth.identify(headers.auth) if self.auth.enabled else None
            media = parse_media_type(headers.content_type, batch=batch)
            body = await self.body.read(headers.content_length, receive, claim)
            if batch:
                events = self.decoder.decode_batch(body, media)
            else:
                events = [self.decoder.decode_one(body, media)]
            self.auth.admit(caller, events)  # its accounts and rate, before anything is produced
            response = await self._produce(request_id, events)
        except RequestRejectedError as exc:
            response = self._rejected(request_id, route, exc)
        except ClientDisconnectedError as exc:
            # Nothing was produced and nobody is left to answer: not an error of ours. 499 as
            # Serve and nginx name it; the server drops the answer.
            self._client_left(route, request_id, exc.received, exc.declared)
            return Response(status_code=499)
        except asyncio.CancelledError:
            if body is None:
                # Ray Serve cancels the handler of a request whose client went away, instead
                # of handing it the disconnect, when it notices first.
                self._client_left(route, request_id, None, claim.held or None)
            raise
        except ProducerBusyError as exc:
            response = self._unavailable(request_id, 429, "producer_busy", str(exc), events)
        except (KafkaUnavailableError, ProducerClosedError) as exc:
            log.warning("not acknowledged request_id=%s events=%d: %s",
                        request_id, len(events), exc)
            response = self._unavailable(request_id, 503, "kafka_unavailable", str(exc), events)
        except KafkaRejectedError as exc:
            log.exception("rejected by Kafka request_id=%s events=%d code=%s",
                          request_id, len(events), exc.code)
            self.metrics.refused("kafka_rejected", len(events))
            response = self._error(request_id, 500, "kafka_rejected", str(exc), [])
        finally:
            claim.release()  # answered, refused, timed out, gone or cancelled
        self.metrics.request(route, response.status_code)
        return response

    def _rejected(self, request_id: str, route: str, exc: RequestRejectedError) -> Response:
        self.metrics.refused(exc.error, exc.events)
        if isinstance(exc, KeyRefusedError):
            self.metrics.key_refused(exc.key_name, exc.reason)
            self.refusal_log.refused(exc, request_id)
        response = self._error(request_id, exc.status, exc.error, exc.message, exc.problems)
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status == 408:
            log.info("body timed out request_id=%s route=%s: %s", request_id, route, exc)
        return response

    def _client_left(self, route: str, request_id: str, received: int | None,
                     declared: int | None) -> None:
        self.metrics.client_disconnected(route)
        log.info("client disconnected mid-body request_id=%s route=%s received=%s declared=%s",
                 request_id, route, "?" if received is None else received, declared)

    async def _produce(self, request_id: str, events: list[Event]) -> Response:
        headers = [
            (HEADER_CONTENT_TYPE, _RECORD_CONTENT_TYPE_BYTES),
            (HEADER_REQUEST_ID, request_id.encode()),
            (HEADER_ACCEPTED_AT_MS, str(time.time_ns() // 1_000_000).encode()),
            (HEADER_SCHEMA_VERSION, _SCHEMA_VERSION_BYTES),
        ]
        encode = self.codec.encode
        keys = [event.account_id.encode() for event in events]
        values = [encode(event) for event in events]
        started = time.perf_counter()
        deliveries = await self.producer.produce(keys, values, headers)
        self.metrics.accepted(len(events), time.perf_counter() - started)
        topic = self.producer.topic
        results = list(map(DeliveredEvent, range(len(events)),
                           [event.event_id for event in events], repeat(topic, len(events)),
                           deliveries.partitions, deliveries.offsets))
        body = self.encoder.encode(Accepted(request_id, len(results), results))
        return Response(body, 202, self._id_header(request_id), JSON)

    def _unavailable(self, request_id: str, status: int, error: str, message: str,
                     events: list[Event]) -> Response:
        self.metrics.refused(error, max(len(events), 1))
        response = self._error(request_id, status, error, message, [])
        response.headers["retry-after"] = self.retry_after
        return response

    def _error(self, request_id: str, status: int, error: str, message: str,
               problems: list[Problem]) -> Response:
        body = ErrorBody(request_id, error, message,
                         [ProblemBody(p.index, p.field, p.reason) for p in problems])
        return Response(self.encoder.encode(body), status, self._id_header(request_id), JSON)

    def _id_header(self, request_id: str) -> dict[str, str] | None:
        return {"x-request-id": request_id} if self.request_id_header else None

    # -- operations -----------------------------------------------------------------------

    async def healthz(self, _request: Request) -> Response:
        return Response(self.encoder.encode(Health("ok")), 200, media_type=JSON)

    async def readyz(self, _request: Request) -> Response:
        """Kafka answers and the topic exists (``gateway.readiness``), and the producer runs.
        Reads only the producer's state, on the event loop: it never calls into it."""
        topic = self.producer.topic
        if not self.producer.running:
            return self._not_ready(topic, "the producer is not running")
        try:
            info = await self.readiness.check()
        except KafkaUnavailableError as exc:
            return self._not_ready(topic, str(exc))
        body = Readiness("ready", topic, info.partitions, info.brokers)
        return Response(self.encoder.encode(body), 200, media_type=JSON)

    def _not_ready(self, topic: str, reason: str) -> Response:
        body = Readiness("unavailable", topic, reason=reason)
        return Response(self.encoder.encode(body), 503, {"retry-after": self.retry_after}, JSON)

    async def metrics_text(self, _request: Request) -> Response:
        return Response(self.metrics.render(), 200, media_type=METRICS_CONTENT_TYPE)

    async def openapi_json(self, _request: Request) -> Response:
        return Response(self.openapi, 200, media_type=JSON)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        self.metrics.request("other", exc.status_code)
        response = self._error(uuid.uuid4().hex, exc.status_code, error, str(exc.detail),
                               [Problem(None, "path", f"{request.method} {request.url.path}")])
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    def routes(self) -> list[Route]:
        return [
            Route("/v1/events", self.post_event, methods=["POST"]),
            Route("/v1/events/batch", self.post_batch, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
            Route("/openapi.json", self.openapi_json, methods=["GET"]),
        ]


_SERVER_ERROR: Final = b"Internal Server Error"
_SERVER_ERROR_HEADERS: Final = [(b"content-length", str(len(_SERVER_ERROR)).encode()),
                                (b"content-type", b"text/plain; charset=utf-8")]


class _RequestHeaders:
    """The request headers the event routes read, from the raw ASGI list in one pass (the
    first of repeated ones, as Starlette's ``Headers.get``)."""

    __slots__ = ("auth", "content_length", "content_type", "request_id")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.content_type: str | None = None
        self.content_length: str | None = None
        self.request_id: str | None = None
        self.auth: dict[str, str] = {}
        for name, value in raw:
            if name == b"content-type":
                if self.content_type is None:
                    self.content_type = value.decode("latin-1")
            elif name == b"content-length":
                if self.content_length is None:
                    self.content_length = value.decode("latin-1")
            elif name == b"x-request-id":
                if self.request_id is None:
                    self.request_id = value.decode("latin-1")
            elif name in _AUTH_HEADERS:
                self.auth.setdefault(name.decode("latin-1"), value.decode("latin-1"))


_AUTH_HEADERS: Final = frozenset({b"authorization", b"x-api-key"})


class GatewayApp:
    """The ASGI app: ``POST /v1/events`` and ``/v1/events/batch`` go straight to the gateway;
    everything else (other routes and methods, errors, lifespan) to the Starlette app. Shows
    Starlette's ``routes``, ``router`` and ``state`` (Ray Serve names a request's route from
    them; tests reach the gateway as ``app.state.gateway``)."""

    def __init__(self, gateway: Gateway, starlette: Starlette) -> None:
        self.gateway = gateway
        self.starlette = starlette
        self.state = starlette.state
        self.routes = starlette.routes
        self.router = starlette.router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):  # mounted under a prefix (Serve's route_prefix)
                path = path[len(root):]
            batch = _EVENT_ROUTES.get(path)
            if batch is not None:
                await self.gateway.handle_post(scope, receive, send, batch=batch)
                return
        await self.starlette(scope, receive, send)


_EVENT_ROUTES: Final = {"/v1/events": False, "/v1/events/batch": True}  # path -> batch


def _request_id(offered: str | None) -> str:
    """The caller's X-Request-Id when it is sane (Serve and HAProxy set one), else a new id."""
    if offered and len(offered) <= 128 and _REQUEST_ID.match(offered):
        return offered
    return uuid.uuid4().hex


def create_app(config: GatewayConfig, *, request_id_header: bool = True,
               metrics: MetricsFactory = PrometheusGatewayMetrics) -> GatewayApp:
    """The gateway app. Build it in the process that serves it (it holds msgspec decoders).

    Each request's id is its X-Request-Id header when sane, else a new one; it is written to
    every record and answered as X-Request-Id (unless ``request_id_header`` is False, for
    hosts such as Ray Serve that add that header themselves). ``metrics`` builds the metrics
    recorder (``gateway.metrics``): Prometheus text at /metrics by default, Ray metrics on
    Serve."""
    gateway = Gateway(config, request_id_header=request_id_header, metrics=metrics)
    app = Starlette(
        routes=gateway.routes(),
        middleware=[],
        exception_handlers={HTTPException: gateway.http_error},
        lifespan=gateway.lifespan,
    )
    app.state.gateway = gateway
    return GatewayApp(gateway, app)
