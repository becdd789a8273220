"""Parsing feedback bodies. Every refusal names the offending field and says what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunery.core.errors import InvalidRequest

#: Characters of a corrected reply or a preference answer at most.
MAX_TEXT = 20_000
MAX_LABEL = 200
MAX_ENTITIES = 500
FIELDS = ("index", "label", "labels", "entities", "reply", "rating", "preference")
#: Which corrections fit which task kind (a rating fits every kind).
FIELDS_BY_KIND = {
    "sequence_classification": ("label",),
    "multi_label_classification": ("labels",),
    "token_classification": ("entities",),
    "causal_lm": ("reply", "preference"),
}


def _invalid(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


@dataclass(frozen=True)
class FeedbackBody:
    index: int = 0
    label: str | None = None
    labels: list[str] | None = None
    entities: list[dict[str, Any]] | None = None
    reply: str | None = None
    rating: int | None = None
    preference: dict[str, str] | None = None

    def corrections(self) -> list[str]:
        return [name for name in FIELDS[1:] if getattr(self, name) is not None]


def require_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    return data


def feedback_body(data: Any) -> FeedbackBody:
    data = require_object(data)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise _invalid(
            f"Unknown field {unknown[0]!r}; feedback takes {', '.join(FIELDS)}.", unknown[0], "unknown_field"
        )
    index = data.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise _invalid("index must be a whole number >= 0 (the item of the prediction).", "index")
    body = FeedbackBody(
        index=index,
        label=_label(data["label"], "label") if "label" in data else None,
        labels=_labels(data["labels"]) if "labels" in data else None,
        entities=_entities(data["entities"]) if "entities" in data else None,
        reply=_text(data["reply"], "reply") if "reply" in data else None,
        rating=_rating(data["rating"]) if "rating" in data else None,
        preference=_preference(data["preference"]) if "preference" in data else None,
    )
    if not body.corrections():
        raise _invalid(
            "Feedback needs a correction: label, labels, entities, reply, rating or preference.",
            "label",
            "missing_correction",
        )
    return body


def check_fits(body: FeedbackBody, kind: str) -> None:
    """Refuse a correction the model's kind cannot take (a label for a language model, ...)."""
    allowed = FIELDS_BY_KIND.get(kind, ())
    for name in body.corrections():
        if name != "rating" and name not in allowed:
            takes = ", ".join((*allowed, "rating"))
            raise _invalid(f"A {kind} model's feedback takes {takes}; not {name}.", name, "correction_not_for_kind")


def _label(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid(f"{param} must be a non-empty string.", param)
    if len(value) > MAX_LABEL:
        raise _invalid(f"{param} has {len(value)} characters; at most {MAX_LABEL}.", param)
    return value.strip()


def _labels(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_ENTITIES:
        raise _invalid(f"labels must be a list of at most {MAX_ENTITIES} strings (may be empty).", "labels")
    return sorted({_label(v, f"labels[{i}]") for i, v in enumerate(value)})


def _entities(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > MAX_ENTITIES:
        raise _invalid(f"entities must be a list of at most {MAX_ENTITIES} objects (may be empty).", "entities")
    entities = []
    for i, entity in enumerate(value):
        param = f"entities[{i}]"
        if not isinstance(entity, dict):
            raise _invalid(f"{param} must be an object with 'type' and 'text'.", param)
        kept = {"type": _label(entity.get("type"), f"{param}.type"), "text": _text(entity.get("text"), f"{param}.text")}
        for bound in ("start", "end"):
            if bound in entity:
                position = entity[bound]
                if not isinstance(position, int) or isinstance(position, bool) or position < 0:
                    raise _invalid(f"{param}.{bound} must be a whole number >= 0.", f"{param}.{bound}")
                kept[bound] = position
        entities.append(kept)
    return entities


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid(f"{param} must be a non-empty string.", param)
    if len(value) > MAX_TEXT:
        raise _invalid(f"{param} has {len(value)} characters; at most {MAX_TEXT}.", param, "input_too_long")
    return value


def _rating(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5:
        raise _invalid("rating must be a whole number from 1 (bad) to 5 (good).", "rating")
    return value


def _preference(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or set(value) != {"preferred", "rejected"}:
        raise _invalid(
            "preference must be an object with exactly 'preferred' and 'rejected' (two answers to the same input).",
            "preference",
            "invalid_preference",
        )
    preferred = _text(value["preferred"], "preference.preferred")
    rejected = _text(value["rejected"], "preference.rejected")
    if preferred.strip() == rejected.strip():
        raise _invalid(
            "preference.preferred and preference.rejected are the same answer.", "preference", "invalid_preference"
        )
    return {"preferred": preferred, "rejected": rejected}
