from __future__ import annotations

from django.contrib import admin
from django.db import transaction

from tunery.core.admin import AuditedModelAdmin, profile_warnings
from tunery.files.models import File


def _delete_content_on_commit(file: File) -> None:
    name = file.content.name
    if name:
        storage = file.content.storage
        transaction.on_commit(lambda: storage.delete(name))


@admin.register(File)
class FileAdmin(AuditedModelAdmin):
    list_display = ["id", "tenant", "filename", "purpose", "format", "bytes", "row_count", "created_at", "deleted_at"]
    list_filter = ["purpose", "format", "tenant"]
    search_fields = ["id", "filename", "sha256"]
    readonly_fields = [
        "id",
        "tenant",
        "format",
        "bytes",
        "sha256",
        "row_count",
        "columns",
        "data_warnings",
        "profile",
        "content",
        "created_at",
    ]

    @admin.display(description="data warnings")
    def data_warnings(self, file: File):
        return profile_warnings(file.profile)

    def has_add_permission(self, request):
        return False  # files come in through the API, which validates and checks quotas

    # Deleting a row here also removes its stored content (once the delete has committed).
    def delete_model(self, request, obj: File) -> None:
        _delete_content_on_commit(obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset) -> None:
        for file in queryset:
            _delete_content_on_commit(file)
        super().delete_queryset(request, queryset)
