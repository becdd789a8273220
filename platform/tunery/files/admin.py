from __future__ import annotations

from django.contrib import admin

from tunery.core.admin import AuditedModelAdmin
from tunery.files.models import File


@admin.register(File)
class FileAdmin(AuditedModelAdmin):
    list_display = ["id", "tenant", "filename", "purpose", "format", "bytes", "row_count", "created_at", "deleted_at"]
    list_filter = ["purpose", "format", "tenant"]
    search_fields = ["id", "filename", "sha256"]
    readonly_fields = ["id", "tenant", "format", "bytes", "sha256", "row_count", "columns", "content", "created_at"]

    def has_add_permission(self, request):
        return False  # files come in through the API, which validates and checks quotas
