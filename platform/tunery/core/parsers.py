"""A JSON parser that refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE before reading them
(DRF's own reads any declared length into memory)."""

from __future__ import annotations

from django.conf import settings
from rest_framework.parsers import JSONParser

from tunery.core.errors import PayloadTooLarge


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if limit is not None and declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge("The request body is too large.", code="request_too_large")
        return super().parse(stream, media_type, parser_context)
