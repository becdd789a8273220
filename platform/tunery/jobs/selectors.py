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


def fine_tuned_model_id(job: FineTuningJob) -> str:
    """The id the job's model has (or will have once it succeeds). OpenAI's shape:
    ``ft:<base>:<tenant>:<suffix>:<job id>``."""
    return f"ft:{job.base_model.name}:{job.tenant.slug}:{job.suffix}:{job.pk}"


def split_checkpoint_name(name: str) -> tuple[str, int] | None:
    """(model id, step) of a ``fine_tuned_model_checkpoint`` name; None for any other name."""
    match = _CHECKPOINT_NAME.match(name)
    return (match["model"], int(match["step"])) if match is not None else None


def names_a_checkpoint(name: str) -> bool:
    """``name`` has the shape of a checkpoint's model name or id (whether or not it exists)."""
    return name.startswith("ftckpt-") or split_checkpoint_name(name) is not None


def model_checkpoint(tenant: Tenant, name: str) -> tuple[FineTunedModel, JobCheckpoint] | None:
    """The tenant's checkpoint named by ``fine_tuned_model_checkpoint`` (``ft:...:ckpt-step-N``) or
    its id, with the model that supplies what it lacks: its job's model (checkpoints of succeeded
    jobs), or an early probe's own catalogue entry (once deployed, whatever its job's status); None
    when there is none (or it is another tenant's)."""
    found = job_checkpoint(tenant, name)
    if found is None:
        return None
    models = fine_tuned_models(tenant)
    model = models.filter(job_id=found.job_id).first()
    if model is None and found.kind == JobCheckpoint.Kind.LINEAR_PROBE:
        model = models.filter(checkpoint=found).first()
    return (model, found) if model is not None else None


def served_checkpoint_name(model: FineTunedModel, checkpoint: JobCheckpoint) -> str:
    """The name a checkpoint is served and scored under: an early probe's entry's own id, else
    ``<its job's model>:ckpt-step-N``."""
    if model.checkpoint_id == checkpoint.pk:
        return model.id
    return checkpoint_model_name(model.id, checkpoint.step_number)


def job_checkpoint(tenant: Tenant, name: str) -> JobCheckpoint | None:
    """The tenant's checkpoint named ``name`` (``ft:...:ckpt-step-N`` or its id ``ftckpt-...``),
    whatever its job's status; None when there is none (or it is another tenant's)."""
    named = split_checkpoint_name(name)
    checkpoints = scope_to_tenant(
        JobCheckpoint.objects.select_related("job__base_model", "job__tenant"), tenant, "job__tenant"
    )
    if named is None:
        return checkpoints.filter(pk=name).first() if name.startswith("ftckpt-") else None
    model_id, step = named
    found = checkpoints.filter(job_id=model_id.rsplit(":", 1)[-1], step_number=step).first()
    if found is None:
        return None
    named_job = (
        model_id == fine_tuned_model_id(found.job)
        or FineTunedModel.objects.filter(pk=model_id, job_id=found.job_id).exists()
    )
    return found if named_job else None


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
