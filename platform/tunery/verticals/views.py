from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tunery.core.errors import InvalidRequest, NotFound
from tunery.core.parsers import BoundedJSONParser
from tunery.core.permissions import IsTenantAdmin
from tunery.core.schema import BODY_ERRORS, ERRORS, list_of
from tunery.core.scoping import request_tenant
from tunery.verticals import registry, selectors, services

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


SettingsObject = inline_serializer(
    name="VerticalSettings",
    fields={
        "object": serializers.CharField(default="vertical.settings"),
        "vertical": serializers.CharField(),
        "version": serializers.CharField(),
        "settings": serializers.DictField(help_text="In effect: the pack's defaults overlaid with yours."),
        "defaults": serializers.DictField(help_text="The pack's defaults."),
        "overrides": serializers.DictField(help_text="What your organisation changed."),
        "updated_at": serializers.IntegerField(),
    },
)
SettingsPatch = inline_serializer(
    name="VerticalSettingsPatch",
    fields={
        "settings": serializers.DictField(
            help_text="Setting -> new value; null puts a setting back to the pack's default. "
            "Checked by the pack's own validator; nothing changes unless every value is valid."
        )
    },
)


class VerticalSettingsView(APIView):
    """A tenant's own configuration of an enabled pack. Admin and owner keys only: the settings
    steer every answer the tenant's models give (hand-off, replies, PHI handling)."""

    permission_classes = [IsTenantAdmin]
    parser_classes = [BoundedJSONParser]

    @extend_schema(
        summary="Read your settings of an enabled vertical pack (admin)",
        operation_id="retrieve_vertical_settings",
        responses={200: SettingsObject, **ERRORS},
    )
    def get(self, request: Request, vertical_id: str) -> Response:
        return Response(self._settings(request, vertical_id))

    @extend_schema(
        summary="Change your settings of an enabled vertical pack (admin; audit-logged)",
        operation_id="update_vertical_settings",
        request=SettingsPatch,
        responses={200: SettingsObject, **BODY_ERRORS},
    )
    def patch(self, request: Request, vertical_id: str) -> Response:
        body = request.data
        if not isinstance(body, dict) or set(body) != {"settings"}:
            raise InvalidRequest(
                'The body must be {"settings": {<setting>: <value or null>, ...}}.',
                param="settings",
                code="invalid_body",
            )
        tenant = request_tenant(request)
        services.update_settings(tenant=tenant, pack_id=vertical_id, changes=body["settings"], actor=request.user.actor)
        return Response(self._settings(request, vertical_id))

    def _settings(self, request: Request, vertical_id: str) -> dict:
        found = selectors.pack_settings(request_tenant(request), vertical_id)
        if found is None:
            raise NotFound(f"No vertical '{vertical_id}' is enabled for this tenant.", param="vertical_id")
        return found
