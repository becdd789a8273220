"""Every API-exposed knob has one range: the OpenAPI schema publishes it, the input serializer and
the API's request parsing enforce it, and the engine's TrainConfig refuses what the API refuses."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import pytest

from tunery.core.errors import InvalidRequest
from tunery.jobs.hyperparameters import parse_requested
from tunery.jobs.models import FineTuningJob
from tunery.jobs.serializers import JobCreateSerializer
from tunery_contract.vocabulary import API_KNOBS, ConfigError, TrainConfig


@pytest.fixture(scope="module")
def schema(django_db_blocker) -> dict[str, Any]:
    from django.test import Client

    with django_db_blocker.unblock():
        response = Client().get("/api/schema/?format=json")
    assert response.status_code == 200
    return json.loads(response.content)


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while True:
        if "$ref" in node:
            node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
        elif "allOf" in node and len(node["allOf"]) == 1:
            node = node["allOf"][0]
        else:
            return node


def published(schema: dict[str, Any], api_name: str) -> dict[str, Any]:
    """The schema of a knob's value (not "auto") as POST /v1/fine_tuning/jobs publishes it."""
    body = schema["paths"]["/v1/fine_tuning/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    node = resolve(schema, body)
    openai = API_KNOBS[api_name][1].openai
    for part in (["hyperparameters"] if openai else []) + api_name.split("."):
        node = resolve(schema, node["properties"][part])
    values = [option for option in node["oneOf"] if option.get("enum") != ["auto"]]
    assert len(values) == 1, node
    return values[0]


def _beside(bound: float, toward: float) -> float:
    """The next float after ``bound``, never a denormal: an in-process training run (CPU) turns
    on flush-to-zero for its thread, and 0's neighbours would read as 0."""
    step = math.nextafter(bound, toward) - bound
    if abs(step) < sys.float_info.min:
        step = math.copysign(sys.float_info.min, toward)
    return bound + step


def boundary_values(value_schema: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """(just inside, just outside) the published range or choices."""
    kind = value_schema["type"]
    if kind == "string" and "enum" not in value_schema:  # a label name
        return ["oos", "out of scope"], ["", " ", 1]
    if kind == "string":
        return list(value_schema["enum"]), ["no-such-choice", 1]
    if kind == "boolean":
        return [True, False], ["yes"]
    if kind == "array":
        return [["query", "value"]], [[], [""], "query"]
    inside: list[Any] = []
    outside: list[Any] = ["big", True]
    integer = kind == "integer"
    low, high = value_schema.get("minimum"), value_schema.get("maximum")
    if low is not None:
        if value_schema.get("exclusiveMinimum"):
            inside.append(_beside(low, math.inf))
            outside.append(low)
        else:
            inside.append(low)
            outside.append(low - 1 if integer else _beside(low, -math.inf))
    if high is not None:
        if value_schema.get("exclusiveMaximum"):
            inside.append(_beside(high, -math.inf))
            outside.append(high)
        else:
            inside.append(high)
            outside.append(high + 1 if integer else _beside(high, math.inf))
    if integer and low is not None:
        outside.append(low + 0.5)
    return inside, outside


def request_body(api_name: str, value: Any) -> dict[str, Any]:
    if API_KNOBS[api_name][1].openai:
        return {"hyperparameters": {api_name: value}}
    if "." in api_name:  # a knob group's object: {"lora": {"r": 8}}, {"search": {"budget_minutes": 5}}
        group, name = api_name.split(".", 1)
        return {group: {name: value}}
    return {api_name: value}


def serializer_accepts(api_name: str, value: Any) -> bool:
    body = {"model": "m", "training_file": "file-x", **request_body(api_name, value)}
    serializer = JobCreateSerializer(data=body)
    return serializer.is_valid()


def api_accepts(api_name: str, value: Any) -> bool:
    """Whether the API's request parsing takes it; a refusal must be a 400 naming the knob."""
    refusal: InvalidRequest | None = None
    try:
        parse_requested(request_body(api_name, value))
    except InvalidRequest as refused:
        refusal = refused
    if refusal is None:
        return True
    assert (refusal.param, refusal.code) == (api_name, "invalid_hyperparameter")
    assert api_name in str(refusal)
    return False


def engine_accepts(api_name: str, value: Any) -> bool | None:
    engine_name = API_KNOBS[api_name][0]
    if engine_name is None:  # learning_rate_multiplier: the API's alone
        return None
    refusal: ConfigError | None = None
    try:
        TrainConfig(**{engine_name: value})
    except ConfigError as refused:
        refusal = refused
    if refusal is None:
        return True
    assert engine_name in str(refusal)
    return False


@pytest.mark.parametrize("api_name", sorted(API_KNOBS))
def test_schema_serializer_api_and_engine_agree_on_every_knob(schema, api_name):
    inside, outside = boundary_values(published(schema, api_name))
    assert inside
    assert outside
    for value in inside:
        assert serializer_accepts(api_name, value), (api_name, value)
        assert api_accepts(api_name, value), (api_name, value)
        assert engine_accepts(api_name, value) in (True, None), (api_name, value)
    for value in outside:
        assert not serializer_accepts(api_name, value), (api_name, value)
        assert not api_accepts(api_name, value), (api_name, value)
        assert engine_accepts(api_name, value) in (False, None), (api_name, value)
    assert serializer_accepts(api_name, "auto")
    assert api_accepts(api_name, "auto")


def test_the_schema_publishes_the_ranges_stated_once(schema):
    assert published(schema, "n_epochs") == {"type": "integer", "minimum": 1, "maximum": 100}
    assert published(schema, "lora.r") == {"type": "integer", "minimum": 1, "maximum": 1024}
    assert published(schema, "precision") == {"type": "string", "enum": ["fp32", "bf16", "fp16"]}
    assert published(schema, "learning_rate")["exclusiveMinimum"] is True


def test_the_endpoint_enforces_the_published_bounds(acme, training_file, create_job):
    assert create_job(acme, training_file, hyperparameters={"n_epochs": 100}).status_code == 200
    refused = create_job(acme, training_file, lora={"r": 1025})
    assert refused.status_code == 400
    assert (refused.json()["error"]["param"], refused.json()["error"]["code"]) == ("lora.r", "invalid_hyperparameter")
    assert FineTuningJob.objects.count() == 1
