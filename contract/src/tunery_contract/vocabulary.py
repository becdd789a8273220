"""One vocabulary for training jobs: every knob's name, type, range, choices and "auto" rule,
written once. Standard library only.

:class:`TrainConfig` is the engine's configuration; each field carries a :class:`Knob` in its
metadata. Its ``__post_init__`` checks every field against its knob, the control plane derives its
API fields, its OpenAPI schema and its 400s from the same knobs, and packs may set any field in
``default_hyperparameters`` (:data:`ENGINE_HYPERPARAMETERS`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Literal

AUTO = "auto"
Auto = Literal["auto"]


class EngineError(Exception):
    """Base of every error the engine reports on purpose; ``permanent`` tells the job runner
    whether a retry can help. The engine's ``failed`` event carries :meth:`to_json`."""

    code = "engine_error"
    permanent = True

    def __init__(self, message: str, *, code: str | None = None, permanent: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if permanent is not None:
            self.permanent = permanent

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "permanent": self.permanent}


class ConfigError(EngineError):
    """A hyperparameter or job-spec value is out of range or inconsistent."""

    code = "invalid_config"


KnobType = Literal["int", "float", "bool", "choice", "names", "numbers", "label"]


@dataclass(frozen=True)
class Knob:
    """What one training knob accepts. ``minimum``/``maximum`` bound numbers (and the items of a
    ``numbers`` list); ``*_open`` makes a bound exclusive."""

    type: KnobType
    help: str
    minimum: float | None = None
    maximum: float | None = None
    minimum_open: bool = False
    maximum_open: bool = False
    choices: tuple[str, ...] = ()
    #: "auto" is a value of the field: the engine settles it (``auto_rule`` says how).
    auto: bool = False
    auto_rule: str = ""
    #: null is a value of the field (``help`` says what it means).
    nullable: bool = False
    #: Where an API client sets it ("n_epochs", "lora.r", ...); None: not exposed through the API.
    api_name: str | None = None
    #: One of OpenAI's ``hyperparameters`` (the rest are Tunery's extra body fields).
    openai: bool = False

    @property
    def range_text(self) -> str:
        low = "(" if self.minimum_open else "["
        high = ")" if self.maximum_open else "]"
        lowest = -math.inf if self.minimum is None else self.minimum
        highest = math.inf if self.maximum is None else self.maximum
        return f"{low}{lowest:g}, {highest:g}{high}"

    def problem(self, value: Any, *, auto: bool | None = None) -> str | None:
        """Why ``value`` does not fit (a phrase to put after the knob's name), or None.
        ``auto`` overrides whether "auto" is accepted (the API accepts it for every knob)."""
        auto = self.auto if auto is None else auto
        if (value == AUTO and auto) or (value is None and self.nullable):
            return None
        also = (' or "auto"' if auto else "") + (" or null" if self.nullable else "")
        if self.type == "choice":
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}{also}; got {value!r}"
        if self.type == "bool":
            return None if isinstance(value, bool) else f"must be true or false{also}; got {value!r}"
        if self.type == "label":
            if isinstance(value, str) and value.strip():
                return None
            return f"must be a label name (a non-empty string){also}; got {value!r}"
        if self.type == "names":
            if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
                return None
            return f"must be a non-empty list of module names{also}; got {value!r}"
        if self.type == "numbers":
            if isinstance(value, list) and value and all(self._number_problem(v, also) is None for v in value):
                return None
            return f"must be a non-empty list of numbers in {self.range_text}{also}; got {value!r}"
        return self._number_problem(value, also)

    def _number_problem(self, value: Any, also: str) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number{also}; got {value!r}"
        if not math.isfinite(value):
            return f"must be finite; got {value!r}"
        if self.type == "int" and not float(value).is_integer():
            return f"must be a whole number; got {value!r}"
        low, high = self.minimum, self.maximum
        too_low = low is not None and (value <= low if self.minimum_open else value < low)
        too_high = high is not None and (value >= high if self.maximum_open else value > high)
        return f"must be in {self.range_text}; got {value!r}" if too_low or too_high else None

    def normalise(self, value: Any) -> Any:
        """A checked value in its canonical JSON form (4.0 -> 4 for an int knob, 2 -> 2.0 for a float)."""
        if value == AUTO or value is None or isinstance(value, bool):
            return value
        if self.type == "int" and isinstance(value, (int, float)):
            return int(value)
        if self.type == "float" and isinstance(value, (int, float)):
            return float(value)
        return value


