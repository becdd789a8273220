"""The in-process API-key cache (tunery.core.auth.KeyCache): a cached key costs no query, and a
revoked key or a deactivated tenant stops working at once in the process that changed it and
within TUNERY_LOOKUP_CACHE_SECONDS everywhere else."""

from __future__ import annotations

import time

from django.db import connection
from django.test.utils import CaptureQueriesContext

from tunery.tenants.models import ApiKey, Tenant


def test_a_cached_key_asks_the_database_nothing(api, acme):
    assert api.get("/v1/models", **acme.headers).status_code == 200
    with CaptureQueriesContext(connection) as queries:
        assert api.get("/v1/verticals", **acme.headers).status_code == 200
    assert not [q["sql"] for q in queries.captured_queries if "tenants_apikey" in q["sql"]]


def test_revoking_through_the_api_stops_the_key_at_once(api, acme):
    made = api.post("/v1/api_keys", {"name": "ci", "role": "member"}, format="json", **acme.headers).json()
    other = {"HTTP_AUTHORIZATION": f"Bearer {made['value']}"}
    assert api.get("/v1/models", **other).status_code == 200  # cached now
    assert api.delete(f"/v1/api_keys/{made['id']}", **acme.headers).status_code == 200
    refused = api.get("/v1/models", **other)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["error"]["message"]


def test_a_change_made_by_another_process_applies_within_the_ttl(api, acme, settings):
    settings.TUNERY_LOOKUP_CACHE_SECONDS = 0.5
    assert api.get("/v1/models", **acme.headers).status_code == 200
    # another process revokes it: a bare UPDATE, which this process's cache does not hear about
    ApiKey.objects.filter(pk=acme.api_key.pk).update(revoked_at="2026-01-01T00:00:00Z")
    assert api.get("/v1/models", **acme.headers).status_code == 200  # the stated bound, not more
    time.sleep(0.6)
    assert api.get("/v1/models", **acme.headers).status_code == 401


def test_deactivating_a_tenant_in_the_admin_way_drops_its_cached_keys(api, acme):
    assert api.get("/v1/models", **acme.headers).status_code == 200
    tenant = Tenant.objects.get(pk=acme.tenant.pk)
    tenant.is_active = False
    tenant.save()  # what the admin does: post_save empties the cache
    refused = api.get("/v1/models", **acme.headers)
    assert refused.status_code == 401
    assert "deactivated" in refused.json()["error"]["message"]


def test_with_the_cache_off_every_request_reads_the_key(api, acme, settings):
    settings.TUNERY_LOOKUP_CACHE_SECONDS = 0
    assert api.get("/v1/models", **acme.headers).status_code == 200
    ApiKey.objects.filter(pk=acme.api_key.pk).update(revoked_at="2026-01-01T00:00:00Z")
    assert api.get("/v1/models", **acme.headers).status_code == 401
