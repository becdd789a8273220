"""The "auto" rules: every data- and model-dependent knob a job leaves at ``"auto"`` settled from the
data profile (``tunery_contract.profile.profile_rows``) and the base model, each with the rule that
chose it.

:func:`resolve` is the one place these rules live: the recipe calls it (and records the reasons in
the ``train_begin`` event), :func:`tunery_engine.config.resolve` calls it for the device-independent
knobs, and a hyperparameter search or an estimate can call it with a profile it holds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery_contract import TaskKind
from tunery_contract import out_of_scope as oos
from tunery_contract.vocabulary import AUTO, TrainConfig

#: A classification data set with at most this many examples in its median class trains as few-shot.
FEW_SHOT_EXAMPLES_PER_CLASS = 32
#: Passes of the contrastive stage on few-shot data (``tunery_engine.contrastive``): measured on
#: BANKING77 and HWU64 at 10 per intent (bench/RESULTS.md), within the 3-minute budget on 2 CPU cores
FEW_SHOT_CONTRASTIVE_EPOCHS = 2
#: Word pieces per whitespace word, generously (WordPiece/BPE on English: about 1.2-1.4).
TOKENS_PER_WORD = 1.5
#: Special tokens a row carries besides its words ([CLS] text [SEP] text [SEP]).
SPECIAL_TOKENS = 3
MIN_AUTO_MAX_LENGTH = 16
#: Below this many validation rows (few-shot data: one or two rows per class) the shipped
#: logistic-regression head is refitted on training + validation after the floor's decision, and a
#: shipped probe's calibration and hand-off rest on out-of-fold scores of every labelled row (a
#: split this small moves its quantiles by points per row and holds rows the model never learns from);
#: with the contrastive stage, the floor cross-validates it (``crossval.py``).
CROSS_VALIDATE_BELOW = 500
#: most and fewest folds; fewer than MIN_FOLDS leaves each fold's stage too few rows per class to
#: stand for the shipped one (at 10 per intent 3 folds train on 6-7 per class), so the floor falls
#: back to the validation split
MAX_FOLDS = 5
MIN_FOLDS = 3
#: budget of rows x (folds - 1), about (folds - 1) stage runs over every row: 5 folds up to 1,000
#: rows, 4 up to 1,333, 3 up to 2,000 (BANKING77 at 10 per intent, 770 rows: 5 folds, ~100 CPU s on
#: one core of the 2-core benchmark box; at 20 per intent, 1,540 rows: 3 folds, about as much)
ROW_FOLD_BUDGET = 4000

_CLASS_KINDS = (
    TaskKind.SEQUENCE_CLASSIFICATION,
    TaskKind.MULTI_LABEL_CLASSIFICATION,
    TaskKind.TEXT_PAIR_CLASSIFICATION,
)
#: sequence-classification poolings: "model" = the architecture's own head ([CLS] and its pooler),
#: "mean" = the mean of the token states, what sentence-transformers encoders were trained to give
POOLINGS = ("model", "mean")
#: architectures with a mean-pooling sequence classifier (MeanPooledBertForSequenceClassification)
MEAN_POOLING_MODEL_TYPES = ("bert",)


def declared_pooling(path: Path) -> str:
    """ "mean" when a base model directory declares sentence-transformers mean pooling
    (``1_Pooling/config.json``), otherwise "model". Reads one small JSON file and no weights, so
    the control plane can tell a sentence encoder before a job runs."""
    pooling_file = Path(path) / "1_Pooling" / "config.json"
    try:
        declared = json.loads(pooling_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "model"
    return "mean" if isinstance(declared, dict) and declared.get("pooling_mode_mean_tokens") else "model"


@dataclass(frozen=True)
class ModelInfo:
    """What the rules need to know about the base model and the task."""

    parameters: int
    #: positions the model accepts (None: unknown)
    max_length: int | None = None
    causal_lm: bool = False
    #: a sentence encoder (declares mean pooling): trained to be read whole, it learns few-shot tasks well
    sentence_encoder: bool = False
    task_kind: TaskKind | None = None

    @property
    def big(self) -> bool:
        return self.parameters > 1_000_000_000


@dataclass(frozen=True)
class DataShape:
    """The parts of a data profile the rules read."""

    rows: int
    classes: int | None = None
    median_per_class: float | None = None
    #: 99th percentile of the row length in words (None: unknown)
    words_p99: int | None = None

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any]) -> DataShape:
        classes = profile.get("classes") or {}
        per_class = classes.get("examples_per_class") or {}
        lengths = profile.get("text_length") or {}
        median = per_class.get("median")
        p99 = lengths.get("p99")
        return cls(
            rows=int(profile.get("rows") or 0),
            classes=int(classes["count"]) if classes.get("count") else None,
            median_per_class=float(median) if median is not None else None,
            words_p99=int(p99) if p99 is not None else None,
        )


def is_few_shot(shape: DataShape, model: ModelInfo) -> bool:
    """Few labelled examples per class for a classifier: the few-shot recipe applies."""
    return (
        model.task_kind in _CLASS_KINDS
        and not model.causal_lm
        and shape.median_per_class is not None
        and shape.median_per_class <= FEW_SHOT_EXAMPLES_PER_CLASS
    )


def auto_max_length(words_p99: int, model_limit: int) -> int:
    """Tokens that hold 99% of the rows whole (a multiple of 8), within the model's limit."""
    tokens = math.ceil(words_p99 * TOKENS_PER_WORD) + SPECIAL_TOKENS
    tokens = max(MIN_AUTO_MAX_LENGTH, 8 * math.ceil(tokens / 8))
    return min(tokens, model_limit)


