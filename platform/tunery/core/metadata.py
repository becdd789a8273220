"""What OPTIONS answers on the API."""

from __future__ import annotations

from typing import Any

from rest_framework.metadata import BaseMetadata
from rest_framework.request import Request


class EndpointMetadata(BaseMetadata):
    """Name, description, allowed methods and media types.

    DRF's SimpleMetadata instantiates the view's serializer to describe POST and PUT bodies, which
    fails (a 500) on views that parse their bodies themselves; request bodies are documented in the
    OpenAPI schema (/api/schema/) instead."""

    def determine_metadata(self, request: Request, view: Any) -> dict[str, Any]:
        return {
            "name": view.get_view_name(),
            "description": view.get_view_description(),
            "allowed_methods": sorted(view.allowed_methods),
            "renders": [renderer.media_type for renderer in view.renderer_classes],
            "parses": [parser.media_type for parser in view.parser_classes],
        }
