from __future__ import annotations

from django.contrib import admin

from tunery.core.admin import AuditedModelAdmin
from tunery.jobs.models import FineTuningJob, JobCheckpoint, JobEvent, UsageRecord


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
    list_display = ["id", "tenant", "vertical", "task", "base_model", "status", "progress_summary", "created_at"]
    list_filter = ["status", "vertical", "tenant"]
    search_fields = ["id", "suffix"]
    inlines = [JobCheckpointInline, JobEventInline]
    readonly_fields = [
        "id",
        "tenant",
        "created_by",
        "base_model",
        "training_file",
        "validation_file",
        "vertical",
        "vertical_version",
        "task",
        "requested_hyperparameters",
        "resolved_config",
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
