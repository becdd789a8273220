"""Legal vertical: multi-label classification of contract clauses (UNFAIR-ToS categories),
extraction of parties, dates and amounts, and clause drafting from instructions by causal-LM
fine-tuning.

Drafting's "exact match of required fields": an instruction lists its required fields as
``Name: value`` lines (``Payer: Acme Ltd``). A draft matches a field when the value appears in it
verbatim (whitespace-normalised, case-sensitive). ``field_exact_match`` is the share of drafts
holding every required field, ``field_recall`` the share of all required fields found
(:func:`field_match`). The metrics function reports them when the engine passes generations
(``EvalOutput.y_true`` = the instructions, ``y_pred`` = the drafts) besides the validation loss.

Tenant configuration: ``{"label_threshold": 0.5}`` (probability above which a clause label is given).
Served probabilities are shifted so that 0.5 is each category's threshold fitted on validation by the
engine (``label_thresholds`` in the artifact), so the default answers as the metrics were measured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tunery_contract import (
    Column,
    ColumnType,
    DatasetSchema,
    EvalOutput,
    Prediction,
    TaskDefinition,
    TaskKind,
    VerticalPack,
)
from tunery_contract import metrics as m
from tunery_contract.cards import ENCODER_ARCHITECTURES, encoder_defaults, section

__version__ = "1.1.0"

#: UNFAIR-ToS categories in LexGLUE order; an empty label list means a fair clause.
UNFAIR_CATEGORIES = (
    "Limitation of liability",
    "Unilateral termination",
    "Unilateral change",
    "Content removal",
    "Contract by using",
    "Choice of law",
    "Jurisdiction",
    "Arbitration",
)
FAIR = "fair"
ENTITY_TYPES = ("PARTY", "DATE", "AMOUNT")
_FIELD_LINE = re.compile(r"^\s*([A-Z][A-Za-z ]{0,40}?)\s*:\s*(\S.*?)\s*$", re.MULTILINE)
NOT_ADVICE = "Not legal advice: a lawyer must review every classification and draft before use."


def clause_metrics(out: EvalOutput) -> dict[str, float]:
    """LexGLUE-style micro- and macro-F1 (with the implicit "fair" class), ``f1/<category>``, and
    ``macro_auc`` over the categories present (from the probabilities, so independent of the 0.5
    threshold that rare categories seldom reach early in training)."""
    micro, macro, per_label = m.multilabel_prf(out.y_true, out.y_pred, out.label_names, none_label=FAIR)
    result = {"micro_f1": micro.f1, "macro_f1": macro.f1}
    result.update(m.prefixed("f1", {name: s.f1 for name, s in per_label.items()}))
    if out.scores is not None:  # threshold-free: does the model rank each category's clauses first?
        aucs = [
            m.roc_auc([row[j] for row in out.y_true], [float(s[j]) for s in out.scores])
            for j in range(len(out.label_names))
        ]
        defined = [a for a in aucs if a is not None]
        if defined:
            result["macro_auc"] = sum(defined) / len(defined)
    return result


def required_fields(instruction: str) -> dict[str, str]:
    """The ``Name: value`` lines of a drafting instruction."""
    return {name.strip(): value for name, value in _FIELD_LINE.findall(instruction)}


def _normalise(text: str) -> str:
    return " ".join(text.split())


def missing_fields(instruction: str, draft: str) -> list[str]:
    body = _normalise(draft)
    return [name for name, value in required_fields(instruction).items() if _normalise(value) not in body]


def field_match(instructions: Sequence[str], drafts: Sequence[str]) -> dict[str, float]:
    """``field_exact_match`` and ``field_recall`` of drafts against their instructions' required fields."""
    if len(instructions) != len(drafts):
        raise ValueError(f"{len(instructions)} instructions but {len(drafts)} drafts")
    total = found = complete = 0
    for instruction, draft in zip(instructions, drafts):
        wanted = len(required_fields(instruction))
        missing = len(missing_fields(instruction, draft))
        total, found, complete = total + wanted, found + wanted - missing, complete + int(missing == 0)
    return {
        "field_exact_match": complete / len(drafts) if drafts else 0.0,
        "field_recall": found / total if total else 0.0,
    }


def drafting_metrics(out: EvalOutput) -> dict[str, float]:
    result = m.language_model_summary(out)
    if out.y_pred and len(out.y_true) == len(out.y_pred):
        result.update(field_match([str(t) for t in out.y_true], [str(p) for p in out.y_pred]))
    return result


