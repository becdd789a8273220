"""Parsing and checking serving request bodies. Every refusal names the offending field
(``param``) and says what was expected, before any model is touched."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tunery.core.errors import InvalidRequest
from tunery.serving import conf

CHAT_ROLES = ("system", "developer", "user", "assistant")
#: The input field of a token classifier's pre-split words (the training rows' ``tokens``).
TOKENS = "tokens"


def _invalid(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def require_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    return data


def model_id(data: dict[str, Any]) -> str:
    value = data.get("model")
    if not isinstance(value, str) or not value.strip():
        raise _invalid("model is required: the id of a deployed fine-tuned model ('ft:...').", "model", "missing_model")
    return value.strip()


def deployment_precision(data: dict[str, Any]) -> str:
    """A deployment's optional ``precision`` ("fp32", "int8" or "bf16"); "" when absent (the server's default)."""
    value = data.get("precision")
    if value is None:
        return ""
    if value not in conf.PRECISIONS:
        raise _invalid(f"precision must be one of {', '.join(conf.PRECISIONS)}, got {value!r}.", "precision")
    return str(value)


def text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{param} must be a string, got {type(value).__name__}.", param)
    if not value.strip():
        raise _invalid(f"{param} is empty.", param)
    limit = conf.max_chars()
    if len(value) > limit:
        raise _invalid(f"{param} has {len(value)} characters; at most {limit} are allowed.", param, "input_too_long")
    return value


def item_list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise _invalid(f"{param} must be a list, got {type(value).__name__}.", param)
    if not value:
        raise _invalid(f"{param} is empty.", param)
    limit = conf.max_items()
    if len(value) > limit:
        raise _invalid(
            f"{param} has {len(value)} items; at most {limit} are allowed per request.", param, "too_many_items"
        )
    return value


@dataclass(frozen=True)
class PredictionRequest:
    model: str
    #: Encoder inputs: each a mapping of the pack's column names (or "text"/"text_pair").
    inputs: list[dict[str, Any]] | None = None
    #: Ranking call: one query (the user) scored against each item.
    query: str | None = None
    items: list[dict[str, Any]] | None = None
    #: The whole body: generation settings (max_tokens, temperature, ...) for causal LMs.
    body: dict[str, Any] | None = None


def prediction_request(data: Any) -> PredictionRequest:
    body = require_object(data)
    model = model_id(body)
    ranking = "items" in body
    if ranking == ("inputs" in body):
        raise _invalid("Pass either inputs (a list of texts or objects) or a ranking call (user + items).", "inputs")
    if not ranking:
        inputs = [_input_item(item, f"inputs[{i}]") for i, item in enumerate(item_list(body["inputs"], "inputs"))]
        return PredictionRequest(model, inputs=inputs, body=body)
    query_param = "user" if "user" in body else "query"
    query = text(body.get(query_param), query_param)
    items = [_input_item(item, f"items[{i}]") for i, item in enumerate(item_list(body["items"], "items"))]
    return PredictionRequest(model, query=query, items=items, body=body)


def _input_item(value: Any, param: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {"text": text(value, param)}
    if not isinstance(value, dict):
        raise _invalid(f"{param} must be a string or an object, got {type(value).__name__}.", param)
    for key, field in value.items():
        if key == "messages":  # a conversation, for a causal LM's prediction
            value = {**value, "messages": list(chat_messages({"messages": field}, f"{param}.messages"))}
        elif key == TOKENS and isinstance(field, list):  # pre-split words, for a token classifier
            value = {**value, key: token_list(field, f"{param}.{key}")}
        elif isinstance(field, str):
            if field:
                text(field, f"{param}.{key}")
        elif field is not None and not isinstance(field, (int, float, bool)):
            raise _invalid(
                f"{param}.{key} must be a string or a number (a list of words goes under '{TOKENS}'), "
                f"got {type(field).__name__}.",
                f"{param}.{key}",
            )
    return dict(value)


def token_list(value: list[Any], param: str) -> list[str]:
    """Pre-split words, as token-classification training rows hold them: non-empty strings without
    whitespace, as many characters in all as one input text may have."""
    if not value:
        raise _invalid(f"{param} is empty.", param)
    for index, word in enumerate(value):
        if not isinstance(word, str) or not word or any(c.isspace() for c in word):
            raise _invalid(
                f"{param}[{index}] must be a non-empty word without spaces, got {word!r:.40}.", f"{param}[{index}]"
            )
    limit = conf.max_chars()
    total = sum(len(word) for word in value) + len(value) - 1
    if total > limit:
        raise _invalid(f"{param} has {total} characters; at most {limit} are allowed.", param, "input_too_long")
    return list(value)


@dataclass(frozen=True)
class GenerationParameters:
    model: str
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(f"{name} must be a number.", name)
    if not low <= value <= high:
        raise _invalid(f"{name} must be between {low} and {high}.", name)
    return float(value)


def generation_parameters(body: dict[str, Any]) -> GenerationParameters:
    model = model_id(body)
    limit = conf.max_new_tokens()
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(name)
    if max_tokens is None:
        max_tokens = min(256, limit)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= limit:
        raise _invalid(f"{name} must be an integer between 1 and {limit}.", name)
    n = body.get("n")
    if n not in (None, 1):
        raise _invalid("Only n=1 is supported.", "n")
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else stop or ()
    if not isinstance(stops, (list, tuple)) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise _invalid("stop must be a string or a list of up to 4 non-empty strings.", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _invalid("seed must be an integer.", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("stream must be a boolean.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _invalid("stream_options must be an object.", "stream_options")
    return GenerationParameters(
        model=model,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1.0,
        stop=tuple(stops),
        seed=seed,
        stream=stream,
        include_usage=bool(options.get("include_usage")),
    )


def chat_messages(body: dict[str, Any], where: str = "messages") -> tuple[dict[str, str], ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid(f"{where} must be a non-empty list of {{role, content}} objects.", where)
    if len(messages) > conf.max_messages():
        raise _invalid(f"At most {conf.max_messages()} messages are allowed.", where, "too_many_items")
    parsed = []
    for i, message in enumerate(messages):
        param = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise _invalid(f"{param} must be an object.", param)
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise _invalid(f"{param}.role must be one of {', '.join(CHAT_ROLES)}.", f"{param}.role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text parts can be served
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise _invalid(f"{param}.content may only hold text parts.", f"{param}.content")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise _invalid(f"{param}.content must be a string.", f"{param}.content")
        if len(content) > conf.max_chars():
            raise _invalid(
                f"{param}.content has {len(content)} characters; at most {conf.max_chars()} are allowed.",
                f"{param}.content",
                "input_too_long",
            )
        parsed.append({"role": "system" if role == "developer" else role, "content": content})
    return tuple(parsed)


def completion_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise _invalid("Only one prompt per request is supported.", "prompt")
    return text(prompt, "prompt")


# -- deployment settings -------------------------------------------------------------------------

#: A deployment's stable name: letters, digits, '.', '_' and '-', starting with a letter or digit.
DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEPLOYMENT_MODES = ("shadow", "canary")


class Unset:
    """A field the body did not mention (as opposed to one it set to null)."""


UNSET = Unset()


@dataclass(frozen=True)
class DeploymentChanges:
    """What a create or PATCH body asks to change (UNSET: leave as it is)."""

    name: str | Unset = UNSET
    evaluation_file: str | Unset | None = UNSET
    gate_margin: float | Unset = UNSET
    challenger: str | Unset | None = UNSET
    mode: str | Unset = UNSET
    canary_share: float | Unset = UNSET

    @property
    def touches_challenger(self) -> bool:
        return not all(isinstance(v, Unset) for v in (self.challenger, self.mode, self.canary_share))


def _share(data: dict[str, Any], field: str, low: float, low_inclusive: bool) -> float | Unset:
    if field not in data:
        return UNSET
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{field} must be a number, got {type(value).__name__}.", field)
    if not (low <= value <= 1) or (value == low and not low_inclusive):
        bound = f"{'from' if low_inclusive else 'above'} {low:g} to 1"
        raise _invalid(f"{field} must be a number {bound}, got {value!r}.", field)
    return float(value)


def deployment_changes(data: dict[str, Any]) -> DeploymentChanges:
    """The deployment settings in a body (name, evaluation_file, gate_margin, challenger, mode, canary_share)."""
    name: str | Unset = UNSET
    if "name" in data:
        value = data["name"]
        if value is None or value == "":
            name = ""
        elif not isinstance(value, str) or not DEPLOYMENT_NAME.fullmatch(value) or value.startswith("deploy-"):
            raise _invalid(
                "name must be 1-64 letters, digits, '.', '_' or '-', start with a letter or digit and not "
                f"with 'deploy-' (deployment ids do), got {value!r}.",
                "name",
            )
        else:
            name = value
    evaluation_file: str | Unset | None = UNSET
    if "evaluation_file" in data:
        value = data["evaluation_file"]
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise _invalid("evaluation_file must be a file id or null.", "evaluation_file")
        evaluation_file = value.strip() if isinstance(value, str) else None
    challenger: str | Unset | None = UNSET
    if "challenger" in data:
        value = data["challenger"]
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise _invalid("challenger must be a fine-tuned model id ('ft:...') or null.", "challenger")
        challenger = value.strip() if isinstance(value, str) else None
    mode: str | Unset = UNSET
    if "mode" in data:
        if data["mode"] not in DEPLOYMENT_MODES:
            raise _invalid(f"mode must be one of {', '.join(DEPLOYMENT_MODES)}, got {data['mode']!r}.", "mode")
        mode = str(data["mode"])
    return DeploymentChanges(
        name=name,
        evaluation_file=evaluation_file,
        gate_margin=_share(data, "gate_margin", 0.0, True),
        challenger=challenger,
        mode=mode,
        canary_share=_share(data, "canary_share", 0.0, False),
    )
