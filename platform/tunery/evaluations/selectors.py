"""Reads of evaluations, always within one tenant."""

from __future__ import annotations

from django.db.models import QuerySet

from tunery.core.errors import NotFound
from tunery.evaluations.models import Evaluation
from tunery.tenants.models import Tenant


def evaluations(tenant: Tenant) -> QuerySet[Evaluation]:
    """The tenant's evaluations, without their per-row outputs (only a comparison reads those)."""
    return Evaluation.objects.filter(tenant=tenant).defer("outputs")


def tenant_evaluation(tenant: Tenant, evaluation_id: str, param: str = "id") -> Evaluation:
    found = Evaluation.objects.filter(tenant=tenant, pk=evaluation_id).select_related("file").first()
    if found is None:
        raise NotFound(f"No evaluation with id '{evaluation_id}' found.", param=param)
    return found
