from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from starlette.routing import Route

from actors.secret import Secret
from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.openapi import openapi_document

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def check_openapi_structure(doc: dict[str, Any]) -> None:
    """The parts of the OpenAPI 3.1 specification a client generator relies on."""
    assert doc["openapi"].startswith("3.")
    assert {"title", "version"} <= doc["info"].keys()
    operation_ids = []
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        assert item.keys() <= HTTP_METHODS
        for operation in item.values():
            operation_ids.append(operation["operationId"])
            assert operation["responses"]
            for status, response in operation["responses"].items():
                assert status.isdigit() and 100 <= int(status) < 600
                assert response["description"]
                for media in response.get("content", {}).values():
                    assert "schema" in media
            for requirement in operation.get("security", []):
                assert requirement.keys() <= doc["components"]["securitySchemes"].keys()
    assert len(operation_ids) == len(set(operation_ids))
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref


@pytest.mark.parametrize("keys", [[], [Secret("k")]])
def test_the_document_is_openapi_3_and_lists_every_route(keys: list[Secret]) -> None:
    config = GatewayConfig(api_keys=keys)
    doc = openapi_document(config)
    check_openapi_structure(doc)
    app = create_app(config)
    served = {(route.path, method.lower()) for route in app.routes
              if isinstance(route, Route) for method in route.methods or () if method != "HEAD"}
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert documented == served
    batch = doc["paths"]["/v1/events/batch"]["post"]
    assert {"202", "400", "401", "403", "413", "415", "429", "503"} <= batch["responses"].keys()
    assert "all or nothing" in doc["info"]["description"]
    assert bool(batch["security"]) == bool(keys)
