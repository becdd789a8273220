"""Shared OpenAPI pieces for drf-spectacular annotations."""

from __future__ import annotations

import copy
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema_serializer, inline_serializer
from rest_framework import serializers

from tunery.core.pagination import DEFAULT_LIMIT, MAX_LIMIT

ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": inline_serializer(
            name="ErrorDetail",
            fields={
                "message": serializers.CharField(),
                "type": serializers.CharField(),
                "param": serializers.CharField(allow_null=True),
                "code": serializers.CharField(allow_null=True),
            },
        )
    },
)


#: Answers every authenticated operation can give: a bad query or body, no or a bad key, a key
#: without the role, an unknown id, a state conflict, the tenant's rate limit.
def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """OpenAI's error object documented for each of ``statuses``."""
    return {status: OpenApiResponse(ErrorSerializer) for status in statuses}


ERRORS = error_responses(400, 401, 403, 404, 409, 429)
#: Operations that read a request body also refuse one that is too large or of another media type.
BODY_ERRORS = {**ERRORS, **error_responses(413, 415)}


def page_parameters(*, max_limit: int = MAX_LIMIT, default_limit: int = DEFAULT_LIMIT, order: bool = False):
    """The query parameters of ``cursor_page`` with the ranges it enforces."""
    parameters = [
        OpenApiParameter("after", str, description="Id of the last object of the previous page."),
        OpenApiParameter(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": max_limit, "default": default_limit},
            description=f"Objects per page (1-{max_limit}, default {default_limit}).",
        ),
    ]
    if order:
        parameters.append(
            OpenApiParameter("order", str, enum=["asc", "desc"], default="desc", description="By creation time.")
        )
    return parameters


PAGE_PARAMETERS = page_parameters()

_lists: dict[str, type[serializers.Serializer]] = {}


def list_of(name: str, item: serializers.Serializer | type[serializers.Serializer]) -> type[serializers.Serializer]:
    """The list object ``cursor_page`` returns, with ``item`` as its rows (one component per name).

    ``many=False``: drf-spectacular would otherwise wrap a list action's response in an array."""
    if name not in _lists:
        item_class = item if isinstance(item, type) else type(item)
        fields = {
            "object": serializers.ChoiceField(choices=["list"]),
            "data": item_class(many=True),
            "first_id": serializers.CharField(allow_null=True, required=False),
            "last_id": serializers.CharField(allow_null=True, required=False),
            "has_more": serializers.BooleanField(),
        }
        _lists[name] = extend_schema_serializer(many=False)(type(name, (serializers.Serializer,), fields))
    return _lists[name]


#: A string that is not empty or blank, as the server's checks want it (``value.strip()``).
NOT_BLANK = {"type": "string", "pattern": r"\S"}


class RawSchemaBody(serializers.Serializer):
    """A request body whose JSON Schema is written by hand, for what serializers cannot say
    (one of two shapes, a string or a list). Subclass it with ``openapi_schema``; the subclass's
    name is the component's. The view still parses and checks the body itself."""

    openapi_schema: dict[str, Any] = {}


class RawSchemaBodyExtension(OpenApiSerializerExtension):
    target_class = RawSchemaBody
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        # A copy: drf-spectacular's enum post-processing rewrites the schema it is given in place.
        return copy.deepcopy(self.target.openapi_schema)


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents ``Authorization: Bearer tny_...`` (registered by being imported in CoreConfig.ready)."""

    target_class = "tunery.core.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "tny_<prefix>_<secret>"}
