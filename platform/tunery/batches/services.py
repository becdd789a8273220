"""Writes for batches: create (checks, row, wake a worker) and cancel."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from tunery.batches import dispatch, lifecycle
from tunery.batches.models import BATCH_QUEUES, Batch
from tunery.batches.runner import ENDPOINTS
from tunery.core.errors import InvalidRequest, NotFound
from tunery.files.models import File
from tunery.jobs.queues import CPU_QUEUE
from tunery.jobs.services import checked_metadata
from tunery.tenants.models import Tenant

COMPLETION_WINDOW = timedelta(hours=24)


def create_batch(*, tenant: Tenant, body: dict[str, Any], actor: str) -> Batch:
    endpoint = body.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise InvalidRequest(f"endpoint must be one of {', '.join(ENDPOINTS)}; got {endpoint!r}.", param="endpoint")
    if body.get("completion_window") != "24h":
        raise InvalidRequest("completion_window must be '24h'.", param="completion_window")
    file_id = body.get("input_file_id")
    input_file = (
        File.objects.filter(tenant=tenant, pk=file_id, deleted_at__isnull=True).first()
        if isinstance(file_id, str)
        else None
    )
    if input_file is None:
        raise NotFound(f"No file with id '{file_id}' found.", param="input_file_id")
    if input_file.purpose != File.Purpose.BATCH:
        raise InvalidRequest(
            f"File {input_file.id} has purpose '{input_file.purpose}'; "
            "a batch reads a file uploaded with purpose 'batch'.",
            param="input_file_id",
            code="invalid_file_purpose",
        )
    queue = body.get("queue", CPU_QUEUE)
    if queue not in BATCH_QUEUES:
        raise InvalidRequest(f"queue must be one of {', '.join(BATCH_QUEUES)}; got {queue!r}.", param="queue")
    metadata = checked_metadata(body.get("metadata"))
    with transaction.atomic():
        batch = Batch.objects.create(
            tenant=tenant,
            endpoint=endpoint,
            input_file=input_file,
            metadata=metadata,
            queue=queue,
            total=input_file.row_count,
            expires_at=timezone.now() + COMPLETION_WINDOW,  # enforced by the worker and the reconciler
            created_by=actor[:200],
        )
        dispatch.batch_created(batch.id, batch.queue)
    return batch


def cancel_batch(*, batch: Batch) -> Batch:
    lifecycle.request_cancel(batch.id)
    batch.refresh_from_db()
    return batch
