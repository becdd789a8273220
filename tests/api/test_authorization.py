"""Authorization matrix over every endpoint: no/bad/revoked/expired key -> 401, another tenant's
ids -> 404 (never a 403 that leaks existence), member keys -> 403 on admin-only actions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tunery.catalog.models import FineTunedModel
from tunery.core.auth import forget_cached_keys
from tunery.files.models import File
from tunery.jobs.models import FineTuningJob, JobStatus
from tunery.tenants.models import ApiKey

# (method, path template, admin only)
ENDPOINTS = [
    ("get", "/v1/files", False),
    ("post", "/v1/files", False),
    ("get", "/v1/files/{file}", False),
    ("delete", "/v1/files/{file}", False),
    ("get", "/v1/files/{file}/content", False),
    ("get", "/v1/fine_tuning/jobs", False),
    ("post", "/v1/fine_tuning/jobs", False),
    ("get", "/v1/fine_tuning/jobs/{job}", False),
    ("post", "/v1/fine_tuning/jobs/{job}/cancel", False),
    ("post", "/v1/fine_tuning/jobs/{job}/pause", False),
    ("post", "/v1/fine_tuning/jobs/{job}/resume", False),
    ("get", "/v1/fine_tuning/jobs/{job}/events", False),
    ("get", "/v1/fine_tuning/jobs/{job}/checkpoints", False),
    ("get", "/v1/models", False),
    ("get", "/v1/models/{model}", False),
    ("delete", "/v1/models/{model}", True),
    ("get", "/v1/verticals", False),
    ("get", "/v1/verticals/dummy", False),
    ("get", "/v1/api_keys", True),
    ("post", "/v1/api_keys", True),
    ("get", "/v1/api_keys/{key}", True),
    ("delete", "/v1/api_keys/{key}", True),
]
WITH_IDS = [e for e in ENDPOINTS if "{" in e[1]]


@pytest.fixture
def objects_of(training_file, create_job, base_model):
    """Creates a file, a job, a fine-tuned model and a key for a tenant; returns their ids."""

    def make(owner) -> dict[str, str]:
        from tunery.tenants.services import create_api_key

        file_id = training_file if owner.tenant.slug == "acme" else None
        if file_id is None:
            import dummy_pack
            from django.core.files.uploadedfile import SimpleUploadedFile

            from tunery.files.services import upload_file

            file_id = upload_file(
                tenant=owner.tenant,
                uploaded=SimpleUploadedFile("t.jsonl", dummy_pack.sample_jsonl()),
                purpose="fine-tune",
            ).id
        response = create_job(owner, file_id)
        assert response.status_code == 200, response.content
        job = FineTuningJob.objects.get(pk=response.json()["id"])
        model = FineTunedModel.objects.create(
            id=f"ft:{base_model.name}:{owner.tenant.slug}::{job.id}",
            tenant=owner.tenant,
            job=job,
            base_model=base_model,
            artifact_path="/a",
            vertical="dummy",
            task="sentiment",
        )
        key = create_api_key(tenant=owner.tenant, name="victim").api_key
        return {"file": file_id, "job": job.id, "model": model.id, "key": str(key.id)}

    return make


def call(api, method: str, path: str, headers: dict[str, str]):
    if method == "post" and path == "/v1/files":
        return api.post(path, {"purpose": "fine-tune"}, format="multipart", **headers)
    return getattr(api, method)(path, {} if method == "post" else None, format="json", **headers)


def assert_openai_error(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.content)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


@pytest.mark.parametrize(("method", "template", "admin_only"), ENDPOINTS)
@pytest.mark.parametrize("credential", ["none", "garbage", "unknown", "revoked", "expired", "inactive_tenant"])
def test_requests_without_a_valid_key_are_401(api, acme, objects_of, method, template, admin_only, credential):
    ids = objects_of(acme)
    key = acme.key
    if credential == "revoked":
        ApiKey.objects.filter(pk=acme.api_key.pk).update(revoked_at=timezone.now())
    elif credential == "expired":
        ApiKey.objects.filter(pk=acme.api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    elif credential == "inactive_tenant":
        type(acme.tenant).objects.filter(pk=acme.tenant.pk).update(is_active=False)
    elif credential == "garbage":
        key = "not-a-key"
    elif credential == "unknown":
        key = key[:-4] + "AAAA"
    headers = {} if credential == "none" else {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    error = assert_openai_error(call(api, method, template.format(**ids), headers), 401)
    assert error["type"] == "authentication_error"


@pytest.mark.parametrize(("method", "template", "admin_only"), WITH_IDS)
def test_another_tenants_objects_are_404(api, acme, globex, objects_of, method, template, admin_only):
    theirs = objects_of(globex)
    objects_of(acme)
    response = call(api, method, template.format(**theirs), acme.headers)
    error = assert_openai_error(response, 404)
    assert error["type"] == "not_found_error"
    # and nothing of theirs changed
    assert File.objects.get(pk=theirs["file"]).deleted_at is None
    job = FineTuningJob.objects.get(pk=theirs["job"])
    assert (job.status, job.requested_action) == (JobStatus.VALIDATING_FILES, "")
    assert FineTunedModel.objects.get(pk=theirs["model"]).deleted_at is None
    assert ApiKey.objects.get(pk=theirs["key"]).revoked_at is None


@pytest.mark.parametrize(("method", "template", "admin_only"), [e for e in ENDPOINTS if e[2]])
def test_member_keys_cannot_do_admin_actions(api, acme, make_tenant, objects_of, method, template, admin_only):
    ids = objects_of(acme)
    member = make_tenant("acme", role="member")
    error = assert_openai_error(call(api, method, template.format(**ids), member.headers), 403)
    assert error["type"] == "permission_error"
    assert FineTunedModel.objects.get(pk=ids["model"]).deleted_at is None
    assert ApiKey.objects.get(pk=ids["key"]).revoked_at is None


@pytest.mark.parametrize(("method", "template", "admin_only"), [e for e in ENDPOINTS if not e[2] and e[0] == "get"])
def test_member_keys_can_read(api, acme, make_tenant, objects_of, method, template, admin_only):
    ids = objects_of(acme)
    member = make_tenant("acme", role="member")
    response = call(api, method, template.format(**ids), member.headers)
    assert response.status_code == 200, response.content


def test_cross_tenant_file_cannot_be_used_for_a_job(api, acme, globex, objects_of, create_job):
    theirs = objects_of(globex)
    before = FineTuningJob.objects.count()
    error = assert_openai_error(create_job(acme, theirs["file"]), 400)
    assert (error["param"], error["code"]) == ("training_file", "file_not_found")
    assert FineTuningJob.objects.count() == before


def test_lists_show_only_own_objects(api, acme, globex, objects_of):
    mine, theirs = objects_of(acme), objects_of(globex)
    for path, key in (("/v1/files", "file"), ("/v1/fine_tuning/jobs", "job"), ("/v1/models", "model")):
        ids = {o["id"] for o in api.get(path, **acme.headers).json()["data"]}
        assert mine[key] in ids
        assert theirs[key] not in ids
    keys = {o["id"] for o in api.get("/v1/api_keys", **acme.headers).json()["data"]}
    assert mine["key"] in keys
    assert theirs["key"] not in keys


def test_last_used_is_recorded_at_most_once_a_minute(api, acme):
    assert api.get("/v1/models", **acme.headers).status_code == 200
    first = ApiKey.objects.get(pk=acme.api_key.pk).last_used_at
    assert first is not None
    assert api.get("/v1/models", **acme.headers).status_code == 200
    assert ApiKey.objects.get(pk=acme.api_key.pk).last_used_at == first
    ApiKey.objects.filter(pk=acme.api_key.pk).update(last_used_at=first - timedelta(minutes=2))
    forget_cached_keys()  # as the key cache's TTL would: the process reads the row again
    assert api.get("/v1/models", **acme.headers).status_code == 200
    assert ApiKey.objects.get(pk=acme.api_key.pk).last_used_at > first - timedelta(minutes=2)


def test_api_key_management(api, acme, make_tenant):
    created = api.post("/v1/api_keys", {"name": "ci", "role": "member"}, format="json", **acme.headers)
    assert created.status_code == 200, created.content
    body = created.json()
    secret = body["value"]
    assert secret.startswith(f"tny_{body['prefix']}_")
    assert api.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    listed = api.get("/v1/api_keys", **acme.headers).json()["data"]
    assert all("value" not in k for k in listed)  # the secret is shown once only
    assert not ApiKey.objects.filter(hashed_key__contains=secret.split("_")[-1]).exists()

    revoked = api.delete(f"/v1/api_keys/{body['id']}", **acme.headers)
    assert revoked.json()["revoked_at"] is not None
    assert api.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 401

    owner_key = api.post("/v1/api_keys", {"role": "owner"}, format="json", **acme.headers)
    assert_openai_error(owner_key, 403)


def test_scoped_queries_fail_closed_without_a_tenant(db):
    from tunery.core.scoping import TenantRequired, scope_to_tenant
    from tunery.jobs import selectors

    with pytest.raises(TenantRequired):
        scope_to_tenant(File.objects.all(), None)
    with pytest.raises(TenantRequired):
        selectors.fine_tuned_models(None)
    with pytest.raises(TenantRequired):
        selectors.visible_base_models(None)
