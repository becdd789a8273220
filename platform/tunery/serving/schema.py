"""The request bodies of the serving endpoints as JSON Schema, with the limits ``inputs`` enforces.

``inputs`` stays the one place that checks a body; these describe it to clients (and to
Schemathesis), so a body these schemas allow passes ``inputs``."""

from __future__ import annotations

from typing import Any

from tunery.core.schema import NOT_BLANK, RawSchemaBody
from tunery.serving import conf
from tunery.serving.inputs import CHAT_ROLES, DEPLOYMENT_MODES


def _text() -> dict[str, Any]:
    return {**NOT_BLANK, "maxLength": conf.max_chars()}


def _messages() -> dict[str, Any]:
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": list(CHAT_ROLES)},
            "content": {"type": "string", "maxLength": conf.max_chars()},
        },
    }
    return {"type": "array", "items": message, "minItems": 1, "maxItems": conf.max_messages()}


def _generation_properties() -> dict[str, Any]:
    tokens = {"type": "integer", "minimum": 1, "maximum": conf.max_new_tokens(), "nullable": True}
    return {
        "model": {
            **NOT_BLANK,
            "description": "A deployed fine-tuned causal LM ('ft:...') or a deployment's id or name.",
        },
        "max_tokens": tokens,
        "max_completion_tokens": tokens,
        "temperature": {"type": "number", "minimum": 0, "maximum": 2, "nullable": True},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1, "nullable": True},
        "n": {"type": "integer", "enum": [1], "nullable": True, "description": "Only 1 is supported."},
        "stop": {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4},
            ],
            "nullable": True,
        },
        "seed": {"type": "integer", "nullable": True},
        "stream": {"type": "boolean"},
        "stream_options": {
            "type": "object",
            "properties": {"include_usage": {"type": "boolean"}},
            "nullable": True,
        },
    }


class ChatCompletionBody(RawSchemaBody):
    openapi_schema = {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {**_generation_properties(), "messages": _messages()},
    }


class CompletionBody(RawSchemaBody):
    openapi_schema = {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            **_generation_properties(),
            "prompt": {"oneOf": [_text(), {"type": "array", "items": _text(), "minItems": 1, "maxItems": 1}]},
        },
    }


def _words() -> dict[str, Any]:
    """A token classifier's input as words (the training rows' shape), within the text limit."""
    longest = 100
    return {
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": longest, "pattern": r"^\S+$"},
        "minItems": 1,
        "maxItems": max(1, conf.max_chars() // (longest + 1)),
        "description": "Pre-split words for a token-classification model (one tag per word), instead of text.",
    }


def _items(description: str) -> dict[str, Any]:
    field_value = {
        "oneOf": [
            {"type": "string", "pattern": r"^$|\S", "maxLength": conf.max_chars()},
            {"type": "number"},
            {"type": "boolean"},
        ],
        "nullable": True,
    }
    item = {
        "oneOf": [
            _text(),
            {
                "type": "object",
                "properties": {"messages": _messages(), "tokens": _words()},
                "additionalProperties": field_value,
            },
        ]
    }
    return {"type": "array", "items": item, "minItems": 1, "maxItems": conf.max_items(), "description": description}


class PredictionBody(RawSchemaBody):
    openapi_schema = {
        "type": "object",
        "description": "Either inputs (classification, tagging) or user (or query) and items (ranking).",
        "required": ["model"],
        "properties": {
            "model": {
                **NOT_BLANK,
                "description": "A deployed fine-tuned model ('ft:...') or a deployment's id or name.",
            },
            "inputs": _items(
                "Texts, or objects of named text fields (or a conversation under 'messages', or a token "
                "classifier's pre-split words under 'tokens')."
            ),
            "user": _text(),
            "query": _text(),
            "items": _items("The items to rank for user (or query)."),
        },
        "oneOf": [
            {"required": ["inputs"], "not": {"required": ["items"]}},
            {"required": ["items", "user"], "not": {"required": ["inputs"]}},
            {"required": ["items", "query"], "not": {"anyOf": [{"required": ["inputs"]}, {"required": ["user"]}]}},
        ],
    }


def _deployment_settings() -> dict[str, Any]:
    nullable_id = {"type": "string", "minLength": 1, "pattern": r"\S", "nullable": True}
    return {
        "name": {
            "type": "string",
            "pattern": r"^((?!deploy-)[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$",
            "nullable": True,
            "description": "A stable name clients may send as 'model' instead of the deployment id.",
        },
        "challenger": {**nullable_id, "description": "A fine-tuned model id ('ft:...') of the champion's task."},
        "mode": {"type": "string", "enum": list(DEPLOYMENT_MODES)},
        "canary_share": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
        "evaluation_file": {**nullable_id, "description": "The file the promotion gate evaluates on."},
        "gate_margin": {"type": "number", "minimum": 0, "maximum": 1},
    }


class DeploymentBody(RawSchemaBody):
    openapi_schema = {
        "type": "object",
        "required": ["model"],
        "properties": {
            "model": {**NOT_BLANK, "description": "A fine-tuned model id ('ft:...'): the champion."},
            "precision": {"type": "string", "enum": list(conf.PRECISIONS), "nullable": True},
            **_deployment_settings(),
        },
    }


class DeploymentChangeBody(RawSchemaBody):
    openapi_schema = {"type": "object", "properties": _deployment_settings()}
