from __future__ import annotations

from collections.abc import Callable

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from tunery.core.admin import AuditedModelAdmin, audit_admin, profile_warnings
from tunery.core.errors import ApiError
from tunery.jobs import services
from tunery.jobs.models import FineTuningJob, JobCheckpoint, JobEvent, MeasuredThroughput, UsageRecord, WorkerClass


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    fields = ["created_at", "level", "type", "message", "data"]
    readonly_fields = fields
    ordering = ["-created_at"]
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class JobCheckpointInline(admin.TabularInline):
    model = JobCheckpoint
    extra = 0
    fields = ["step_number", "is_best", "metrics", "path", "created_at"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(FineTuningJob)
class FineTuningJobAdmin(AuditedModelAdmin):
    list_display = [
        "id",
        "tenant",
        "vertical",
        "task",
        "base_model",
        "parent_model",
        "status",
        "progress_summary",
        "created_at",
    ]
    list_filter = ["status", "vertical", "tenant"]
    search_fields = ["id", "suffix"]
    inlines = [JobCheckpointInline, JobEventInline]
    actions = ["cancel_jobs", "pause_jobs", "resume_jobs"]
    # The lifecycle fields change only through tunery.jobs.lifecycle (the actions below), never by hand.
    readonly_fields = [
        "id",
        "status",
        "requested_action",
        "error",
        "dispatched_at",
        "estimated_finish",
        "result_files",
        "tenant",
        "created_by",
        "base_model",
        "parent_model",
        "parent_checkpoint",
        "replay_fraction",
        "training_file",
        "validation_file",
        "vertical",
        "vertical_version",
        "task",
        "requested_hyperparameters",
        "resolved_config",
        "data_warnings",
        "data_profile",
        "estimate",
        "progress",
        "attempts",
        "lease_owner",
        "lease_expires_at",
        "heartbeat_at",
        "current_checkpoint",
        "trained_tokens",
        "training_seconds",
        "created_at",
        "started_at",
        "finished_at",
    ]

    def has_add_permission(self, request):
        return False  # jobs are created through the API, which checks packs, files and quotas

    @admin.action(description="Cancel the selected jobs")
    def cancel_jobs(self, request: HttpRequest, jobs: QuerySet[FineTuningJob]) -> None:
        self._request_each(request, jobs, "cancel", services.cancel_job)

    @admin.action(description="Pause the selected jobs")
    def pause_jobs(self, request: HttpRequest, jobs: QuerySet[FineTuningJob]) -> None:
        self._request_each(request, jobs, "pause", services.pause_job)

    @admin.action(description="Resume the selected jobs")
    def resume_jobs(self, request: HttpRequest, jobs: QuerySet[FineTuningJob]) -> None:
        self._request_each(request, jobs, "resume", services.resume_job)

    def _request_each(
        self,
        request: HttpRequest,
        jobs: QuerySet[FineTuningJob],
        action: str,
        request_job: Callable[..., FineTuningJob],
    ) -> None:
        """The API's path (quotas, events naming the actor, the wake-up message), job by job."""
        actor = f"admin:{request.user.get_username()}"
        for job in jobs:
            try:
                job = request_job(job=job, actor=actor)
            except ApiError as refused:
                self.message_user(request, refused.message, messages.WARNING)
                continue
            audit_admin(request, action, job, job_status=job.status, requested_action=job.requested_action)
            pending = f", {job.requested_action} requested" if job.requested_action else ""
            self.message_user(request, f"{job.pk} is {job.status}{pending}.")

    @admin.display(description="data warnings")
    def data_warnings(self, job: FineTuningJob):
        return profile_warnings(job.data_profile)

    @admin.display(description="progress")
    def progress_summary(self, job: FineTuningJob) -> str:
        progress = job.progress or {}
        step, total = progress.get("step"), progress.get("total_steps")
        if step is None or not total:
            return "—"
        return f"{step}/{total} ({100 * step / total:.0f}%)"


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = ["tenant", "job", "kind", "training_seconds", "trained_tokens", "gpu_count", "created_at"]
    list_filter = ["kind", "tenant"]


@admin.register(WorkerClass)
class WorkerClassAdmin(AuditedModelAdmin):
    """Device, memory and hourly price of a training queue's hosts: what job estimates assume."""

    list_display = ["queue", "device", "memory_bytes", "hourly_price", "currency", "updated_at"]


@admin.register(MeasuredThroughput)
class MeasuredThroughputAdmin(admin.ModelAdmin):
    """Training speed measured on finished jobs (written by the workers; delete a row to start over)."""

    list_display = ["base_model", "queue", "task_kind", "tokens_per_second", "samples_per_second", "jobs", "updated_at"]
    list_filter = ["queue", "task_kind"]
    readonly_fields = ["base_model", "queue", "task_kind", "tokens_per_second", "samples_per_second", "jobs"]

    def has_add_permission(self, request):
        return False
