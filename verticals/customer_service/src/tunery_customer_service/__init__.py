"""Customer-service vertical: intent classification with reply selection and hand-off to a human
agent below a confidence threshold, plus generative replies for causal-LM base models.

Tenant configuration (the admin edits it per tenant)::

    {"reply_templates": {"<intent>": "<reply text>"},
     "handoff_threshold": "auto",
     "handoff_reply": "Let me connect you with a colleague who can help."}

``handoff_threshold`` "auto" (the default) is the model's own: chosen on validation by the engine to
meet the job's ``handoff_coverage`` (default 0.9 of requests answered) or ``handoff_precision`` on
calibrated confidences, stored in the artifact (``DEFAULT_HANDOFF_THRESHOLD`` for a model without
one). A number fixes it.

Out of scope: a model whose job learnt an out-of-scope label (the job's ``out_of_scope_label``,
"auto" takes a label named oos, out_of_scope or out-of-scope) hands a prediction of it off with
``handoff_reason`` "out_of_scope", even when the tenant has a template for it; below the threshold
the reason stays "low_confidence".
"""

from __future__ import annotations

from collections.abc import Mapping
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

__version__ = "1.2.0"

DEFAULT_HANDOFF_THRESHOLD = 0.5
#: the job's default target: the hand-off threshold answers this share of the validation split
DEFAULT_HANDOFF_COVERAGE = 0.9
DEFAULT_HANDOFF_REPLY = "Let me connect you with a colleague who can help you with this."
#: Replies for the sample data's intents; a tenant replaces them with its own.
SAMPLE_REPLY_TEMPLATES = {
    "card_arrival": "Cards usually arrive within 5 working days. If yours has not arrived after 10, "
    "I can order a replacement for free.",
    "lost_or_stolen_card": "I have frozen your card so nobody can use it. You can order a replacement in the "
    "app under Cards.",
    "transfer_failed": "Sorry about the failed transfer. The money is back in your account within 1 working "
    "day; please check the recipient details and try again.",
    "refund_request": "Refunds from merchants take up to 10 working days to appear. If it is later than that, "
    "I can open a dispute for you.",
    "change_address": "You can change your address in the app under Profile > Personal details.",
    "account_balance": "Your balance is shown at the top of the Home screen in the app.",
    "exchange_rate": "We use the interbank rate at the time of payment, with a 0.5% markup at weekends.",
    "cancel_subscription": "You can cancel your plan in Settings > Plan; it stays active until the end of "
    "the paid month.",
}


def intent_metrics(out: EvalOutput) -> dict[str, float]:
    """accuracy, macro_f1, mcc, recall per intent, and what the default hand-off threshold gives:
    ``coverage_at_handoff`` (share answered automatically) and ``accuracy_at_handoff`` (on those)."""
    summary = m.classification_summary(out)
    if out.scores is not None:
        coverage, answered_accuracy = m.coverage_and_accuracy_at(
            list(out.y_true), [list(s) for s in out.scores], DEFAULT_HANDOFF_THRESHOLD
        )
        summary["coverage_at_handoff"] = coverage
        summary["accuracy_at_handoff"] = answered_accuracy
    return summary


def handoff_threshold(prediction: Prediction, config: Mapping[str, Any]) -> float:
    """The tenant's fixed threshold, or with "auto" the one fitted for the model's target."""
    configured = config.get("handoff_threshold", "auto")
    if configured == "auto" or configured is None:
        fitted = prediction.handoff_threshold
        return DEFAULT_HANDOFF_THRESHOLD if fitted is None else float(fitted)
    return float(configured)


