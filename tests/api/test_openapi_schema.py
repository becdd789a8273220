"""The published schema says what the API does (the quick part; test_schemathesis.py runs it all)."""

from __future__ import annotations

import pytest


@pytest.fixture
def schema(api) -> dict:
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    return schema["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else node


LISTS = [
    "/v1/files",
    "/v1/fine_tuning/jobs",
    "/v1/batches",
    "/v1/api_keys",
    "/v1/models",
    "/v1/verticals",
    "/v1/deployments",
]


@pytest.mark.parametrize("path", LISTS)
def test_lists_are_documented_as_the_list_object(schema, path):
    ok = schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    body = resolve(schema, ok)
    assert body["type"] == "object"
    assert {"object", "data", "has_more"} <= set(body["required"])
    assert body["properties"]["data"]["type"] == "array"


def test_page_parameters_carry_the_enforced_ranges(schema):
    parameters = {p["name"]: p["schema"] for p in schema["paths"]["/v1/fine_tuning/jobs"]["get"]["parameters"]}
    assert (parameters["limit"]["minimum"], parameters["limit"]["maximum"]) == (1, 100)
    files = {p["name"]: p["schema"] for p in schema["paths"]["/v1/files"]["get"]["parameters"]}
    assert files["order"]["enum"] == ["asc", "desc"]


def test_bodies_carry_their_constraints(schema):
    upload = schema["components"]["schemas"]["FileUpload"]["properties"]["file"]
    assert upload["format"] == "binary"
    chat = schema["components"]["schemas"]["ChatCompletionBody"]
    assert set(chat["required"]) == {"model", "messages"}
    assert chat["properties"]["messages"]["minItems"] == 1
    assert chat["properties"]["model"]["pattern"] == r"\S"
    assert "future" in schema["components"]["schemas"]["ApiKeyCreate"]["properties"]["expires_at"]["description"]


def test_every_operation_documents_openai_errors(schema):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status in ("400", "401", "403", "404", "429"):
                error = operation["responses"][status]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/Error"}, (method, path, status)
            if "requestBody" in operation:
                assert {"413", "415"} <= set(operation["responses"]), (method, path)


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=", "order=", "order=up"])
def test_out_of_range_page_parameters_are_refused(api, acme, query):
    response = api.get(f"/v1/files?{query}" if "order" in query else f"/v1/fine_tuning/jobs?{query}", **acme.headers)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["type"] == "invalid_request_error"
