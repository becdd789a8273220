"""OpenAI's Batch object: one render function, and serializers that document it (OpenAPI)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from tunery.batches.models import BATCH_QUEUES, Batch, BatchStatus
from tunery.batches.runner import ENDPOINTS
from tunery.core.timestamps import unix_seconds
from tunery.jobs.serializers import MetadataField


def batch_object(batch: Batch) -> dict[str, Any]:
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": batch.errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": unix_seconds(batch.created_at),
        "in_progress_at": unix_seconds(batch.in_progress_at),
        "expires_at": unix_seconds(batch.expires_at),
        "finalizing_at": unix_seconds(batch.finalizing_at),
        "completed_at": unix_seconds(batch.completed_at),
        "failed_at": unix_seconds(batch.failed_at),
        "expired_at": unix_seconds(batch.expired_at),
        "cancelling_at": unix_seconds(batch.cancelling_at),
        "cancelled_at": unix_seconds(batch.cancelled_at),
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "metadata": batch.metadata or None,
        "queue": batch.queue,  # Tunery's addition
    }


class RequestCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()


class BatchObjectSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["batch"])
    endpoint = serializers.ChoiceField(choices=ENDPOINTS)
    errors = serializers.DictField(allow_null=True, help_text='{"object": "list", "data": [{code, message, line}]}')
    input_file_id = serializers.CharField()
    completion_window = serializers.CharField()
    status = serializers.ChoiceField(choices=BatchStatus.choices)
    output_file_id = serializers.CharField(allow_null=True)
    error_file_id = serializers.CharField(allow_null=True)
    created_at = serializers.IntegerField(help_text="Unix seconds.")
    in_progress_at = serializers.IntegerField(allow_null=True)
    expires_at = serializers.IntegerField(allow_null=True)
    finalizing_at = serializers.IntegerField(allow_null=True)
    completed_at = serializers.IntegerField(allow_null=True)
    failed_at = serializers.IntegerField(allow_null=True)
    expired_at = serializers.IntegerField(allow_null=True)
    cancelling_at = serializers.IntegerField(allow_null=True)
    cancelled_at = serializers.IntegerField(allow_null=True)
    request_counts = RequestCountsSerializer()
    metadata = serializers.DictField(child=serializers.CharField(), allow_null=True)
    queue = serializers.ChoiceField(choices=BATCH_QUEUES, help_text="Tunery: the worker queue it runs on.")


class BatchCreateSerializer(serializers.Serializer):
    """Request body of POST /v1/batches."""

    input_file_id = serializers.CharField(min_length=1, help_text="A file uploaded with purpose 'batch'.")
    endpoint = serializers.ChoiceField(choices=ENDPOINTS)
    completion_window = serializers.ChoiceField(choices=["24h"])
    metadata = MetadataField(
        child=serializers.CharField(allow_blank=True, max_length=512), required=False, allow_null=True
    )
    queue = serializers.ChoiceField(
        choices=BATCH_QUEUES, required=False, help_text="Tunery: 'cpu' (default) or 'gpu' workers score it."
    )