def resolve(config: TrainConfig, profile: Mapping[str, Any], model: ModelInfo) -> tuple[TrainConfig, dict[str, str]]:
    """A copy of ``config`` with the data- and model-dependent "auto" knobs settled, and for each
    one it settled the rule that chose the value (``{"n_epochs": "15: few-shot ..."}``).

    Settles n_epochs, batch_size, learning_rate, gradient_accumulation_steps, max_length,
    warmup_ratio, weight_decay and the LoRA knobs; knobs already set are left alone. The device
    knobs (precision, compile) and the step intervals are :func:`tunery_engine.config.resolve`'s.
    """
    shape = DataShape.from_profile(profile)
    values = config.to_dict()
    reasons: dict[str, str] = {}
    lora = config.training_type == "lora"
    few_shot = is_few_shot(shape, model)
    per_class = f"median {shape.median_per_class:g} examples per class" if shape.median_per_class else ""

    def pick(name: str, value: Any, why: str) -> None:
        if values[name] == AUTO:
            values[name] = value
            reasons[name] = f"{value}: {why}"

    rows = shape.rows
    if few_shot:
        # few examples: more passes over them (evaluation keeps the best epoch); bounded so that
        # 10 examples x 77 classes stays near 3 minutes on a 2-core CPU (about 440 steps of 16 short rows)
        epochs = 10 if (shape.median_per_class or 0) <= 12 else 8
        pick("n_epochs", epochs, f"few-shot ({per_class} <= {FEW_SHOT_EXAMPLES_PER_CLASS})")
    elif rows <= 500:
        pick("n_epochs", 10, f"{rows} training rows <= 500")
    elif rows <= 3000:
        pick("n_epochs", 6, f"{rows} training rows <= 3000")
    elif rows <= 20000:
        pick("n_epochs", 4, f"{rows} training rows <= 20000")
    else:
        pick("n_epochs", 2, f"{rows} training rows > 20000")
    if model.big or model.causal_lm:
        pick("batch_size", 8, "causal LM or a model over 1B parameters")
    elif few_shot:
        pick("batch_size", 16, "few-shot: smaller batches, more optimizer steps")
    else:
        pick("batch_size", 32, "encoder")
    pick("gradient_accumulation_steps", 1, "default")
    if lora:
        pick(
            "learning_rate",
            2e-4 if model.big else 5e-4,
            "LoRA" + (" on a model over 1B parameters" if model.big else ""),
        )
    elif few_shot and model.sentence_encoder:
        pick("learning_rate", 5e-5, "few-shot full fine-tuning of a sentence encoder from the probe's head")
    elif model.parameters < 50_000_000:
        pick("learning_rate", 1e-4, "full fine-tuning, under 50M parameters")
    elif model.parameters < 400_000_000:
        pick("learning_rate", 5e-5, "full fine-tuning, under 400M parameters")
    else:
        pick("learning_rate", 2e-5, "full fine-tuning, 400M parameters or more")
    cap = 1024 if model.causal_lm else 512
    limit = min(model.max_length or cap, cap)
    if shape.words_p99 is not None and shape.words_p99 > 0 and not model.causal_lm:
        pick(
            "max_length",
            auto_max_length(shape.words_p99, limit),
            f"99% of the rows have at most {shape.words_p99} words (x{TOKENS_PER_WORD} tokens), model limit {limit}",
        )
    else:
        pick(
            "max_length",
            limit,
            "the model's limit" + (", at most 1024 for causal LMs" if model.causal_lm else ", at most 512"),
        )
    pick("warmup_ratio", 0.1 if few_shot else 0.06, "few-shot" if few_shot else "default")
    pick("weight_decay", 0.01, "default")
    if few_shot and model.sentence_encoder and not lora:
        pick(
            "contrastive_epochs",
            FEW_SHOT_CONTRASTIVE_EPOCHS,
            f"few-shot ({per_class}) on a sentence encoder: contrastive stage, then the head",
        )
    else:
        pick("contrastive_epochs", 0, "off: not few-shot full fine-tuning of a sentence encoder")
    if (
        int(values["contrastive_epochs"]) > 0
        and "n_epochs" in reasons
        and not classification_epochs_follow_stage(config)
    ):
        reasons["n_epochs"] += (
            "; none follow the contrastive stage (its model is the fine-tuned one): these train only if the "
            "stage is skipped"
        )
    _pick_out_of_scope_label(values, reasons, profile, model)
    pick("lora_r", 16, "default")
    pick("lora_alpha", 2 * int(values["lora_r"]), "2 x rank")
    pick("lora_dropout", 0.05, "default")
    return TrainConfig(**values), reasons


