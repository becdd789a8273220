"""Reads for jobs and the model catalogue, always within one tenant."""

from __future__ import annotations

import re
from datetime import datetime

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from tunery.catalog.models import BaseModel, FineTunedModel
from tunery.core.scoping import TenantRequired, scope_to_tenant
from tunery.jobs.models import ACTIVE_STATUSES, FineTuningJob, JobCheckpoint, UsageRecord
from tunery.tenants.models import Tenant


def visible_base_models(tenant: Tenant) -> QuerySet[BaseModel]:
    """Active base models offered to everyone or to this tenant."""
    if tenant is None or tenant.pk is None:
        raise TenantRequired("refusing to list base models without a tenant")
    return BaseModel.objects.filter(Q(tenant__isnull=True) | Q(tenant=tenant), is_active=True)


def base_model_by_name(tenant: Tenant, name: str) -> BaseModel | None:
    """The tenant's own model of that name wins over a platform-wide one."""
    candidates = sorted(visible_base_models(tenant).filter(name=name), key=lambda m: m.tenant_id is None)
    return candidates[0] if candidates else None


def fine_tuned_models(tenant: Tenant) -> QuerySet[FineTunedModel]:
    return scope_to_tenant(FineTunedModel.objects.filter(deleted_at__isnull=True), tenant)


#: OpenAI's ``fine_tuned_model_checkpoint``: the job's model id and the checkpoint's step (at most
#: nine digits: a step the database's integer column cannot hold is no checkpoint's).
_CHECKPOINT_NAME = re.compile(r"^(?P<model>ft:.+):ckpt-step-(?P<step>\d{1,9})$")


def checkpoint_model_name(model_id: str, step: int) -> str:
    return f"{model_id}:ckpt-step-{step}"


def split_checkpoint_name(name: str) -> tuple[str, int] | None:
    """(model id, step) of a ``fine_tuned_model_checkpoint`` name; None for any other name."""
    match = _CHECKPOINT_NAME.match(name)
    return (match["model"], int(match["step"])) if match is not None else None


def names_a_checkpoint(name: str) -> bool:
    """``name`` has the shape of a checkpoint's model name or id (whether or not it exists)."""
    return name.startswith("ftckpt-") or split_checkpoint_name(name) is not None


def model_checkpoint(tenant: Tenant, name: str) -> tuple[FineTunedModel, JobCheckpoint] | None:
    """The tenant's fine-tuned model and its checkpoint named by ``fine_tuned_model_checkpoint``
    (``ft:...:ckpt-step-N``) or the checkpoint's id; None when there is none (or it is another
    tenant's). Only a succeeded job's checkpoints: the job's model supplies what a checkpoint lacks."""
    named = split_checkpoint_name(name)
    models = fine_tuned_models(tenant)
    if named is not None:
        model_id, step = named
        model = models.filter(pk=model_id).first()
        found = JobCheckpoint.objects.filter(job_id=model.job_id, step_number=step).first() if model else None
    else:
        checkpoints = scope_to_tenant(JobCheckpoint.objects.filter(pk=name), tenant, "job__tenant")
        found = checkpoints.first() if name.startswith("ftckpt-") else None
        model = models.filter(job_id=found.job_id).first() if found is not None else None
    if model is None or found is None:
        return None
    return model, found


def active_job_count(tenant: Tenant) -> int:
    return FineTuningJob.objects.filter(tenant=tenant, status__in=ACTIVE_STATUSES).count()


def month_start(now: datetime | None = None) -> datetime:
    now = now or timezone.now()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def training_hours_this_month(tenant: Tenant) -> float:
    """Recorded usage plus what unfinished jobs have trained so far."""
    since = month_start()
    recorded = UsageRecord.objects.filter(tenant=tenant, created_at__gte=since).aggregate(s=Sum("training_seconds"))
    ongoing = (
        FineTuningJob.objects.filter(tenant=tenant, usage__isnull=True, created_at__gte=since)
        .exclude(training_seconds=0)
        .aggregate(s=Sum("training_seconds"))
    )
    return ((recorded["s"] or 0.0) + (ongoing["s"] or 0.0)) / 3600.0
