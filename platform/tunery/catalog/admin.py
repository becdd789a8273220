from __future__ import annotations

from django.contrib import admin

from tunery.catalog.models import BaseModel, FineTunedModel
from tunery.core.admin import AuditedModelAdmin


@admin.register(BaseModel)
class BaseModelAdmin(AuditedModelAdmin):
    list_display = ["name", "tenant", "architecture", "parameters", "is_active", "created_at"]
    list_filter = ["is_active", "architecture"]
    search_fields = ["name", "description"]


@admin.register(FineTunedModel)
class FineTunedModelAdmin(AuditedModelAdmin):
    list_display = ["id", "tenant", "base_model", "parent", "vertical", "task", "created_at", "deleted_at"]
    list_filter = ["vertical", "tenant"]
    search_fields = ["id", "parent__id"]
    readonly_fields = ["id", "tenant", "job", "base_model", "parent", "artifact_path", "metrics", "created_at"]
