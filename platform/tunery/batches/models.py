"""A batch: OpenAI's Batch object, scored by a worker line by line with resumable progress."""

from __future__ import annotations

import secrets

from django.db import models

from tunery.core.leases import LeasedWork
from tunery.jobs.queues import CPU_QUEUE, GPU_QUEUE

#: Where a batch runs (Tunery's extra body field ``queue``): a cpu worker, or a gpu worker's runtime.
BATCH_QUEUES = (CPU_QUEUE, GPU_QUEUE)


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"  # OpenAI's batch ids use "_", not the "-" of prefixed_id


class BatchStatus(models.TextChoices):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL_BATCH_STATUSES = (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)


class Batch(LeasedWork):
    """Status changes go through tunery.batches.lifecycle only.

    Progress is ``lines_done`` (input lines whose result is written) with the byte lengths of the
    partial output and error files at that point: a resumed worker truncates both to those lengths
    and goes on from ``lines_done``, so a line written after the last record is written again once,
    never twice."""

    id = models.CharField(primary_key=True, max_length=40, default=new_batch_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="batches")
    endpoint = models.CharField(max_length=40)
    input_file = models.ForeignKey("files.File", on_delete=models.PROTECT, related_name="+")
    completion_window = models.CharField(max_length=10, default="24h")
    status = models.CharField(max_length=20, choices=BatchStatus.choices, default=BatchStatus.VALIDATING)
    queue = models.CharField(max_length=40, default="cpu")
    output_file = models.ForeignKey("files.File", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    error_file = models.ForeignKey("files.File", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    errors = models.JSONField(null=True, blank=True)  # batch-level errors (OpenAI's "errors" list object)
    metadata = models.JSONField(null=True, blank=True)

    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    lines_done = models.PositiveIntegerField(default=0)
    output_bytes = models.BigIntegerField(default=0)
    error_bytes = models.BigIntegerField(default=0)

    created_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"]), models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"
