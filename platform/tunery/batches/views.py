"""/v1/batches: create, list, retrieve and cancel batches (OpenAI's Batch API)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.request import Request
from rest_framework.response import Response

from tunery.batches import services
from tunery.batches.models import Batch
from tunery.batches.serializers import BatchCreateSerializer, BatchObjectSerializer, batch_object
from tunery.core.pagination import cursor_page
from tunery.core.schema import BODY_ERRORS, ERRORS, list_of, page_parameters
from tunery.core.scoping import TenantScopedViewSet
from tunery.serving.inputs import require_object
from tunery.serving.views import request_body


@extend_schema_view(
    list=extend_schema(
        summary="List batches",
        parameters=page_parameters(),
        responses={200: list_of("BatchList", BatchObjectSerializer), **ERRORS},
    ),
    create=extend_schema(
        summary="Create a batch over an uploaded JSONL of requests",
        request=BatchCreateSerializer,
        responses={200: BatchObjectSerializer, **BODY_ERRORS},
    ),
    retrieve=extend_schema(summary="Retrieve a batch", responses={200: BatchObjectSerializer, **ERRORS}),
)
class BatchViewSet(TenantScopedViewSet):
    scoped_model = Batch
    object_name = "batch"

    def list(self, request: Request) -> Response:
        return Response(cursor_page(request, self.get_queryset(), batch_object))

    def create(self, request: Request) -> Response:
        body = require_object(request_body(request))
        batch = services.create_batch(tenant=self.tenant, body=body, actor=self.actor)
        return Response(batch_object(batch))

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(batch_object(self.get_object()))

    @extend_schema(summary="Cancel a batch", request=None, responses={200: BatchObjectSerializer, **ERRORS})
    def cancel(self, request: Request, pk: str) -> Response:
        return Response(batch_object(services.cancel_batch(batch=self.get_object())))
