"""Queue names and the fair order in which workers take queued jobs.

Training queues are named by GPU class and count (``gpu``, ``gpu.x2``, ``gpu.h100``,
``gpu.h100.x2``) so a worker subscribes to the jobs its host can run. A message on a queue only
wakes a worker: the worker then claims the first eligible job in :func:`eligible_jobs` order, not
the job the message named, so one tenant's burst cannot starve the others.
"""

from __future__ import annotations

import re
from collections import Counter

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
    """
    running = Counter(
        FineTuningJob.objects.filter(status=JobStatus.RUNNING).values_list("tenant_id", flat=True).iterator()
    )
    queued = (
        FineTuningJob.objects.filter(status=JobStatus.QUEUED, queue=queue)
        .exclude(requested_action="cancel")
        .select_related("tenant")
        .order_by("created_at", "id")[: limit * 4]
    )
    candidates = [
        job for job in queued if job.tenant.is_active and running[job.tenant_id] < job.tenant.max_concurrent_jobs
    ]
    candidates.sort(key=lambda job: (running[job.tenant_id], job.created_at, job.id))
    return candidates[:limit]
