"""The rate limiter's two stores: Redis (sliding window, atomic Lua) and the database fallback."""

from __future__ import annotations

import threading
import uuid

import pytest

from tunery.serving.ratelimit import DatabaseRateLimiter, RedisRateLimiter


@pytest.mark.redis
def test_redis_limiter_admits_exactly_the_limit_from_many_threads():
    limiter = RedisRateLimiter("redis://127.0.0.1:6379/0", prefix=f"tunery-test:{uuid.uuid4().hex}")
    decisions = []
    barrier = threading.Barrier(50)

    def hit():
        barrier.wait()
        decisions.append(limiter.hit("tenant:1", limit=23))

    threads = [threading.Thread(target=hit) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(d.allowed for d in decisions) == 23
    refused = [d for d in decisions if not d.allowed]
    assert all(0 < d.retry_after <= 60 for d in refused)
    assert limiter.hit("tenant:2", limit=1).allowed  # tenants do not share a budget
    limiter.reset("tenant:1")
    assert limiter.hit("tenant:1", limit=23).allowed


def test_database_limiter_counts_a_fixed_window(db):
    limiter = DatabaseRateLimiter()
    results = [limiter.hit("tenant:9", limit=3) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert 0 < results[-1].retry_after <= 60
    assert limiter.hit("tenant:10", limit=3).allowed


def test_without_redis_the_api_falls_back_to_the_database(db, client, settings, make_tenant):
    from tunery.tenants.models import Tenant

    settings.REDIS_URL = ""
    acme = make_tenant("acme-db", verticals=())
    Tenant.objects.filter(pk=acme.tenant.pk).update(requests_per_minute=2)
    statuses = [client.get("/v1/deployments", **acme.headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert client.get("/v1/models", **acme.headers).status_code == 429  # one budget for the whole API
    refused = client.get("/v1/deployments", **acme.headers)
    assert int(refused["Retry-After"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"


def test_predictions_and_the_control_plane_have_separate_budgets(db, client, settings, make_tenant):
    from tunery.tenants.models import Tenant

    settings.REDIS_URL = ""
    acme = make_tenant("acme-split", verticals=())
    Tenant.objects.filter(pk=acme.tenant.pk).update(requests_per_minute=2, predictions_per_minute=3)
    assert [client.get("/v1/models", **acme.headers).status_code for _ in range(3)] == [200, 200, 429]

    # the control-plane budget is spent; serving has its own (an unknown model is a 404, still counted)
    body = {"model": "ft:unknown", "inputs": ["hello"]}
    statuses = [
        client.post("/v1/predictions", body, content_type="application/json", **acme.headers).status_code
        for _ in range(4)
    ]
    assert statuses == [404, 404, 404, 429]
    chat = {"model": "ft:unknown", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", chat, content_type="application/json", **acme.headers).status_code == 429
