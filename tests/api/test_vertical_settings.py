"""A tenant admin's own pack settings: GET/PATCH /v1/verticals/{pack}/settings, checked by the
pack's validator, audit-logged, admin and owner keys only, another tenant's settings untouched."""

from __future__ import annotations

import pytest

from tunery.tenants.models import AuditLog
from tunery.verticals import registry

PACK = "customer_service"
URL = f"/v1/verticals/{PACK}/settings"


@pytest.fixture
def shop(make_tenant, dummy_packs):
    return make_tenant("shop", role="admin", verticals=(PACK,))


def patch(api, tenant, settings, url=URL):
    return api.patch(url, {"settings": settings}, format="json", **tenant.headers)


def test_an_admin_reads_the_pack_defaults_and_changes_its_own_settings(api, shop):
    pack = registry.get_pack(PACK)
    shown = api.get(URL, **shop.headers).json()
    assert shown["object"] == "vertical.settings"
    assert shown["settings"] == shown["defaults"] == dict(pack.config_defaults)
    assert shown["overrides"] == {}
    templates = {"refund": "We have started your refund."}
    response = patch(api, shop, {"handoff_threshold": 0.7, "reply_templates": templates})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["overrides"] == {"handoff_threshold": 0.7, "reply_templates": templates}
    assert body["settings"]["handoff_threshold"] == 0.7
    assert body["settings"]["handoff_reply"] == pack.config_defaults["handoff_reply"]
    assert api.get(URL, **shop.headers).json() == body
    # what jobs, file checks and predictions read
    assert registry.pack_context(shop.tenant.pk, PACK, "intent").config["handoff_threshold"] == 0.7
    log = AuditLog.objects.get(action="vertical.settings.update")
    assert (log.tenant_id, log.target) == (shop.tenant.pk, PACK)
    assert log.actor == f"key:{shop.api_key.prefix}"
    assert log.details["changed"]["handoff_threshold"] == {"from": None, "to": 0.7}


def test_null_puts_a_setting_back_to_the_default(api, shop):
    patch(api, shop, {"handoff_threshold": 0.3})
    body = patch(api, shop, {"handoff_threshold": None}).json()
    assert body["overrides"] == {}
    assert body["settings"]["handoff_threshold"] == registry.get_pack(PACK).config_defaults["handoff_threshold"]


@pytest.mark.parametrize(
    ("settings", "param", "fragment"),
    [
        (
            {"handoff_threshold": 2},
            "settings.handoff_threshold",
            'handoff_threshold must be "auto" or a number from 0 to 1',
        ),
        ({"handoff_threshold": 0.6, "reply_templates": {"refund": ""}}, "settings.reply_templates", "reply_templates"),
        ({"colour": "blue"}, "settings.colour", "unknown setting 'colour'"),
        ({}, "settings", "non-empty object"),
        ([1], "settings", "non-empty object"),
    ],
)
def test_invalid_settings_are_refused_by_the_packs_validator_and_change_nothing(api, shop, settings, param, fragment):
    patch(api, shop, {"handoff_threshold": 0.4})
    response = patch(api, shop, settings)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert fragment in error["message"]
    assert error["param"] == param
    assert api.get(URL, **shop.headers).json()["overrides"] == {"handoff_threshold": 0.4}
    assert AuditLog.objects.filter(action="vertical.settings.update").count() == 1


def test_a_body_without_the_settings_object_is_a_400(api, shop):
    response = api.patch(URL, {"handoff_threshold": 0.7}, format="json", **shop.headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_body"


def test_member_keys_may_neither_read_nor_change_settings(api, shop, make_tenant):
    member = make_tenant("shop", role="member", verticals=(PACK,))
    assert api.get(URL, **member.headers).status_code == 403
    response = patch(api, member, {"handoff_threshold": 0.9})
    assert response.status_code == 403
    assert "admin or owner" in response.json()["error"]["message"]
    assert api.get(URL, **shop.headers).json()["overrides"] == {}
    owner = make_tenant("shop", role="owner", verticals=(PACK,))
    assert patch(api, owner, {"handoff_threshold": 0.9}).status_code == 200


def test_another_tenants_settings_are_never_touched_and_unenabled_packs_are_404(api, shop, make_tenant):
    other = make_tenant("other", role="admin", verticals=(PACK,))
    assert patch(api, shop, {"handoff_threshold": 0.8}).status_code == 200
    assert api.get(URL, **other.headers).json()["overrides"] == {}
    for url in ("/v1/verticals/medical/settings", "/v1/verticals/nope/settings"):
        assert api.get(url, **shop.headers).status_code == 404
        response = patch(api, shop, {"phi_policy": "redact"}, url=url)
        assert response.status_code == 404
        assert response.json()["error"]["param"] == "vertical_id"
