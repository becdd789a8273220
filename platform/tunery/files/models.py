from __future__ import annotations

from django.db import models

from tunery.core.ids import prefixed_id


def new_file_id() -> str:
    return prefixed_id("file")


class File(models.Model):
    """An uploaded file (OpenAI's File object). Content lives in the storage backend."""

    class Purpose(models.TextChoices):
        FINE_TUNE = "fine-tune"
        FINE_TUNE_RESULTS = "fine-tune-results"
        BATCH = "batch"  # a JSONL of requests for /v1/batches
        BATCH_OUTPUT = "batch_output"  # a batch's results or errors, written by the platform
        FEEDBACK = "feedback"  # corrections of logged predictions, one per line (POST /v1/feedback/imports)

    id = models.CharField(primary_key=True, max_length=40, default=new_file_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="files")
    filename = models.CharField(max_length=255)
    purpose = models.CharField(max_length=30, choices=Purpose.choices)
    format = models.CharField(max_length=10)  # jsonl | csv
    bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    row_count = models.PositiveIntegerField(default=0)
    columns = models.JSONField(default=list, blank=True)
    #: Data profile (tunery_contract.profile) against the task the upload was checked with; {} when none.
    profile = models.JSONField(default=dict, blank=True)
    #: The columns renamed to the task's when the upload was checked (file column -> task column).
    column_mapping = models.JSONField(default=dict, blank=True)
    content = models.FileField(upload_to="files/%Y/%m/", max_length=500)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.id} ({self.filename})"