def _knob(default: Any, knob: Knob) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"knob": knob})
    return field(default=default, metadata={"knob": knob})


#: evaluations (and so checkpoints) per run when eval_every_steps is "auto"
MAX_AUTO_EVALUATIONS = 10
#: progress events per run when log_every_steps is "auto" (about; short runs report every step) ...
MAX_AUTO_PROGRESS_EVENTS = 100
#: ... and the longest interval between them, in optimizer steps
MAX_AUTO_PROGRESS_INTERVAL = 10
_STEPS = 1 << 40


@dataclass
class TrainConfig:
    """The training engine's configuration (PEFT ``LoraConfig`` / litgpt style). Numeric fields
    marked auto may be ``"auto"``; ``tunery_engine.config.resolve`` settles them."""

    training_type: str = _knob(
        "full",
        Knob(
            "choice", "'full' fine-tuning or 'lora' adapters (peft)", choices=("lora", "full"), api_name="training_type"
        ),
    )
    n_epochs: int | str = _knob(
        AUTO,
        Knob(
            "int",
            "passes over the training data",
            1,
            100,
            auto=True,
            api_name="n_epochs",
            openai=True,
            auto_rule="10 up to 500 training rows, 6 up to 3000, 4 up to 20000, else 2",
        ),
    )
    batch_size: int | str = _knob(
        AUTO,
        Knob(
            "int",
            "rows per forward pass (per device)",
            1,
            4096,
            auto=True,
            api_name="batch_size",
            openai=True,
            auto_rule="8 for causal LMs and models over 1B parameters, else 32",
        ),
    )
    learning_rate: float | str = _knob(
        AUTO,
        Knob(
            "float",
            "peak learning rate of AdamW",
            0,
            1,
            minimum_open=True,
            auto=True,
            api_name="learning_rate",
            auto_rule="LoRA: 2e-4 (over 1B parameters) or 5e-4; full: 1e-4 under 50M parameters, 5e-5 under 400M, "
            "else 2e-5",
        ),
    )
    gradient_accumulation_steps: int | str = _knob(
        AUTO,
        Knob(
            "int",
            "forward passes summed into one optimizer step",
            1,
            1024,
            auto=True,
            auto_rule="1",
            api_name="gradient_accumulation_steps",
        ),
    )
    max_length: int | str = _knob(
        AUTO,
        Knob(
            "int",
            "tokens per row; longer rows are truncated",
            4,
            131072,
            auto=True,
            api_name="max_length",
            auto_rule="the model's limit, at most 512 (1024 for causal LMs)",
        ),
    )
    warmup_ratio: float | str = _knob(
        AUTO,
        Knob(
            "float",
            "fraction of steps with a linear warm-up",
            0,
            1,
            maximum_open=True,
            auto=True,
            auto_rule="0.06",
            api_name="warmup_ratio",
        ),
    )
    weight_decay: float | str = _knob(
        AUTO,
        Knob(
            "float",
            "AdamW weight decay (not on biases/norms)",
            0,
            1,
            auto=True,
            auto_rule="0.01",
            api_name="weight_decay",
        ),
    )
    lr_scheduler: str = _knob(
        "linear", Knob("choice", "learning-rate schedule after warm-up", choices=("linear", "cosine", "constant"))
    )
    precision: str = _knob(
        AUTO,
        Knob(
            "choice",
            "floating-point format of training",
            choices=("fp32", "bf16", "fp16"),
            auto=True,
            auto_rule="bf16 on CUDA where supported, else fp16; on CPUs bf16 with AVX-512 BF16 or AMX, else fp32",
            api_name="precision",
        ),
    )
    gradient_checkpointing: bool = _knob(False, Knob("bool", "trade compute for activation memory"))
    lora_r: int | str = _knob(AUTO, Knob("int", "LoRA rank", 1, 1024, auto=True, auto_rule="16", api_name="lora.r"))
    lora_alpha: float | str = _knob(
        AUTO,
        Knob(
            "float",
            "LoRA scaling numerator",
            0,
            4096,
            minimum_open=True,
            auto=True,
            auto_rule="2 x rank",
            api_name="lora.alpha",
        ),
    )
    lora_dropout: float | str = _knob(
        AUTO, Knob("float", "dropout on the LoRA input", 0, 0.9, auto=True, auto_rule="0.05", api_name="lora.dropout")
    )
    lora_target_modules: list[str] | None = _knob(  # noqa: RUF009 (_knob returns a field())
        None,
        Knob(
            "names",
            "module names LoRA wraps; null = chosen per architecture",
            nullable=True,
            api_name="lora.target_modules",
        ),
    )
    early_stopping_patience: int | None = _knob(
        3,
        Knob(
            "int",
            "evaluations without improvement before stopping; 0 or null = off",
            0,
            1000,
            nullable=True,
            api_name="early_stopping_patience",
        ),
    )
    eval_every_steps: int | str = _knob(
        AUTO,
        Knob(
            "int",
            "optimizer steps between evaluations",
            1,
            _STEPS,
            auto=True,
            auto_rule=f"each epoch, at most {MAX_AUTO_EVALUATIONS} per run",
        ),
    )
    checkpoint_every_steps: int | str = _knob(
        AUTO, Knob("int", "optimizer steps between checkpoints", 1, _STEPS, auto=True, auto_rule="at each evaluation")
    )
    keep_checkpoints: int = _knob(2, Knob("int", "latest checkpoints kept (the best is kept as well)", 1, 1000))
    seed: int = _knob(42, Knob("int", "seed of data order, initialisation and dropout", 0, 2**31 - 1))
    validation_split: float = _knob(
        0.1,
        Knob(
            "float",
            "fraction held out (stratified) when no validation file is given",
            0,
            0.5,
            api_name="validation_split",
        ),
    )
    max_steps: int | None = _knob(
        None, Knob("int", "stop after this many optimizer steps; null = no limit", 1, _STEPS, nullable=True)
    )
    search_budget_minutes: float | None = _knob(
        None,
        Knob(
            "float",
            "budgeted hyperparameter search: minutes it may spend training candidate configurations around "
            "the auto-resolved one (which always trains); the best by the task's selection metric on "
            "validation is kept; null = no search",
            1,
            24 * 60,
            nullable=True,
            api_name="search.budget_minutes",
        ),
    )
    max_grad_norm: float = _knob(1.0, Knob("float", "gradient clipping norm; 0 = off", 0, 1e6))
    distillation_temperature: float = _knob(
        2.0,
        Knob(
            "float",
            "softmax temperature of the teacher's targets",
            0,
            100,
            minimum_open=True,
            api_name="distillation_temperature",
        ),
    )
    distillation_alpha: float = _knob(
        0.5,
        Knob("float", "weight of the distillation loss (1 - alpha on labels)", 0, 1, api_name="distillation_alpha"),
    )
    group_by_length: bool = _knob(True, Knob("bool", "batch rows of similar length (less padding)"))
    # set through the API's ``method`` object (OpenAI's), not as knobs of their own
    training_method: str = _knob(
        "supervised",
        Knob(
            "choice",
            "'supervised' (the task's loss) or 'dpo' (direct preference optimization on preference pairs; "
            "causal-LM tasks with LoRA)",
            choices=("supervised", "dpo"),
        ),
    )
    dpo_beta: float = _knob(
        0.1,
        Knob(
            "float",
            "dpo: how far the policy may move from the reference model (the base without the adapter); "
            "higher keeps it closer",
            0,
            2,
            minimum_open=True,
        ),
    )
    pooling: str = _knob(
        AUTO,
        Knob(
            "choice",
            "sequence classification: 'mean' of the token states or 'model' (the architecture's own [CLS] head)",
            choices=("model", "mean"),
            auto=True,
            auto_rule="mean where the base model declares sentence-transformers mean pooling (BERT-family), else model",
        ),
    )
    compile: bool | str = _knob(AUTO, Knob("bool", "torch.compile the model", auto=True, auto_rule="on CUDA only"))
    packing: bool = _knob(False, Knob("bool", "pack several SFT conversations per row (causal LM only)"))
    non_finite_retries: int = _knob(
        3, Knob("int", "NaN/inf losses tolerated (each skips the step and halves the lr)", 0, 1000)
    )
    log_every_steps: int | str = _knob(
        AUTO,
        Knob(
            "int",
            "optimizer steps between progress events",
            1,
            1 << 30,
            auto=True,
            auto_rule=f"every step up to {2 * MAX_AUTO_PROGRESS_EVENTS - 1} steps, then about "
            f"{MAX_AUTO_PROGRESS_EVENTS} events per run, at most every {MAX_AUTO_PROGRESS_INTERVAL} steps",
        ),
    )
    pos_weight: list[float] | str | None = _knob(  # noqa: RUF009 (_knob returns a field())
        AUTO,
        Knob(
            "numbers",
            "multi-label only: BCE weight of each label's positive class; null = unweighted",
            0,
            1e6,
            minimum_open=True,
            auto=True,
            nullable=True,
            auto_rule="sqrt(negatives / positives) in the training split, clipped to [1, 50]",
        ),
    )
    label_thresholds: list[float] | str | None = _knob(  # noqa: RUF009 (_knob returns a field())
        AUTO,
        Knob(
            "numbers",
            "multi-label only: probability at which each label is given; null = 0.5 for every label",
            0,
            1,
            minimum_open=True,
            maximum_open=True,
            auto=True,
            nullable=True,
            auto_rule="fitted after training on the validation split (best F1 per label, 0.5 for a label "
            "without validation positives)",
        ),
    )

    linear_probe: bool | str = _knob(
        AUTO,
        Knob(
            "bool",
            "single-label classification: fit a logistic regression on the frozen base model's features "
            "before fine-tuning; it is the first evaluation, the fine-tune's initial head, and the model "
            "shipped when fine-tuning does not beat it on validation",
            auto=True,
            auto_rule="on for single-label classification with a validation split and a linear head",
            api_name="linear_probe",
        ),
    )
    contrastive_epochs: int | str = _knob(
        AUTO,
        Knob(
            "int",
            "single-label classification with a sentence encoder: passes of a supervised contrastive stage "
            "(same-intent embeddings pulled together, others pushed apart) before the head is fitted as a "
            'logistic regression on the tuned embeddings; with n_epochs "auto" no classification epochs '
            "follow; 0 = off",
            0,
            100,
            auto=True,
            auto_rule="2 for few-shot data (median class at most 32 examples) on a sentence encoder with full "
            "fine-tuning, else 0",
            api_name="contrastive_epochs",
        ),
    )
    calibration: str = _knob(
        AUTO,
        Knob(
            "choice",
            "single-label classification: 'temperature' scaling fitted on the validation split, folded "
            "into the head, so that reported confidences match accuracy; 'none' keeps the raw softmax",
            choices=("temperature", "none"),
            auto=True,
            auto_rule="temperature for single-label classification with a validation split, else none",
            api_name="calibration",
        ),
    )
    handoff_coverage: float | None = _knob(
        None,
        Knob(
            "float",
            "single-label classification: share of requests the model should answer itself; the "
            "hand-off threshold is the confidence that answers this share of the validation split; "
            "null = no coverage target",
            0,
            1,
            minimum_open=True,
            nullable=True,
            api_name="handoff_coverage",
        ),
    )
    handoff_precision: float | None = _knob(
        None,
        Knob(
            "float",
            "single-label classification: minimum accuracy of the requests the model answers; the "
            "hand-off threshold is the lowest confidence that reaches it on the validation split "
            "(takes precedence over handoff_coverage); null = no precision target",
            0,
            1,
            minimum_open=True,
            maximum_open=False,
            nullable=True,
            api_name="handoff_precision",
        ),
    )

    out_of_scope_label: str | None = _knob(
        AUTO,
        Knob(
            "label",
            "single-label classification: the training label that means out of scope (none of the "
            "intents): left out of in-scope accuracy and of the hand-off coverage target, scored as OOS "
            "recall and precision at the hand-off threshold (a request is flagged when the model predicts "
            "it or its top calibrated confidence is below the threshold), and handed off when predicted; "
            "null = off",
            auto=True,
            nullable=True,
            auto_rule="a training label named oos, out_of_scope or out-of-scope (case-insensitive), else off",
            api_name="out_of_scope_label",
        ),
    )

    def __post_init__(self) -> None:
        for name, knob in knobs():
            found = knob.problem(getattr(self, name))
            if found is not None:
                raise ConfigError(f"{name} {found}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown hyperparameters: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def is_resolved(self) -> bool:
        # pooling is settled from the base model's directory (modeling.resolve_pooling) before resolve(),
        # pos_weight from the encoded training split (TaskHead.fit_loss) after it,
        # label_thresholds after training (TaskHead.fit_thresholds)
        # linear_probe and calibration are settled by the recipe, which knows the head and the splits
        # out_of_scope_label by the recipe's auto rules, from the training labels (an estimate's profile lacks them)
        settled_elsewhere = (
            "pooling",
            "pos_weight",
            "label_thresholds",
            "linear_probe",
            "calibration",
            "out_of_scope_label",
        )
        return all(getattr(self, f.name) != AUTO for f in fields(self) if f.name not in settled_elsewhere)

    @staticmethod
    def help() -> dict[str, str]:
        return {name: knob.help + (f" (auto: {knob.auto_rule})" if knob.auto_rule else "") for name, knob in knobs()}


def knobs() -> Iterator[tuple[str, Knob]]:
    """(field name, knob) of every TrainConfig field, in declaration order."""
    for item in fields(TrainConfig):
        yield item.name, item.metadata["knob"]


KNOBS: dict[str, Knob] = dict(knobs())
#: Names a pack's ``default_hyperparameters`` may set: every field of TrainConfig.
ENGINE_HYPERPARAMETERS: frozenset[str] = frozenset(KNOBS)
#: OpenAI's knob with no engine field: scales the task's default learning rate.
LEARNING_RATE_MULTIPLIER = Knob(
    "float",
    "scales the task's default learning rate",
    0,
    100,
    minimum_open=True,
    api_name="learning_rate_multiplier",
    openai=True,
)
#: API name -> (engine field name or None, knob), for every knob a client may set.
API_KNOBS: dict[str, tuple[str | None, Knob]] = {
    **{knob.api_name: (name, knob) for name, knob in KNOBS.items() if knob.api_name},
    "learning_rate_multiplier": (None, LEARNING_RATE_MULTIPLIER),
}
PRECISIONS: tuple[str, ...] = (AUTO, *KNOBS["precision"].choices)
POOLING_CHOICES: tuple[str, ...] = (AUTO, *KNOBS["pooling"].choices)
TRAINING_TYPES: tuple[str, ...] = KNOBS["training_type"].choices
SCHEDULERS: tuple[str, ...] = KNOBS["lr_scheduler"].choices
