"""Native API-key management (OpenAI has no public word for it): admin and owner keys only."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from tunery.core.pagination import cursor_page
from tunery.core.parsers import BoundedJSONParser
from tunery.core.permissions import IsTenantAdmin
from tunery.core.schema import BODY_ERRORS, ERRORS, PAGE_PARAMETERS, list_of
from tunery.core.scoping import TenantScopedViewSet
from tunery.core.timestamps import unix_seconds
from tunery.tenants import services
from tunery.tenants.models import ApiKey, Membership


def api_key_object(key: ApiKey) -> dict[str, Any]:
    return {
        "id": str(key.id),
        "object": "api_key",
        "name": key.name,
        "prefix": key.prefix,
        "redacted_value": f"tny_{key.prefix}_…",
        "role": key.role,
        "created_at": unix_seconds(key.created_at),
        "expires_at": unix_seconds(key.expires_at),
        "revoked_at": unix_seconds(key.revoked_at),
        "last_used_at": unix_seconds(key.last_used_at),
    }


class ApiKeySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    object = serializers.CharField(default="api_key")
    name = serializers.CharField()
    prefix = serializers.CharField()
    redacted_value = serializers.CharField()
    role = serializers.ChoiceField(choices=Membership.Role.choices)
    created_at = serializers.IntegerField()
    expires_at = serializers.IntegerField(allow_null=True)
    revoked_at = serializers.IntegerField(allow_null=True)
    last_used_at = serializers.IntegerField(allow_null=True)


class CreatedApiKeySerializer(ApiKeySerializer):
    value = serializers.CharField(help_text="The full key. Shown only in this response.")


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True, max_length=100, default="")
    role = serializers.ChoiceField(choices=Membership.Role.choices, default=Membership.Role.MEMBER)
    expires_at = serializers.DateTimeField(
        required=False, allow_null=True, default=None, help_text="Must be in the future (a 400 otherwise)."
    )


@extend_schema_view(
    list=extend_schema(
        summary="List API keys (admin)",
        parameters=PAGE_PARAMETERS,
        responses={200: list_of("ApiKeyList", ApiKeySerializer), **ERRORS},
    ),
    create=extend_schema(
        summary="Create an API key (admin); the secret is in the response only",
        request=ApiKeyCreateSerializer,
        responses={200: CreatedApiKeySerializer, **BODY_ERRORS},
    ),
    retrieve=extend_schema(summary="Retrieve an API key (admin)", responses={200: ApiKeySerializer, **ERRORS}),
    destroy=extend_schema(summary="Revoke an API key (admin)", responses={200: ApiKeySerializer, **ERRORS}),
)
class ApiKeyViewSet(TenantScopedViewSet):
    scoped_model = ApiKey
    object_name = "API key"
    permission_classes = [IsTenantAdmin]
    serializer_class = ApiKeySerializer
    parser_classes = [BoundedJSONParser]

    def list(self, request: Request) -> Response:
        return Response(cursor_page(request, self.get_queryset(), api_key_object))

    def create(self, request: Request) -> Response:
        body = ApiKeyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        created = services.create_api_key_as(acting_key=request.user.api_key, **body.validated_data)
        return Response({**api_key_object(created.api_key), "value": created.secret})

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(api_key_object(self.get_object()))

    def destroy(self, request: Request, pk: str) -> Response:
        key = services.revoke_api_key_as(acting_key=request.user.api_key, key=self.get_object())
        return Response(api_key_object(key))
