"""The one map from the API's job fields to the training engine's config names.

Clients send OpenAI's ``hyperparameters`` (``n_epochs``, ``batch_size``,
``learning_rate_multiplier``; also accepted under ``method.supervised.hyperparameters``, or
``method.dpo.hyperparameters`` with DPO's ``beta``: :func:`method_overrides`) and
Tunery's extra body fields (``training_type``, ``lora``: {r, alpha, dropout, target_modules},
``gradient_accumulation_steps``, ``precision``, ...). Every knob accepts ``"auto"``. The knobs, their
API names and ranges are the contract's vocabulary (``tunery_contract.vocabulary``); this module
checks a request against them (a 400 naming the parameter) and maps it to the engine's
``TrainConfig`` names, so ``requested_hyperparameters`` and ``resolved_config`` share one vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunery.core.errors import InvalidRequest
from tunery_contract import TaskDefinition, TaskKind
from tunery_contract.vocabulary import API_KNOBS, AUTO, Knob
from tunery_contract.vocabulary import KNOBS as ENGINE_KNOBS

#: API name -> knob, for every knob a client may set ("n_epochs", "lora.r", ...).
KNOBS: dict[str, Knob] = {api_name: knob for api_name, (_, knob) in API_KNOBS.items()}
#: Tunery's knobs (extra body fields, ``lora`` ones inside the ``lora`` object); the rest are OpenAI's.
TUNERY_KNOBS: tuple[str, ...] = tuple(api_name for api_name, knob in KNOBS.items() if not knob.openai)
#: API name -> engine name, for every knob that maps one to one.
ENGINE_NAMES = {api_name: engine for api_name, (engine, _) in API_KNOBS.items() if engine}
#: Inside ``hyperparameters`` the engine's names are accepted too (``lora_r`` for ``lora.r``).
KNOB_BY_ENGINE_NAME = {engine: api for api, engine in ENGINE_NAMES.items()}
#: Knobs set as an object of their own ("lora": {"r": 8}, "search": {"budget_minutes": 10}).
KNOB_GROUPS: tuple[str, ...] = tuple(dict.fromkeys(name.split(".")[0] for name in KNOBS if "." in name))
LORA_SETTINGS = tuple(name.removeprefix("lora.") for name in KNOBS if name.startswith("lora."))
SEED_RANGE = (int(ENGINE_KNOBS["seed"].minimum or 0), int(ENGINE_KNOBS["seed"].maximum or 0))
GPU_RANGE = (0, 64)
#: OpenAI's ``method.type`` values Tunery trains (the engine's ``training_method`` choices).
METHODS: tuple[str, ...] = ENGINE_KNOBS["training_method"].choices
#: Knobs whose null a request keeps (it switches the task's default off); other nulls mean "the default".
_NULL_IS_A_VALUE = frozenset({"out_of_scope_label"})


def parse_knob(api_name: str, value: Any) -> Any:
    """A knob's value checked against the vocabulary ("auto" is accepted for every knob: the
    task's default, then the engine's rule, decides)."""
    knob = KNOBS[api_name]
    problem = knob.problem(value, auto=True)
    if problem is not None:
        raise InvalidRequest(f"{api_name} {problem}.", param=api_name, code="invalid_hyperparameter")
    return knob.normalise(value)


def parse_requested(body: Mapping[str, Any]) -> dict[str, Any]:
    """Check every knob in a job-create body; return ``{api name: value or "auto"}`` for those given.

    OpenAI's three may come under ``hyperparameters`` or ``method.supervised.hyperparameters``;
    Tunery's knobs come as top-level fields (``lora`` as an object) or under ``hyperparameters``
    (by API or engine name: ``lora_r`` there means ``lora.r``)."""
    given: dict[str, Any] = {}
    hyper = _object(body.get("hyperparameters"), "hyperparameters")
    method = _object(body.get("method"), "method")
    if method:
        kind = method_type(body)
        inner = _object(method.get(kind), f"method.{kind}")
        method_hyper = dict(_object(inner.get("hyperparameters"), f"method.{kind}.hyperparameters"))
        method_hyper.pop("beta", None)  # DPO's own: method_overrides() reads it
        hyper = {**method_hyper, **hyper}
    for group in KNOB_GROUPS:  # {"hyperparameters": {"search": {"budget_minutes": 10}}}
        if group in hyper:
            given.update(_group(hyper[group], f"hyperparameters.{group}", group))
    for name, value in hyper.items():
        if name in KNOB_GROUPS:
            continue
        knob_name = name if name in KNOBS and "." not in name else KNOB_BY_ENGINE_NAME.get(name)
        if knob_name is None:
            known = sorted({k for k in KNOBS if "." not in k} | set(KNOB_BY_ENGINE_NAME))
            raise InvalidRequest(
                f"Unknown hyperparameter {name!r}; known: {', '.join(known)}.",
                param=f"hyperparameters.{name}",
                code="unknown_hyperparameter",
            )
        given[knob_name] = value
    for name in TUNERY_KNOBS:
        if "." in name or name not in body:
            continue
        if name in given and given[name] != body[name]:
            raise InvalidRequest(f"{name} is given twice with different values.", param=name, code="conflict")
        given[name] = body[name]
    for group in KNOB_GROUPS:
        for name, value in _group(body.get(group), group, group).items():
            if name in given and given[name] != value:
                raise InvalidRequest(f"{name} is given twice with different values.", param=name, code="conflict")
            given[name] = value
    # null is dropped (the task's default decides), except for a knob where null is a value of its own
    # (out_of_scope_label null: off, even where the data has a label named oos)
    return {
        name: None if value is None else parse_knob(name, value)
        for name, value in given.items()
        if value is not None or name in _NULL_IS_A_VALUE
    }


def method_type(body: Mapping[str, Any], task: TaskDefinition | None = None) -> str:
    """OpenAI's ``method.type``: "supervised" (the default) or "dpo"; with ``task``, a 400 when DPO
    is asked for a task that is not a causal LM."""
    method = _object(body.get("method"), "method")
    kind = method.get("type", "supervised")
    if kind not in METHODS:
        raise InvalidRequest(
            f"method.type {kind!r} is not supported; use one of {', '.join(METHODS)}.",
            param="method.type",
            code="unsupported_method",
        )
    if kind == "dpo" and task is not None and task.kind is not TaskKind.CAUSAL_LM:
        raise InvalidRequest(
            f"method 'dpo' (preference training) needs a causal-LM (chat) task; task '{task.id}' is {task.kind.value}.",
            param="method",
            code="unsupported_method",
        )
    return str(kind)


def method_overrides(body: Mapping[str, Any], task: TaskDefinition, requested: Mapping[str, Any]) -> dict[str, Any]:
    """The engine settings of ``method`` (``training_method``, ``dpo_beta``); DPO is a 400 on a task
    that is not a causal LM, with full training, or with a teacher model."""
    if method_type(body, task) == "supervised":
        return {}
    if requested.get("training_type", task.default_hyperparameters.get("training_type")) == "full":
        raise InvalidRequest(
            "method 'dpo' trains a LoRA adapter (its reference model is the base with the adapter disabled); "
            "set training_type to lora or auto.",
            param="training_type",
            code="unsupported_method",
        )
    if body.get("teacher_model"):
        raise InvalidRequest(
            "method 'dpo' does not combine with distillation (teacher_model).", param="teacher_model", code="conflict"
        )
    hyper = _object(
        _object(body["method"].get("dpo"), "method.dpo").get("hyperparameters"), "method.dpo.hyperparameters"
    )
    overrides: dict[str, Any] = {"training_method": "dpo"}
    beta = hyper.get("beta", AUTO)
    problem = ENGINE_KNOBS["dpo_beta"].problem(beta, auto=True)
    if problem is not None:
        raise InvalidRequest(f"beta {problem}.", param="method.dpo.hyperparameters.beta", code="invalid_hyperparameter")
    if beta != AUTO:
        overrides["dpo_beta"] = float(beta)
    return overrides


def _group(value: Any, param: str, group: str) -> dict[str, Any]:
    """``{"r": 8}`` of the ``lora`` group as ``{"lora.r": 8}``; unknown settings are a 400."""
    found = {}
    for name, setting in _object(value, param).items():
        if f"{group}.{name}" not in KNOBS:
            known = [k.removeprefix(f"{group}.") for k in KNOBS if k.startswith(f"{group}.")]
            raise InvalidRequest(
                f"Unknown {group} setting {name!r}; known: {', '.join(known)}.",
                param=f"{group}.{name}",
                code="unknown_hyperparameter",
            )
        found[f"{group}.{name}"] = setting
    return found


def _object(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be an object.", param=param, code="invalid_type")
    return value


def parse_integer(value: Any, param: str, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise InvalidRequest(
            f"{param} must be an integer from {bounds[0]} to {bounds[1]}; got {value!r}.",
            param=param,
            code="invalid_value",
        )
    return value


def engine_overrides(requested: Mapping[str, Any], task_defaults: Mapping[str, Any]) -> dict[str, Any]:
    """What a job stores as ``requested_hyperparameters``: the request under the engine's names,
    concrete values only. "auto" is left out, so the task's defaults (then the engine's own rules)
    decide it: the engine merges ``{**task defaults, **requested}``.

    ``learning_rate_multiplier`` (OpenAI's) scales the task's default learning rate into a concrete
    ``learning_rate``; when the task leaves its rate to the engine there is nothing to scale, and
    the client is asked for ``learning_rate`` instead of the multiplier being silently dropped."""
    overrides = {
        ENGINE_NAMES[name]: value for name, value in requested.items() if name in ENGINE_NAMES and value != AUTO
    }
    if overrides.get("early_stopping_patience") == 0:
        overrides["early_stopping_patience"] = None  # the engine's "never stop early"
    multiplier = requested.get("learning_rate_multiplier", AUTO)
    if multiplier != AUTO and "learning_rate" not in overrides:
        base = default_learning_rate(task_defaults)
        if base is None:
            raise InvalidRequest(
                "learning_rate_multiplier scales the task's default learning rate, but this task picks its "
                "rate automatically; pass learning_rate (an extra body field) instead.",
                param="learning_rate_multiplier",
                code="invalid_hyperparameter",
            )
        overrides["learning_rate"] = parse_knob("learning_rate", base * float(multiplier))
    return overrides


def default_learning_rate(task_defaults: Mapping[str, Any]) -> float | None:
    rate = task_defaults.get("learning_rate")
    return float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0 else None


def openai_hyperparameters(
    requested: Mapping[str, Any], resolved: Mapping[str, Any], task_defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """OpenAI's ``hyperparameters`` object of a job: resolved values once the engine has them,
    else what was asked, else "auto". The multiplier is the learning rate over the task's default."""
    rate = resolved.get("learning_rate", requested.get("learning_rate"))
    base = default_learning_rate(task_defaults)
    multiplier: Any = AUTO
    if isinstance(rate, (int, float)) and base:
        multiplier = round(float(rate) / base, 6)
    return {
        "n_epochs": resolved.get("n_epochs", requested.get("n_epochs", AUTO)),
        "batch_size": resolved.get("batch_size", requested.get("batch_size", AUTO)),
        "learning_rate_multiplier": multiplier,
    }