def select_reply(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The intent, and the tenant's reply for it, or a hand-off: ``low_confidence`` below the
    hand-off threshold, else ``out_of_scope`` when the model predicts its out-of-scope label (the
    job's ``out_of_scope_label``; even when the tenant has a template for it), else ``no_template``
    when the tenant has no reply for the intent."""
    threshold = handoff_threshold(prediction, config)
    templates: Mapping[str, str] = config.get("reply_templates") or {}
    intent, confidence = prediction.top_label()
    probabilities = prediction.probabilities or []
    ranked = sorted(zip(prediction.label_names, probabilities), key=lambda pair: -pair[1])
    reason = None
    if confidence < threshold:
        reason = "low_confidence"
    elif prediction.out_of_scope_label is not None and intent == prediction.out_of_scope_label:
        reason = "out_of_scope"
    elif intent not in templates:
        reason = "no_template"
    return {
        "intent": intent,
        "confidence": confidence,
        "handoff": reason is not None,
        "handoff_reason": reason,
        "reply": str(config.get("handoff_reply", DEFAULT_HANDOFF_REPLY)) if reason else templates[intent],
        "alternatives": [{"intent": name, "confidence": p} for name, p in ranked[1:3]],
    }


def generated_reply(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A generated reply; an empty generation becomes a hand-off rather than a blank answer."""
    text = (prediction.text or "").strip()
    return {
        "reply": text or str(config.get("handoff_reply", DEFAULT_HANDOFF_REPLY)),
        "handoff": not text,
    }


intent_card = section(
    "Customer service: intent classification",
    [
        "accuracy",
        "macro_f1",
        "coverage_at_handoff",
        "accuracy_at_handoff",
        "in_scope_accuracy",
        "oos_recall",
        "oos_precision",
        "in_scope_coverage",
    ],
    "Limitations: intents outside the training labels are forced onto the nearest known intent unless "
    "the training data has an out-of-scope label (e.g. `oos`); keep a hand-off threshold so such requests "
    "reach a person.",
    intro="Predicts the customer's intent. Replies come from the tenant's templates; below the "
    "hand-off threshold (chosen on validation for the job's coverage or precision target) the request goes to "
    "a human agent.",
)

reply_card = section(
    "Customer service: generated replies",
    ["eval_loss", "perplexity"],
    "Generated replies may state things that are not true for a given customer: review them, or "
    "use template replies for regulated answers.",
    intro="Fine-tuned on past conversations (loss on the agent's turns only).",
    settings_keys=None,
)


#: epochs, learning rate, length and warm-up follow the data ("auto": tunery_engine.auto), the
#: hand-off threshold a 0.9 coverage target
ENCODER_DEFAULTS: dict[str, Any] = encoder_defaults(
    n_epochs="auto",
    learning_rate="auto",
    max_length="auto",
    warmup_ratio="auto",
    handoff_coverage=DEFAULT_HANDOFF_COVERAGE,
)
CAUSAL_DEFAULTS: dict[str, Any] = {
    "training_type": "lora",
    "n_epochs": 2,
    "batch_size": "auto",
    "learning_rate": 2e-4,
    "max_length": 512,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "warmup_ratio": 0.03,
    "early_stopping_patience": 2,
}

INTENT = TaskDefinition(
    id="intent",
    name="Intent classification with reply selection",
    kind=TaskKind.SEQUENCE_CLASSIFICATION,
    description="One intent per customer message; the tenant's reply template for the intent, or a hand-off.",
    schema=DatasetSchema(
        (
            Column("text", ColumnType.TEXT, "the customer's message", role="text"),
            Column("label", ColumnType.LABEL, "the intent (your own intent names)", role="label"),
        )
    ),
    metrics=intent_metrics,
    selection_metric="macro_f1",
    default_hyperparameters=ENCODER_DEFAULTS,
    postprocess=select_reply,
    sample_data="intent_sample.csv",
    model_card=intent_card,
    suitable_architectures=ENCODER_ARCHITECTURES,
)

REPLY = TaskDefinition(
    id="reply",
    name="Generated replies",
    kind=TaskKind.CAUSAL_LM,
    description="Fine-tunes a causal LM on past conversations to draft agent replies.",
    schema=DatasetSchema(
        (Column("messages", ColumnType.MESSAGES, "a conversation in OpenAI chat format", role="messages"),)
    ),
    metrics=m.language_model_summary,
    selection_metric="eval_loss",
    greater_is_better=False,
    default_hyperparameters=CAUSAL_DEFAULTS,
    postprocess=generated_reply,
    sample_data="reply_sample.jsonl",
    model_card=reply_card,
    suitable_architectures=("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3"),
)


def check_config(config: Mapping[str, Any]) -> list[str]:
    """Tenant configuration problems (see the module docstring)."""
    problems = []
    threshold = config.get("handoff_threshold")
    if threshold != "auto" and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1
    ):
        problems.append(f'handoff_threshold must be "auto" or a number from 0 to 1, got {threshold!r}')
    templates = config.get("reply_templates")
    if not isinstance(templates, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in templates.items()
    ):
        problems.append("reply_templates must map intent names to non-empty reply texts")
    reply = config.get("handoff_reply")
    if not isinstance(reply, str) or not reply.strip():
        problems.append("handoff_reply must be a non-empty text")
    return problems


pack = VerticalPack(
    id="customer_service",
    name="Customer service",
    version=__version__,
    tasks=(INTENT, REPLY),
    description="Intent classification with per-tenant reply templates and hand-off to a human agent; "
    "optional generated replies from past conversations.",
    config_defaults={
        "reply_templates": SAMPLE_REPLY_TEMPLATES,
        "handoff_threshold": "auto",
        "handoff_reply": DEFAULT_HANDOFF_REPLY,
    },
    license="Apache-2.0; sample data written for the project (CC0)",
    package="tunery_customer_service",
    config_validator=check_config,
)

__all__ = ["INTENT", "REPLY", "generated_reply", "intent_metrics", "pack", "select_reply"]
