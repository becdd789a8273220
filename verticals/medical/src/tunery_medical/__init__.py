"""Medical vertical: clinical entity recognition (diseases, chemicals/drugs; BIO tags), clinical
document classification and, for causal-LM bases, clinical note summarization. Every upload is
screened for personal health identifiers (see :mod:`tunery_medical.phi`).

Tenant configuration: ``{"phi_policy": "warn" | "redact" | "reject"}`` (default ``"warn"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunery_contract import (
    Column,
    ColumnType,
    DatasetSchema,
    Prediction,
    TaskDefinition,
    TaskKind,
    VerticalPack,
)
from tunery_contract import metrics as m
from tunery_contract.cards import ENCODER_ARCHITECTURES, encoder_defaults, section
from tunery_medical.phi import POLICIES, find_phi, redact_text, screen_row

__version__ = "1.2.0"

ENTITY_TYPES = ("Disease", "Chemical")
SAFETY_NOTE = (
    "Decision support only: outputs must be reviewed by a qualified clinician. Uploads are screened for "
    "e-mail addresses, phone numbers, record numbers and SSNs (policy per tenant); names and addresses are "
    "not detected, so de-identify data before upload."
)


def entity_answer(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    entities = list(prediction.entities or [])
    return {
        "entities": entities,
        "diseases": sorted({e["text"] for e in entities if e.get("type") == "Disease"}),
        "chemicals": sorted({e["text"] for e in entities if e.get("type") == "Chemical"}),
    }


def label_answer(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    label, confidence = prediction.top_label()
    return {"label": label, "confidence": confidence}


def screen_summary(text: str, config: Mapping[str, Any]) -> str:
    """Identifiers a generated summary repeats are redacted unless the tenant's policy is "warn"."""
    return text if config.get("phi_policy", "warn") == "warn" else redact_text(text)[0]


def summary_answer(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    text = (prediction.text or "").strip()
    return {"summary": screen_summary(text, config), "phi_found": sorted({kind for kind, _, _ in find_phi(text)})}


def _card(title: str, keys: list[str]) -> Any:
    return section(f"Medical: {title}", keys, SAFETY_NOTE)


ENCODER_DEFAULTS: dict[str, Any] = encoder_defaults()
#: NCBI-disease with MiniLM: entity F1 0.806 after 5 epochs at 5e-5, 0.832 after 10 at 1e-4
#: (verticals/README.md); early stopping still ends a job sooner when validation F1 stalls
NER_DEFAULTS: dict[str, Any] = encoder_defaults(n_epochs=10, learning_rate=1e-4)
ENCODERS = ENCODER_ARCHITECTURES

CLINICAL_NER = TaskDefinition(
    id="clinical_ner",
    name="Clinical entity recognition",
    kind=TaskKind.TOKEN_CLASSIFICATION,
    description="Diseases and chemicals/drugs in clinical or biomedical text, as IOB2 tags per token.",
    schema=DatasetSchema(
        (
            Column("tokens", ColumnType.TOKENS, "the sentence split into words", role="tokens"),
            Column("tags", ColumnType.TAGS, "one IOB2 tag per token: O, B-/I-Disease, B-/I-Chemical", role="tags"),
        )
    ),
    metrics=m.entity_summary,
    selection_metric="f1",
    labels=ENTITY_TYPES,
    default_hyperparameters=NER_DEFAULTS,
    row_validator=screen_row,
    postprocess=entity_answer,
    sample_data="clinical_ner_sample.jsonl",
    model_card=_card("clinical entity recognition", ["precision", "recall", "f1", "f1/disease", "f1/chemical"]),
    suitable_architectures=ENCODERS,
)

DOCUMENT_CLASSIFICATION = TaskDefinition(
    id="document_classification",
    name="Clinical document classification",
    kind=TaskKind.SEQUENCE_CLASSIFICATION,
    description="One class per note or report (specialty, document type, triage level: your own labels).",
    schema=DatasetSchema(
        (
            Column("text", ColumnType.TEXT, "the note or report", role="text"),
            Column("label", ColumnType.LABEL, "its class", role="label"),
        )
    ),
    metrics=m.classification_summary,
    selection_metric="macro_f1",
    default_hyperparameters={**ENCODER_DEFAULTS, "max_length": 256},
    row_validator=screen_row,
    postprocess=label_answer,
    sample_data="document_classification_sample.csv",
    model_card=_card("document classification", ["accuracy", "macro_f1", "mcc"]),
    suitable_architectures=ENCODERS,
)

NOTE_SUMMARIZATION = TaskDefinition(
    id="note_summarization",
    name="Clinical note summarization",
    kind=TaskKind.CAUSAL_LM,
    description="Fine-tunes a causal LM on note -> summary conversations.",
    schema=DatasetSchema(
        (Column("messages", ColumnType.MESSAGES, "note (user) and summary (assistant)", role="messages"),)
    ),
    metrics=m.language_model_summary,
    selection_metric="eval_loss",
    greater_is_better=False,
    default_hyperparameters={
        "training_type": "lora",
        "n_epochs": 2,
        "batch_size": "auto",
        "learning_rate": 2e-4,
        "max_length": 1024,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "early_stopping_patience": 2,
    },
    row_validator=screen_row,
    postprocess=summary_answer,
    text_filter=screen_summary,  # chat/completions answer with the same screening as predictions
    sample_data="note_summarization_sample.jsonl",
    model_card=_card("note summarization", ["eval_loss", "perplexity"]),
    suitable_architectures=("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3"),
)


def check_config(config: Mapping[str, Any]) -> list[str]:
    """Tenant configuration problems (see the module docstring)."""
    policy = config.get("phi_policy")
    return [] if policy in POLICIES else [f"phi_policy must be one of {list(POLICIES)}, got {policy!r}"]


pack = VerticalPack(
    id="medical",
    name="Medical",
    version=__version__,
    tasks=(CLINICAL_NER, DOCUMENT_CLASSIFICATION, NOTE_SUMMARIZATION),
    description="Clinical entity recognition, document classification and note summarization, with PHI screening.",
    config_defaults={"phi_policy": "warn"},
    license="Apache-2.0; sample data written for the project (CC0, synthetic, not clinically meaningful)",
    package="tunery_medical",
    config_validator=check_config,
    requires_contract=">=1.1,<2",  # text_filter: an older platform would serve summaries unscreened
)

__all__ = ["CLINICAL_NER", "DOCUMENT_CLASSIFICATION", "NOTE_SUMMARIZATION", "pack"]
