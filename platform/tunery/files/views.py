from __future__ import annotations

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from tunery.core.pagination import cursor_page, parse_order
from tunery.core.schema import BODY_ERRORS, ERRORS, error_responses, list_of, page_parameters
from tunery.core.scoping import TenantScopedViewSet
from tunery.files import services
from tunery.files.models import File
from tunery.files.serializers import (
    FileDeletedSerializer,
    FileObjectSerializer,
    FileUploadSerializer,
    file_object,
)
from tunery.files.uploads import LimitedHashingUploadHandler, accept_chunked_body

CONTENT_TYPES = {"jsonl": "application/jsonl", "csv": "text/csv"}


@extend_schema_view(
    list=extend_schema(
        summary="List files",
        parameters=[
            *page_parameters(max_limit=10_000, order=True),
            OpenApiParameter("purpose", str),
        ],
        responses={200: list_of("FileList", FileObjectSerializer), **ERRORS},
    ),
    create=extend_schema(
        summary="Upload a training file (JSONL or CSV)",
        request={"multipart/form-data": FileUploadSerializer},
        # 411: a chunked body behind a server that cannot mark its end (gunicorn can)
        responses={200: FileObjectSerializer, **BODY_ERRORS, **error_responses(411)},
    ),
    retrieve=extend_schema(summary="Retrieve a file", responses={200: FileObjectSerializer, **ERRORS}),
    destroy=extend_schema(summary="Delete a file", responses={200: FileDeletedSerializer, **ERRORS}),
)
class FileViewSet(TenantScopedViewSet):
    scoped_model = File
    object_name = "file"
    serializer_class = FileObjectSerializer
    parser_classes = [MultiPartParser]  # the only body this API takes is an upload

    def refine_queryset(self, queryset):
        return queryset.filter(deleted_at__isnull=True)

    def list(self, request: Request) -> Response:
        files = self.get_queryset()
        purpose = request.query_params.get("purpose")
        if purpose:
            files = files.filter(purpose=purpose)
        return Response(cursor_page(request, files, file_object, order=parse_order(request), max_limit=10_000))

    def create(self, request: Request) -> Response:
        # Before request.data is touched: the size limit must apply while the body streams in.
        accept_chunked_body(request._request)
        request._request.upload_handlers = [LimitedHashingUploadHandler(request._request)]
        created = services.upload_file(
            tenant=self.tenant,
            uploaded=request.FILES.get("file"),
            purpose=request.data.get("purpose"),
            vertical=request.data.get("vertical"),
            task=request.data.get("task"),
            column_mapping=request.data.get("column_mapping"),
        )
        return Response(file_object(created))

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(file_object(self.get_object()))

    def destroy(self, request: Request, pk: str) -> Response:
        file = self.get_object()
        services.delete_file(file=file)
        return Response({"id": file.id, "object": "file", "deleted": True})

    @extend_schema(
        summary="Download a file's content",
        responses={
            **{(200, media_type): OpenApiResponse(OpenApiTypes.BINARY) for media_type in CONTENT_TYPES.values()},
            (200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY),
            **ERRORS,
        },
    )
    def content(self, request: Request, pk: str) -> FileResponse:
        file = self.get_object()
        return FileResponse(
            file.content.open("rb"),
            as_attachment=True,
            filename=file.filename,
            content_type=CONTENT_TYPES.get(file.format, "application/octet-stream"),
        )
