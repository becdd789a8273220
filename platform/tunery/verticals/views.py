from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tunery.core.errors import NotFound
from tunery.core.schema import ERRORS, list_of
from tunery.core.scoping import request_tenant
from tunery.verticals import registry

#: A pack as GET /v1/verticals shows it: its id, name, tasks and the tenant's config (more fields may follow).
VerticalObject = inline_serializer(
    name="Vertical",
    fields={
        "object": serializers.CharField(default="vertical"),
        "id": serializers.CharField(),
        "name": serializers.CharField(),
        "version": serializers.CharField(),
        "tasks": serializers.ListField(child=serializers.DictField()),
        "config": serializers.DictField(),
    },
)


class VerticalListView(APIView):
    @extend_schema(
        summary="List the vertical packs enabled for this tenant",
        operation_id="list_verticals",
        description="Each pack with its tasks, their data schema, metrics and default hyperparameters.",
        responses={200: list_of("VerticalList", VerticalObject), **ERRORS},
    )
    def get(self, request: Request) -> Response:
        data = [enabled.to_json() for enabled in registry.enabled_packs(request_tenant(request))]
        return Response({"object": "list", "data": data, "has_more": False})


class VerticalDetailView(APIView):
    @extend_schema(summary="Retrieve an enabled vertical pack", responses={200: VerticalObject, **ERRORS})
    def get(self, request: Request, vertical_id: str) -> Response:
        enabled = registry.enabled_pack(request_tenant(request), vertical_id)
        if enabled is None:
            raise NotFound(f"No vertical '{vertical_id}' is enabled for this tenant.", param="vertical_id")
        return Response(enabled.to_json())
