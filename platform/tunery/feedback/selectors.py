"""Reads of the prediction log and its feedback, always within one tenant."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from tunery.catalog.models import FineTunedModel
from tunery.core import writebehind
from tunery.core.errors import NotFound
from tunery.core.scoping import scope_to_tenant
from tunery.feedback.models import PredictionRecord
from tunery.tenants.models import Tenant

ARTIFACT_MANIFEST = "tunery_artifact.json"  # tunery_engine.artifact.ARTIFACT_FILE (read without torch)


def log_cutoff() -> datetime:
    """Log rows older than this are expired: no feedback, purged by the next clean-up."""
    return timezone.now() - timedelta(days=settings.TUNERY_PREDICTION_LOG_DAYS)


def answered_item(tenant: Tenant, request_id: str, index: int, endpoint: str) -> PredictionRecord:
    """The tenant's logged item, or a 404 that says whether it is unknown or expired (another
    tenant's id looks exactly like an unknown one)."""
    found = (
        scope_to_tenant(PredictionRecord.objects.all(), tenant)
        .filter(request_id=request_id, endpoint=endpoint)
        .order_by("index")
        .only("index", "created_at")
    )
    indexes = {row.index: row for row in found}
    if not indexes and writebehind.flush():  # answered by this process a moment ago, still buffered
        indexes = {row.index: row for row in found.all()}
    if not indexes:
        raise NotFound(
            f"No {endpoint.replace('_', ' ')} with id '{request_id}' is in your prediction log.",
            param="id",
            code="prediction_not_found",
        )
    if min(row.created_at for row in indexes.values()) < log_cutoff():
        raise NotFound(
            f"The {endpoint.replace('_', ' ')} '{request_id}' is older than the prediction log keeps "
            f"({settings.TUNERY_PREDICTION_LOG_DAYS} days); it can no longer take feedback.",
            param="id",
            code="prediction_expired",
        )
    if index not in indexes:
        raise NotFound(
            f"The {endpoint.replace('_', ' ')} '{request_id}' has items 0 to {max(indexes)}; there is no item {index}.",
            param="index",
            code="prediction_item_not_found",
        )
    return PredictionRecord.objects.select_related("feedback").get(pk=indexes[index].pk)


def known_labels(tenant: Tenant, model_id: str) -> set[str] | None:
    """The labels (entity types for a tagger) the model was trained on, from its artifact; None
    when the artifact is gone or has none (then no label is flagged as new)."""
    from tunery.serving.process_runtime import artifact_dir

    model = FineTunedModel.objects.filter(tenant=tenant, pk=model_id).first()
    if model is None:
        return None
    try:
        manifest = json.loads((artifact_dir(model) / ARTIFACT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    names = [str(name) for name in manifest.get("label_names") or []]
    if not names:
        return None
    if manifest.get("kind") == "token_classification":
        return {name.split("-", 1)[1] for name in names if "-" in name}
    return set(names)
