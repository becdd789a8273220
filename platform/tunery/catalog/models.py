"""The model catalogue: base models registered by admins and tenants' fine-tuned models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models

if TYPE_CHECKING:
    from tunery.jobs.models import FineTuningJob


class BaseModel(models.Model):
    """A pretrained model the platform can fine-tune. Weights come from a local path or an
    installed package (air-gapped: never a hub download). ``tenant`` empty = offered to all."""

    name = models.CharField(max_length=100, help_text="The id clients pass as `model`, e.g. 'all-minilm-l6-v2'.")
    tenant = models.ForeignKey(
        "tenants.Tenant", null=True, blank=True, on_delete=models.CASCADE, related_name="base_models"
    )
    local_path = models.CharField(max_length=500, blank=True, help_text="Directory with config.json + safetensors.")
    package = models.CharField(max_length=100, blank=True, help_text="Installed package carrying the model.")
    architecture = models.CharField(max_length=50, blank=True, help_text="config.model_type, e.g. bert, qwen2")
    parameters = models.BigIntegerField(default=0)
    tasks = models.JSONField(default=list, blank=True, help_text="Task kinds it suits.")
    description = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="unique_base_model_name_per_scope")]

    def __str__(self) -> str:
        return self.name


class FineTunedModel(models.Model):
    """A job's result (``ft:<base>:<tenant>:<suffix>:<job>``). One per job, whatever the attempts.
    Or a job's early linear probe (``checkpoint``: the job's step-0 checkpoint, ``job`` None), named
    as that checkpoint (``ft:...:ckpt-step-0``) and entered in the catalogue when a tenant deploys it,
    whatever its job's status."""

    id = models.CharField(primary_key=True, max_length=200)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="fine_tuned_models")
    job = models.OneToOneField(
        "jobs.FineTuningJob", null=True, blank=True, on_delete=models.PROTECT, related_name="fine_tuned_model"
    )
    #: The early probe's checkpoint (``JobCheckpoint.Kind.LINEAR_PROBE``); None for a job's result.
    checkpoint = models.OneToOneField(
        "jobs.JobCheckpoint", null=True, blank=True, on_delete=models.PROTECT, related_name="probe_model"
    )
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="+")
    artifact_path = models.CharField(max_length=500)
    vertical = models.CharField(max_length=63)
    task = models.CharField(max_length=63)
    metrics = models.JSONField(default=dict, blank=True)
    #: The model a continued fine-tune started from (its job's ``parent_model``); None: from the base.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(job__isnull=False, checkpoint__isnull=True)
                | models.Q(job__isnull=True, checkpoint__isnull=False),
                name="a_job_result_or_an_early_probe",
            )
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def source_job_id(self) -> str:
        """The job that trained it (an early probe's: its checkpoint's job)."""
        return self.job_id if self.job_id is not None else self.checkpoint.job_id  # type: ignore[union-attr]

    @property
    def source_job(self) -> FineTuningJob:
        return self.job if self.job is not None else self.checkpoint.job  # type: ignore[union-attr]
