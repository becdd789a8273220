from __future__ import annotations

from django.contrib import admin

from tunery.batches.models import Batch
from tunery.core.admin import AuditedModelAdmin


@admin.register(Batch)
class BatchAdmin(AuditedModelAdmin):
    list_display = ["id", "tenant", "endpoint", "status", "total", "completed", "failed", "created_at"]
    list_filter = ["status", "endpoint", "tenant"]
    search_fields = ["id"]
    readonly_fields = [field.name for field in Batch._meta.fields]

    def has_add_permission(self, request):
        return False  # batches come in through the API
