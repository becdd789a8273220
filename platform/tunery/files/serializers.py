"""OpenAI's File object. The serializer class documents the shape (OpenAPI); rendering goes
through one plain function so list pages stay cheap."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tunery.files.models import File


def file_object(file: File) -> dict[str, Any]:
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": int(file.created_at.timestamp()),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
        # Tunery's additions
        "format": file.format,
        "sha256": file.sha256,
        "row_count": file.row_count,
        "columns": file.columns,
        "profile": file.profile or None,
        "column_mapping": file.column_mapping or None,
    }


class FileObjectSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="file")
    bytes = serializers.IntegerField()
    created_at = serializers.IntegerField(help_text="Unix seconds.")
    filename = serializers.CharField()
    purpose = serializers.ChoiceField(choices=File.Purpose.choices)
    status = serializers.CharField()
    status_details = serializers.CharField(allow_null=True)
    expires_at = serializers.IntegerField(allow_null=True)
    format = serializers.ChoiceField(choices=["jsonl", "csv"])
    sha256 = serializers.CharField()
    row_count = serializers.IntegerField()
    columns = serializers.ListField(child=serializers.CharField())
    profile = serializers.DictField(
        allow_null=True,
        help_text="Data profile when the upload named a vertical/task: rows, classes and examples per class, "
        "text lengths in whitespace words, duplicates, conflicting labels, and warnings [{code, message}].",
    )

    column_mapping = serializers.DictField(
        child=serializers.CharField(), allow_null=True, help_text="File column -> task column, as uploaded."
    )

    def to_representation(self, instance: File) -> dict[str, Any]:
        return file_object(instance)


@extend_schema_field({"type": "string", "format": "binary"})
class UploadedFileField(serializers.FileField):
    """A multipart file part (drf-spectacular says ``format: uri`` for a FileField otherwise)."""


class FileUploadSerializer(serializers.Serializer):
    """Request body of POST /v1/files (multipart/form-data)."""

    file = UploadedFileField(help_text="A .jsonl or .csv file.")
    purpose = serializers.ChoiceField(choices=["fine-tune", "batch"])
    vertical = serializers.CharField(required=False, help_text="Check the rows against this pack's task.")
    task = serializers.CharField(required=False, help_text="The task whose schema the rows must fit.")
    column_mapping = serializers.CharField(
        required=False,
        help_text='A JSON object renaming the file\'s columns to the task\'s ({"label": "sentiment"}: '
        "file column -> task column); the rows are checked through it, and jobs on this file use it "
        "unless they give their own.",
    )


class FileDeletedSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="file")
    deleted = serializers.BooleanField()
