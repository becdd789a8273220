"""A JSON parser that refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE before reading them
(DRF's own reads any declared length into memory), bodies nested deeper than any request of this
API needs (deep nesting ends in a RecursionError, a 500, in DRF or in the views), and strings
holding NUL characters (PostgreSQL cannot store or compare them)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.parsers import JSONParser

from tunery.core.errors import InvalidRequest, PayloadTooLarge

#: The deepest nesting a request body may have; the deepest legitimate one (a job's
#: method.supervised.hyperparameters.lora.target_modules, a batch of chat messages) is under 10.
MAX_JSON_DEPTH = 32


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if limit is not None and declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge("The request body is too large.", code="request_too_large")
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise _too_deep() from None
        check_json_value(data)
        return data


def check_json_value(value: Any) -> None:
    """Refuse NUL characters in keys and strings, and nesting deeper than MAX_JSON_DEPTH.
    Iterative, so that the check itself cannot run out of stack."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidRequest(
                    "The request body contains a NUL character (\\u0000), which no field may hold.",
                    code="invalid_characters",
                )
        elif isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.", code="invalid_json_depth"
    )