def _pick_out_of_scope_label(
    values: dict[str, Any], reasons: dict[str, str], profile: Mapping[str, Any], model: ModelInfo
) -> None:
    """``out_of_scope_label`` "auto": the training label named like out-of-scope
    (``tunery_contract.out_of_scope.AUTO_NAMES``), else off. Left "auto" when the profile does not
    name the classes (a profile of row counts only, as an estimate holds): the recipe settles it."""
    if values["out_of_scope_label"] != AUTO:
        return
    names = " / ".join(oos.AUTO_NAMES)
    if model.task_kind is not None and model.task_kind is not TaskKind.SEQUENCE_CLASSIFICATION:
        values["out_of_scope_label"] = None
        reasons["out_of_scope_label"] = "None: off (single-label classification only)"
        return
    counts = (profile.get("classes") or {}).get("counts")
    if not counts:
        return
    found = oos.detect(counts)
    values["out_of_scope_label"] = found
    if found is None:
        reasons["out_of_scope_label"] = f"None: off, no training label is named {names} (case-insensitive)"
    else:
        reasons["out_of_scope_label"] = (
            f"{found}: the training label named like out-of-scope ({names}, case-insensitive), {counts[found]} rows"
        )


def choose_folds(rows: int) -> int | None:
    """Folds for ``rows`` labelled rows: the most (up to ``MAX_FOLDS``) with rows x (folds - 1)
    within ``ROW_FOLD_BUDGET``; None when even ``MIN_FOLDS`` would exceed it."""
    if rows <= 0:
        return None
    folds = min(MAX_FOLDS, ROW_FOLD_BUDGET // rows + 1)
    return folds if folds >= MIN_FOLDS else None


def floor_folds(training_rows: int, validation_rows: int) -> int | None:
    """Folds of the few-shot floor's cross-validation of the contrastive stage (``crossval.py``):
    with a validation split under ``CROSS_VALIDATE_BELOW`` rows, :func:`choose_folds` over every
    labelled row; None where the validation split decides."""
    if not 0 < validation_rows < CROSS_VALIDATE_BELOW:
        return None
    return choose_folds(training_rows + validation_rows)


def classification_epochs_follow_stage(config: TrainConfig) -> bool:
    """Whether classification epochs train after the contrastive stage: only when the job asked for
    them (``n_epochs`` or ``max_steps`` set). Measured: an epoch of cross-entropy after the stage
    lowered held-out accuracy (bench/RESULTS.md), so with "auto" the stage's model is the fine-tuned one."""
    return config.n_epochs != AUTO or config.max_steps is not None
