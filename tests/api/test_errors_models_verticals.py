"""OpenAI-shaped errors outside the views' own checks; the model catalogue; the verticals list."""

from __future__ import annotations

import pytest

from tunery.catalog.models import BaseModel
from tunery.verticals import registry
from tunery.verticals.models import VerticalEnablement


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize("path", ["/v1/nothing-here", "/v1/fine_tuning/nope", "/v1", "/v1/files/x/y/z"])
def test_unknown_urls_under_v1_are_openai_404s(api, acme, path):
    error = error_of(api.get(path, **acme.headers), 404)
    assert error["code"] == "unknown_url"


def test_wrong_method_is_405(api, acme):
    error = error_of(api.put("/v1/files", {}, format="json", **acme.headers), 405)
    assert error["type"] == "invalid_request_error"


def test_unparseable_json_is_400(api, acme):
    response = api.generic(
        "POST", "/v1/fine_tuning/jobs", b"{not json", content_type="application/json", **acme.headers
    )
    assert error_of(response, 400)["type"] == "invalid_request_error"


def test_json_array_body_is_400(api, acme, base_model):
    response = api.post("/v1/fine_tuning/jobs", [1, 2], format="json", **acme.headers)
    assert error_of(response, 400)["code"] == "invalid_body"


def test_admin_pages_keep_html_404(client):
    response = client.get("/admin/no-such-page/")
    assert response.status_code in (302, 404)
    assert not response["Content-Type"].startswith("application/json")


def test_models_list_shadows_and_hides(api, acme, globex, base_model):
    BaseModel.objects.create(name="acme-only", tenant=acme.tenant, architecture="bert")
    BaseModel.objects.create(name="globex-only", tenant=globex.tenant, architecture="bert")
    BaseModel.objects.create(name="retired", architecture="bert", is_active=False)
    BaseModel.objects.create(name=base_model.name, tenant=acme.tenant, architecture="bert", description="tuned copy")
    data = api.get("/v1/models", **acme.headers).json()["data"]
    by_id = {m["id"]: m for m in data}
    assert set(by_id) == {base_model.name, "acme-only"}
    assert by_id[base_model.name]["owned_by"] == "acme"  # the tenant's own model shadows the global one
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in data)
    assert error_of(api.get("/v1/models/globex-only", **acme.headers), 404)["param"] == "model"


def test_base_models_cannot_be_deleted_through_the_api(api, acme, base_model):
    error = error_of(api.delete(f"/v1/models/{base_model.name}", **acme.headers), 403)
    assert error["code"] == "base_model_not_deletable"
    assert BaseModel.objects.filter(pk=base_model.pk, is_active=True).exists()


def test_packaged_base_model_is_described_from_its_files(base_model):
    assert base_model.architecture == "bert"
    assert 20_000_000 < base_model.parameters < 25_000_000  # all-MiniLM-L6-v2 has ~22.7M


def test_verticals_lists_enabled_packs_with_tasks_schema_and_config(api, acme):
    VerticalEnablement.objects.filter(tenant=acme.tenant, vertical="dummy").update(config={"greeting": "hi"})
    body = api.get("/v1/verticals", **acme.headers).json()
    assert [v["id"] for v in body["data"]] == ["dummy"]  # dummy_other is installed but not enabled
    pack = body["data"][0]
    assert pack["config"] == {"greeting": "hi"}
    sentiment = next(t for t in pack["tasks"] if t["id"] == "sentiment")
    assert [c["name"] for c in sentiment["schema"]["columns"]] == ["text", "label"]
    assert sentiment["default_hyperparameters"]["n_epochs"] == 2
    assert api.get("/v1/verticals/dummy", **acme.headers).json()["id"] == "dummy"
    assert error_of(api.get("/v1/verticals/dummy_other", **acme.headers), 404)


def test_disabled_and_uninstalled_packs_are_not_listed(api, acme, dummy_packs):
    VerticalEnablement.objects.filter(tenant=acme.tenant, vertical="dummy").update(enabled=False)
    VerticalEnablement.objects.create(tenant=acme.tenant, vertical="uninstalled_pack")
    assert api.get("/v1/verticals", **acme.headers).json()["data"] == []


def test_broken_pack_is_reported_and_skipped(dummy_packs):
    import dummy_pack

    from tunery_contract.discovery import registered

    broken = dummy_pack.make_pack("Not A Slug")
    with registered(broken, name="broken"):
        registry.reload()
        assert "broken" in registry.failures()
        assert registry.get_pack("dummy") is not None
    registry.reload()


def test_oversized_json_body_is_413(api, acme, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = {"model": "x" * 2000, "training_file": "file-x"}
    error = error_of(api.post("/v1/fine_tuning/jobs", body, format="json", **acme.headers), 413)
    assert error["code"] == "request_too_large"


def test_form_encoded_job_create_is_415(api, acme):
    response = api.post("/v1/fine_tuning/jobs", {"model": "m"}, **acme.headers)  # multipart by default
    assert error_of(response, 415)["type"] == "invalid_request_error"
