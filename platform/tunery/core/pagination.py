"""OpenAI's cursor pagination: ``after`` (an object id), ``limit``, ``has_more``.

Pages are ordered by (created_at, id), newest first by default, so a cursor stays valid while new
rows arrive and ties on the timestamp cannot skip or repeat a row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from rest_framework.request import Request

from tunery.core.errors import InvalidRequest

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def parse_limit(request: Request, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError as exc:
        raise InvalidRequest(f"limit must be an integer, got {raw!r}.", param="limit", code="invalid_value") from exc
    if not 1 <= limit <= maximum:
        raise InvalidRequest(f"limit must be between 1 and {maximum}.", param="limit", code="invalid_value")
    return limit


def parse_order(request: Request, default: str = "desc") -> str:
    order = request.query_params.get("order", default)
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'.", param="order", code="invalid_value")
    return order


def cursor_page(
    request: Request,
    queryset: models.QuerySet,
    render: Callable[[Any], dict[str, Any]],
    *,
    order: str = "desc",
    default_limit: int = DEFAULT_LIMIT,
    max_limit: int = MAX_LIMIT,
) -> dict[str, Any]:
    """One page of ``queryset`` (already tenant-scoped) as OpenAI's list object."""
    limit = parse_limit(request, default_limit, max_limit)
    after = request.query_params.get("after")
    if after:
        try:
            anchor = queryset.filter(pk=after).values("created_at", "pk").first()
        except (ValueError, DjangoValidationError):
            anchor = None
        if anchor is None:
            raise InvalidRequest(f"No object with id '{after}' to page after.", param="after", code="invalid_cursor")
        at, pk = anchor["created_at"], anchor["pk"]
        if order == "desc":
            queryset = queryset.filter(models.Q(created_at__lt=at) | models.Q(created_at=at, pk__lt=pk))
        else:
            queryset = queryset.filter(models.Q(created_at__gt=at) | models.Q(created_at=at, pk__gt=pk))
    ordering = ("-created_at", "-pk") if order == "desc" else ("created_at", "pk")
    rows = list(queryset.order_by(*ordering)[: limit + 1])
    has_more = len(rows) > limit
    data = [render(row) for row in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
