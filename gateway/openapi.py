"""The OpenAPI 3.1 document of the gateway, built from the contract and response Structs."""

from __future__ import annotations

from typing import Any

import msgspec

from actors.contract import Event
from gateway.config import GatewayConfig
from gateway.decoding import MEDIA_TYPES, SINGLE_MEDIA_TYPES
from gateway.responses import Accepted, ErrorBody, Health, Readiness

_REF = "#/components/schemas/{name}"

_POLICY = """\
Every accepted event (202) was acknowledged by Kafka with acks=all by an idempotent producer;
the response names its topic, partition and offset.

**Batches are all or nothing.** If any event of a batch breaks the contract, the whole batch is
refused with 400 and every problem listed as `{index, field, reason}`; nothing of it is written.
Unknown fields are refused. An `event_id` may appear only once per batch. `index` is the
event's 0-based position in the request (NDJSON: blank lines are not counted).

429 (producer queue full, or too many body bytes in flight) and 503 (Kafka did not acknowledge
within the deadline) carry `Retry-After`. Some events of such a request may nevertheless have
been written: retry with the same event ids, the pipeline drops the duplicates. A 202 is never
sent for an event that Kafka did not acknowledge.

A body must arrive in full within the body timeout of its headers, else 408 and the connection
is closed; nothing of it is written.
"""


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(name=ref)}}}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": _json("ErrorBody")}
    if retry_after:
        response["headers"] = {"Retry-After": {
            "description": "seconds to wait before retrying",
            "schema": {"type": "integer", "minimum": 0}}}
    return response


def openapi_document(config: GatewayConfig) -> dict[str, Any]:
    """The document served at ``/openapi.json``."""
    schemas, components = msgspec.json.schema_components(
        [Event, Accepted, ErrorBody, Health, Readiness], ref_template=_REF)
    components = dict(components)
    components["Event"] = schemas[0]  # the tagged union, by its contract name
    limits = (f"At most {config.max_events_per_request} events and "
              f"{config.max_body_bytes} bytes per request.")
    timeout = (f"the body did not arrive within {config.body_timeout_s:g}s; the connection is "
               "closed and nothing was written")
    request_id_header = {"X-Request-Id": {
        "description": "the request's id, also the eventray-request-id header of its records",
        "schema": {"type": "string"}}}
    accepted = {"description": "accepted: every event acknowledged by Kafka",
                "headers": request_id_header, "content": _json("Accepted")}
    common = {
        "400": _error("the body or an event breaks the contract; nothing was written"),
        "401": _error("API key missing"),
        "403": _error("API key not valid (error forbidden), or an event's account is outside "
                      "the key's accounts (error account_not_allowed: each such event's index "
                      "and account listed); nothing was written"),
        "408": _error(timeout),
        "413": _error("body or event count over the limit, or more events than the API key's "
                      "burst (error over_key_burst); nothing was written. " + limits),
        "415": _error("unsupported Content-Type"),
        "429": _error("the producer queue is full, or the replica holds too many body bytes in "
                      "flight (error gateway_busy, refused before the body is read), or the API "
                      "key is over its rate (error rate_limited: nothing of the request was "
                      "written); retry later", retry_after=True),
        "500": _error("Kafka refused a record with a non-retriable error"),
        "503": _error("Kafka did not acknowledge within the deadline", retry_after=True),
    }
    single_types = [name for name, media in MEDIA_TYPES.items() if media in SINGLE_MEDIA_TYPES]
    event_ref = {"$ref": _REF.format(name="Event")}
    batch_content: dict[str, Any] = {}
    for name, media in MEDIA_TYPES.items():
        if media.name == "NDJSON":
            batch_content[name] = {"schema": {"type": "string",
                                              "description": "one JSON event per line"}}
        else:
            batch_content[name] = {"schema": {"type": "array", "items": event_ref,
                                              "minItems": 1,
                                              "maxItems": config.max_events_per_request}}
    security: list[dict[str, list[str]]] = (
        [{"bearer": []}, {"apiKey": []}] if config.api_keys or config.api_keys_file else [])
    paths: dict[str, Any] = {
        "/v1/events": {"post": {
            "operationId": "postEvent", "summary": "Accept one event",
            "description": limits, "security": security,
            "requestBody": {"required": True, "content": {
                name: {"schema": event_ref} for name in single_types}},
            "responses": {"202": accepted, **common}}},
        "/v1/events/batch": {"post": {
            "operationId": "postEvents", "summary": "Accept a batch of events, all or nothing",
            "description": limits, "security": security,
            "requestBody": {"required": True, "content": batch_content},
            "responses": {"202": accepted, **common}}},
        "/healthz": {"get": {
            "operationId": "healthz", "summary": "The process is up", "security": [],
            "responses": {"200": {"description": "up", "content": _json("Health")}}}},
        "/readyz": {"get": {
            "operationId": "readyz", "summary": "Kafka answers and the events topic exists",
            "security": [],
            "responses": {"200": {"description": "ready", "content": _json("Readiness")},
                          "503": {"description": "not ready", "content": _json("Readiness")}}}},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics", "security": [],
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1",
                                  "content": {"application/json": {
                                      "schema": {"type": "object"}}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "eventray gateway", "version": "1", "description": _POLICY},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
