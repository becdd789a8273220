"""Hostile input that used to end in a 500 (or an HTML page) gets a 4xx in OpenAI's error shape.
The suite runs on SQLite and PostgreSQL; PostgreSQL is where NUL characters used to crash."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from tunery.tenants.models import ApiKey

LIST_URLS = ["/v1/files", "/v1/fine_tuning/jobs", "/v1/models", "/v1/deployments", "/v1/api_keys"]


def assert_openai_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize(
    "url",
    [
        "/v1/files/%00",
        "/v1/fine_tuning/jobs/ftjob-%00",
        "/v1/models/ft:%00",
        *[f"{url}?after=%00" for url in LIST_URLS],
        "/v1/files?purpose=%00",
        "/v1/fine_tuning/jobs?limit=1&%00=1",
    ],
)
def test_nul_in_url_is_400(api, acme, url):
    assert_openai_error(api.get(url, **acme.headers), 400, "invalid_characters")


def test_nul_in_admin_url_is_a_plain_400(client):
    assert client.get("/admin/tenants/tenant/%00/change/").status_code == 400


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/v1/fine_tuning/jobs", {"model": "all-minilm-l6-v2", "training_file": "file-\u0000"}),
        ("/v1/fine_tuning/jobs", {"model": "x", "training_file": "f", "metadata": {"k\u0000": "v"}}),
        ("/v1/deployments", {"model": "ft:\u0000"}),
        ("/v1/predictions", {"model": "ft:a", "input": ["hello\u0000"]}),
        ("/v1/chat/completions", {"model": "ft:a", "messages": [{"role": "user", "content": "\u0000"}]}),
        ("/v1/completions", {"model": "ft:a", "prompt": "\u0000"}),
        ("/v1/api_keys", {"name": "\u0000"}),
    ],
)
def test_nul_in_json_body_is_400(api, acme, url, body):
    response = api.post(url, body, format="json", **acme.headers)
    assert_openai_error(response, 400, "invalid_characters")


@pytest.mark.parametrize("url", ["/v1/fine_tuning/jobs", "/v1/predictions", "/v1/chat/completions"])
def test_deeply_nested_json_is_400(api, acme, url):
    deep = "[" * 1000 + "]" * 1000
    response = api.post(url, data=f'{{"model": "x", "input": {deep}}}', content_type="application/json", **acme.headers)
    assert_openai_error(response, 400, "invalid_json_depth")


def test_moderately_nested_json_still_parses(api, acme, training_file, create_job):
    response = create_job(acme, training_file, method={"type": "supervised", "supervised": {"hyperparameters": {}}})
    assert response.status_code == 200, response.content


@pytest.mark.parametrize("url", ["/v1/deployments", "/v1/files", "/v1/fine_tuning/jobs", "/v1/predictions"])
def test_options_describes_the_endpoint(api, acme, url):
    response = api.options(url, **acme.headers)
    assert response.status_code == 200, response.content
    assert "POST" in response.json()["allowed_methods"]


def test_post_to_an_unknown_api_url_is_a_404_error_object_not_a_csrf_page(acme):
    strict = APIClient(enforce_csrf_checks=True)
    response = strict.post("/v1/evaluations-unknown", {"model": "x"}, format="json", **acme.headers)
    assert_openai_error(response, 404, "unknown_url")


def test_an_admin_key_cannot_revoke_an_owner_key(api, make_tenant, dummy_packs):
    owner = make_tenant("acme", role="owner")
    admin = make_tenant("acme", role="admin")
    refused = api.delete(f"/v1/api_keys/{owner.api_key.pk}", **admin.headers)
    assert_openai_error(refused, 403, "role_too_high")
    owner.api_key.refresh_from_db()
    assert owner.api_key.revoked_at is None
    assert api.get("/v1/models", **owner.headers).status_code == 200

    # an owner revokes an admin key; an admin revokes a key of its own rank
    other_admin = make_tenant("acme", role="admin")
    assert api.delete(f"/v1/api_keys/{other_admin.api_key.pk}", **admin.headers).status_code == 200
    assert api.delete(f"/v1/api_keys/{admin.api_key.pk}", **owner.headers).status_code == 200
    assert ApiKey.objects.get(pk=admin.api_key.pk).revoked_at is not None


def test_registerbasemodel_refuses_a_directory_without_safetensors(db, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle would be here")
    with pytest.raises(CommandError, match=r"no safetensors weights.*pytorch_model\.bin"):
        call_command("registerbasemodel", "unsafe", "--path", str(tmp_path))
    from tunery.catalog.models import BaseModel

    assert not BaseModel.objects.filter(name="unsafe").exists()


def test_requests_keep_working_and_limited_when_the_rate_limit_redis_is_down(api, make_tenant, dummy_packs, settings):
    """Policy: the database counts while Redis is unreachable (no 500, the limit still holds)."""
    from tunery.monitoring.health import run_checks
    from tunery.monitoring.prometheus import RATE_LIMIT_FALLBACKS

    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens on the discard port: like a stopped Redis
    settings.TUNERY_RATE_LIMIT_PREFIX = "tunery-test:down"
    acme = make_tenant("acme", role="admin", requests_per_minute=3)
    before = RATE_LIMIT_FALLBACKS._value.get()
    statuses = [api.get("/v1/models", **acme.headers).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert RATE_LIMIT_FALLBACKS._value.get() - before == 5
    ready, checks = run_checks()
    assert not ready
    assert [name for name, check in checks.items() if not check["ok"]] == ["rate_limits"]
