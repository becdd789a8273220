"""The orjson renderer answers what DRF's JSONRenderer would (byte for byte on the types the API uses)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

from rest_framework.renderers import JSONRenderer

from tunery.core.renderers import OrjsonRenderer


def test_same_output_as_drfs_renderer():
    data = {
        "object": "list",
        "data": [{"id": "ft:x", "created_at": 1796600000, "score": 0.125, "label": "café ✓", "ok": True, "n": None}],
        "when": dt.datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=dt.UTC),
        "day": dt.date(2026, 12, 7),
        "amount": decimal.Decimal("1.50"),
        "uuid": uuid.UUID(int=7),
        3: "int key",
    }
    assert OrjsonRenderer().render(data) == JSONRenderer().render(data)


def test_api_answers_render_through_orjson(api, acme):
    answered = api.get("/v1/models", **acme.headers)
    assert answered.status_code == 200
    assert answered["Content-Type"] == "application/json"
    assert answered.json()["object"] == "list"
    assert isinstance(answered.renderer_context["response"].accepted_renderer, OrjsonRenderer)  # type: ignore[attr-defined]