def clause_answer(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    threshold = float(config.get("label_threshold", 0.5))
    probabilities = dict(zip(prediction.label_names, prediction.probabilities or []))
    labels = [name for name, p in probabilities.items() if p >= threshold]
    return {"labels": labels, "unfair": bool(labels), "probabilities": probabilities}


def entity_answer(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    entities = list(prediction.entities or [])
    grouped = {kind.lower() + "s": [e["text"] for e in entities if e.get("type") == kind] for kind in ENTITY_TYPES}
    return {"entities": entities, **grouped}


def draft_answer(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The draft, and which of the instruction's required fields it lacks."""
    draft = (prediction.text or "").strip()
    messages = item.get("messages") or []
    users = [msg.get("content", "") for msg in messages if isinstance(msg, Mapping) and msg.get("role") == "user"]
    instruction = str(item.get("instruction") or (users[-1] if users else ""))
    return {"clause": draft, "missing_fields": missing_fields(instruction, draft)}


def _card(title: str, keys: list[str]) -> Any:
    return section(f"Legal: {title}", keys, NOT_ADVICE)


ENCODER_DEFAULTS: dict[str, Any] = encoder_defaults()
#: UNFAIR-ToS with MiniLM: test macro-F1 0.410 after 4 epochs at 5e-5, 0.800 after 8 at 1e-4 (the
#: best validation epoch was the last; verticals/README.md)
CLAUSE_DEFAULTS: dict[str, Any] = encoder_defaults(n_epochs=8, learning_rate=1e-4)
ENCODERS = ENCODER_ARCHITECTURES

CLAUSE_CLASSIFICATION = TaskDefinition(
    id="clause_classification",
    name="Unfair clause classification",
    kind=TaskKind.MULTI_LABEL_CLASSIFICATION,
    description="Zero or more UNFAIR-ToS categories per clause; an empty list is a fair clause.",
    schema=DatasetSchema(
        (
            Column("text", ColumnType.TEXT, "one clause or sentence of terms of service", role="text"),
            Column("labels", ColumnType.LABELS, "unfair categories ([] when fair)", role="label"),
        )
    ),
    metrics=clause_metrics,
    selection_metric="macro_f1",
    labels=UNFAIR_CATEGORIES,
    default_hyperparameters=CLAUSE_DEFAULTS,
    postprocess=clause_answer,
    sample_data="clauses_sample.jsonl",
    model_card=_card("unfair clause classification", ["micro_f1", "macro_f1", "macro_auc"]),
    suitable_architectures=ENCODERS,
)

ENTITY_EXTRACTION = TaskDefinition(
    id="entity_extraction",
    name="Contract entity extraction",
    kind=TaskKind.TOKEN_CLASSIFICATION,
    description="Parties, dates and amounts in contract text, as IOB2 tags per token.",
    schema=DatasetSchema(
        (
            Column("tokens", ColumnType.TOKENS, "the sentence split into words", role="tokens"),
            Column("tags", ColumnType.TAGS, "IOB2 tags: O, B-/I-PARTY, B-/I-DATE, B-/I-AMOUNT", role="tags"),
        )
    ),
    metrics=m.entity_summary,
    selection_metric="f1",
    labels=ENTITY_TYPES,
    default_hyperparameters=ENCODER_DEFAULTS,
    postprocess=entity_answer,
    sample_data="entities_sample.jsonl",
    model_card=_card("entity extraction", ["precision", "recall", "f1", "f1/party", "f1/date", "f1/amount"]),
    suitable_architectures=ENCODERS,
)

CLAUSE_DRAFTING = TaskDefinition(
    id="clause_drafting",
    name="Clause drafting",
    kind=TaskKind.CAUSAL_LM,
    description="Instruction (with 'Name: value' required fields) -> clause, by causal-LM fine-tuning.",
    schema=DatasetSchema(
        (Column("messages", ColumnType.MESSAGES, "instruction (user) and clause (assistant)", role="messages"),)
    ),
    metrics=drafting_metrics,
    selection_metric="eval_loss",
    greater_is_better=False,
    default_hyperparameters={
        "training_type": "lora",
        "n_epochs": 3,
        "batch_size": "auto",
        "learning_rate": 2e-4,
        "max_length": 768,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "early_stopping_patience": 2,
    },
    postprocess=draft_answer,
    sample_data="drafting_sample.jsonl",
    model_card=_card("clause drafting", ["eval_loss", "perplexity", "field_exact_match", "field_recall"]),
    suitable_architectures=("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3"),
)


def check_config(config: Mapping[str, Any]) -> list[str]:
    """Tenant configuration problems (see the module docstring)."""
    value = config.get("label_threshold")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        return [f"label_threshold must be a probability between 0 and 1, got {value!r}"]
    return []


pack = VerticalPack(
    id="legal",
    name="Legal",
    version=__version__,
    tasks=(CLAUSE_CLASSIFICATION, ENTITY_EXTRACTION, CLAUSE_DRAFTING),
    description="Unfair-clause classification, extraction of parties/dates/amounts, and clause drafting.",
    config_defaults={"label_threshold": 0.5},
    license="Apache-2.0; sample data written for the project (CC0)",
    package="tunery_legal",
    config_validator=check_config,
)

__all__ = [
    "CLAUSE_CLASSIFICATION",
    "CLAUSE_DRAFTING",
    "ENTITY_EXTRACTION",
    "clause_metrics",
    "field_match",
    "missing_fields",
    "pack",
    "required_fields",
]
