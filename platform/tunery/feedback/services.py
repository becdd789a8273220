"""Writes for feedback: corrections of logged predictions."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction

from tunery.feedback import selectors
from tunery.feedback.inputs import FeedbackBody, check_fits
from tunery.feedback.models import Feedback, PredictionRecord
from tunery.tenants.models import Tenant


@dataclass(frozen=True)
class Recorded:
    feedback: Feedback
    #: A feedback for this item existed and was replaced.
    replaced: bool


def record_feedback(
    *, tenant: Tenant, request_id: str, endpoint: str, body: FeedbackBody, source: str = Feedback.Source.API
) -> Recorded:
    """Record (or replace: one feedback per answered item) a correction. A label the model does
    not know is accepted for the next training and listed in ``new_labels``."""
    record = selectors.answered_item(tenant, request_id, body.index, endpoint)
    check_fits(body, record.kind)
    fields = {
        "tenant": tenant,
        "label": body.label or "",
        "labels": body.labels or [],
        "entities": body.entities,
        "reply": body.reply or "",
        "rating": body.rating,
        "preference": body.preference,
        "correct": _correct(record, body),
        "new_labels": _new_labels(tenant, record, body),
        "source": source,
    }
    for _ in range(2):  # a concurrent first post for the same item: the second replaces it
        try:
            with transaction.atomic():
                feedback, created = Feedback.objects.update_or_create(record=record, defaults=fields)
            return Recorded(feedback, replaced=not created)
        except IntegrityError:
            continue
    raise RuntimeError("feedback could not be recorded")  # pragma: no cover  # two races in a row


def _correct(record: PredictionRecord, body: FeedbackBody) -> bool | None:
    if body.label is not None and record.label:
        return body.label == record.label
    if body.labels is not None:
        return sorted(body.labels) == sorted(record.labels)
    if body.entities is not None:
        return sorted({e["type"] for e in body.entities}) == sorted(record.labels)
    if body.reply is not None and record.output_text:
        return body.reply.strip() == record.output_text.strip()
    return None


def _new_labels(tenant: Tenant, record: PredictionRecord, body: FeedbackBody) -> list[str]:
    given = set(body.labels or []) | ({body.label} if body.label else set())
    given |= {e["type"] for e in body.entities or []}
    if not given:
        return []
    known = selectors.known_labels(tenant, record.model_id)
    return sorted(given - known) if known is not None else []
