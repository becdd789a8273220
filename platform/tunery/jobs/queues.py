"""Queue names and the fair order in which workers take queued jobs.

Training queues are named by GPU class and count (``gpu``, ``gpu.x2``, ``gpu.h100``,
``gpu.h100.x2``) so a worker subscribes to the jobs its host can run. A message on a queue only
wakes a worker: the worker then claims the first eligible job in :func:`eligible_jobs` order, not
the job the message named, so one tenant's burst cannot starve the others.
"""

from __future__ import annotations

import re

from django.db.models import Count, F, OuterRef, Subquery
from django.db.models.functions import Coalesce

from tunery.jobs.models import FineTuningJob, JobStatus

CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"
_GPU_CLASS = re.compile(r"^[a-z0-9][a-z0-9_-]{0,30}$")


def training_queue(gpu_count: int = 0, gpu_class: str = "") -> str:
    """The queue a training job goes to: ``gpu`` plus the GPU class and, above one GPU, the count."""
    if gpu_count < 0:
        raise ValueError("gpu_count must be >= 0")
    name = GPU_QUEUE
    if gpu_class:
        gpu_class = gpu_class.lower()
        if not _GPU_CLASS.match(gpu_class):
            raise ValueError(f"GPU class {gpu_class!r} must be a short lowercase name such as 'h100'")
        name += f".{gpu_class}"
    if gpu_count > 1:
        name += f".x{gpu_count}"
    return name


def eligible_jobs(queue: str, limit: int = 50) -> list[FineTuningJob]:
    """Queued jobs of ``queue`` a worker may start now, fairest first.

    A tenant at its running-job limit (``Tenant.max_concurrent_jobs``) is skipped. Among the rest,
    tenants with fewer running jobs go first (round robin across tenants), then older submissions.
    All in one query, so a tenant with thousands of queued jobs cannot hide another's.
    """
    running = (
        FineTuningJob.objects.filter(tenant=OuterRef("tenant"), status=JobStatus.RUNNING)
        .order_by()
        .values("tenant")
        .annotate(count=Count("pk"))
        .values("count")
    )
    return list(
        FineTuningJob.objects.filter(status=JobStatus.QUEUED, queue=queue, tenant__is_active=True)
        .exclude(requested_action="cancel")
        .annotate(tenant_running=Coalesce(Subquery(running), 0))
        .filter(tenant_running__lt=F("tenant__max_concurrent_jobs"))
        .order_by("tenant_running", "created_at", "id")[:limit]
    )
