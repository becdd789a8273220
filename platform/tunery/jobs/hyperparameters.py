"""The one map from the API's job fields to the training engine's config names.

Clients send OpenAI's ``hyperparameters`` (``n_epochs``, ``batch_size``,
``learning_rate_multiplier``; also accepted under ``method.supervised.hyperparameters``) and
Tunery's extra body fields (``training_type``, ``lora``: {r, alpha, dropout, target_modules},
``gradient_accumulation_steps``, ``precision``, ...). Every knob accepts ``"auto"``. This module
checks types and ranges (a 400 naming the parameter) and maps the request to the engine's
``TrainConfig`` names, so ``requested_hyperparameters`` and ``resolved_config`` share one vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunery.core.errors import InvalidRequest

AUTO = "auto"


@dataclass(frozen=True)
class Knob:
    #: Where the client puts it: "n_epochs" (in hyperparameters), "lora.r", "precision", ...
    api_name: str
    #: The engine's config field it sets (None: not an engine field, handled by resolve()).
    engine_name: str | None
    kind: type  # int, float, str or list
    minimum: float | None = None
    maximum: float | None = None
    #: For floats: whether the minimum itself is allowed.
    minimum_inclusive: bool = True
    choices: tuple[str, ...] = ()
    help: str = ""

    def parse(self, value: Any) -> Any:
        if value == AUTO:
            return AUTO
        if self.kind is str:
            if value not in self.choices:
                self._fail(f"must be one of {', '.join(self.choices)} or 'auto'; got {value!r}")
            return value
        if self.kind is list:
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                self._fail("must be a non-empty list of module names or 'auto'")
            return list(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self._fail(f"must be a number or 'auto'; got {value!r}")
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                self._fail(f"must be a whole number; got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                self._fail("must be a finite number")
        if self.minimum is not None and (
            value < self.minimum or (not self.minimum_inclusive and value == self.minimum)
        ):
            bound = ">=" if self.minimum_inclusive else ">"
            self._fail(f"must be {bound} {self.minimum:g}; got {value:g}")
        if self.maximum is not None and value > self.maximum:
            self._fail(f"must be <= {self.maximum:g}; got {value:g}")
        return value

    def _fail(self, reason: str) -> None:
        raise InvalidRequest(f"{self.api_name} {reason}.", param=self.api_name, code="invalid_hyperparameter")


OPENAI_KNOBS = (
    Knob("n_epochs", "n_epochs", int, 1, 100, help="Passes over the training data."),
    Knob("batch_size", "batch_size", int, 1, 4096),
    Knob("learning_rate_multiplier", None, float, 0, 100, minimum_inclusive=False, help="Scales the default rate."),
)
TUNERY_KNOBS = (
    Knob("training_type", "training_type", str, choices=("lora", "full")),
    Knob("learning_rate", "learning_rate", float, 0, 1, minimum_inclusive=False),
    Knob("gradient_accumulation_steps", "gradient_accumulation_steps", int, 1, 1024),
    Knob("max_length", "max_length", int, 8, 131072),
    Knob("warmup_ratio", "warmup_ratio", float, 0, 1),
    Knob("weight_decay", "weight_decay", float, 0, 1),
    Knob("precision", "precision", str, choices=("fp32", "bf16", "fp16")),
    Knob("early_stopping_patience", "early_stopping_patience", int, 0, 1000, help="Evaluations without gain; 0 = off"),
    Knob("validation_split", "validation_split", float, 0, 0.5),
    Knob("distillation_temperature", "distillation_temperature", float, 0, 100, minimum_inclusive=False),
    Knob("distillation_alpha", "distillation_alpha", float, 0, 1),
    Knob("lora.r", "lora_r", int, 1, 1024),
    Knob("lora.alpha", "lora_alpha", float, 0, 4096, minimum_inclusive=False),
    Knob("lora.dropout", "lora_dropout", float, 0, 0.9),
    Knob("lora.target_modules", "lora_target_modules", list),
)
KNOBS = {knob.api_name: knob for knob in OPENAI_KNOBS + TUNERY_KNOBS}
#: API name -> engine name, for every knob that maps one to one.
ENGINE_NAMES = {knob.api_name: knob.engine_name for knob in KNOBS.values() if knob.engine_name}
#: Inside ``hyperparameters`` the engine's names are accepted too (``lora_r`` for ``lora.r``).
KNOB_BY_ENGINE_NAME = {engine: api for api, engine in ENGINE_NAMES.items()}
SEED_RANGE = (0, 2**31 - 1)
GPU_RANGE = (0, 64)


def parse_requested(body: Mapping[str, Any]) -> dict[str, Any]:
    """Check every knob in a job-create body; return ``{api name: value or "auto"}`` for those given.

    OpenAI's three may come under ``hyperparameters`` or ``method.supervised.hyperparameters``;
    Tunery's knobs come as top-level fields (``lora`` as an object) or under ``hyperparameters``
    (by API or engine name: ``lora_r`` there means ``lora.r``)."""
    given: dict[str, Any] = {}
    hyper = _object(body.get("hyperparameters"), "hyperparameters")
    method = _object(body.get("method"), "method")
    if method:
        if method.get("type", "supervised") != "supervised":
            raise InvalidRequest(
                f"method.type {method.get('type')!r} is not supported; use 'supervised'.",
                param="method.type",
                code="unsupported_method",
            )
        supervised = _object(method.get("supervised"), "method.supervised")
        hyper = {**_object(supervised.get("hyperparameters"), "method.supervised.hyperparameters"), **hyper}
    for name, value in hyper.items():
        knob_name = name if name in KNOBS and "." not in name else KNOB_BY_ENGINE_NAME.get(name)
        if knob_name is None:
            known = sorted({k for k in KNOBS if "." not in k} | set(KNOB_BY_ENGINE_NAME))
            raise InvalidRequest(
                f"Unknown hyperparameter {name!r}; known: {', '.join(known)}.",
                param=f"hyperparameters.{name}",
                code="unknown_hyperparameter",
            )
        given[knob_name] = value
    for knob in TUNERY_KNOBS:
        if "." in knob.api_name or knob.api_name not in body:
            continue
        if knob.api_name in given and given[knob.api_name] != body[knob.api_name]:
            raise InvalidRequest(
                f"{knob.api_name} is given twice with different values.", param=knob.api_name, code="conflict"
            )
        given[knob.api_name] = body[knob.api_name]
    lora = _object(body.get("lora"), "lora")
    for name, value in lora.items():
        if f"lora.{name}" not in KNOBS:
            raise InvalidRequest(
                f"Unknown LoRA setting {name!r}; known: r, alpha, dropout, target_modules.",
                param=f"lora.{name}",
                code="unknown_hyperparameter",
            )
        given[f"lora.{name}"] = value
    return {name: KNOBS[name].parse(value) for name, value in given.items() if value is not None}


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
        overrides["learning_rate"] = KNOBS["learning_rate"].parse(base * float(multiplier))
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
