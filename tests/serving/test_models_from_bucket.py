"""Models in object storage, through the real HTTP API: a web process fetches a model from a real
S3-protocol server (moto_server on loopback) into its local cache on first use and serves the same
answers as from the local folder; deleting the model or its tenant deletes its objects and only
those; a model whose objects are missing deploys as failed with the reason."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest
import torch

from tests.serving import pack
from tests.storage.conftest import bucket, s3_server  # noqa: F401  (fixtures)
from tests.storage.s3_server import free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def models_in_bucket(s3_server, bucket, settings, tmp_path, monkeypatch):  # noqa: F811
    from tunery.core import artifacts

    for name, value in s3_server.env(bucket, retry_seconds=2).items():
        monkeypatch.setenv(name, value)
    settings.TUNERY_ARTIFACT_CACHE_DIR = tmp_path / "model-cache"
    artifacts.reset()
    yield artifacts.object_store()
    artifacts.reset()


@pytest.fixture
def acme(live_server, serving_pack, make_tenant):
    tenant = make_tenant("acme", verticals=(pack.PACK_ID,), max_deployments=10)
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {tenant.key}"}, timeout=60) as c:
        yield tenant, c


def in_bucket(store, model, local_dir) -> str:
    """Upload the model's artifact as a worker would and point the model row at its key."""
    from tunery.core import artifacts

    key = artifacts.final_artifact_key(model.tenant.slug, model.job_id)
    store.put_tree(local_dir, key)
    type(model).objects.filter(pk=model.pk).update(artifact_path=key)
    model.refresh_from_db()
    return key


def test_a_model_in_the_bucket_is_served_from_the_cache_and_deleted_with_its_objects(
    models_in_bucket, acme, make_tenant, make_model, artifacts, settings, monkeypatch
):
    store = models_in_bucket
    tenant, client = acme
    stored = make_model(tenant.tenant, artifacts["intents"], "intents")
    key = in_bucket(store, stored, artifacts["intents"])
    local = make_model(tenant.tenant, artifacts["intents"], "intents")  # the same weights from the folder
    beta = make_tenant("beta", verticals=(pack.PACK_ID,))
    beta_key = in_bucket(store, make_model(beta.tenant, artifacts["intents"], "intents"), artifacts["intents"])

    for model in (stored, local):
        deployed = client.post("/v1/deployments", json={"model": model.id})
        assert deployed.status_code == 201, deployed.text
        assert deployed.json()["status"] == "ready", deployed.text
    cached = list((settings.TUNERY_ARTIFACT_CACHE_DIR / "entries").iterdir())
    assert len(cached) == 1
    assert (cached[0] / "tunery_artifact.json").is_file()

    texts = ["I was charged twice", "where is my parcel?"]
    answers = [
        client.post("/v1/predictions", json={"model": m.id, "inputs": texts}).json()["data"] for m in (stored, local)
    ]
    assert [a["label"] for a in answers[0]] == [a["label"] for a in answers[1]]
    for ours, theirs in zip(answers[0], answers[1], strict=True):
        assert ours["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-6)

    # storage down and the local copy gone: the loaded model still answers from memory
    from tunery.core import artifacts as model_storage

    shutil.rmtree(cached[0])
    monkeypatch.setenv("TUNERY_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    model_storage.reset()
    again = client.post("/v1/predictions", json={"model": stored.id, "inputs": texts})
    assert again.status_code == 200, again.text
    monkeypatch.setenv("TUNERY_S3_ENDPOINT_URL", store.settings.endpoint_url)
    model_storage.reset()
    assert model_storage.local_artifact_dir(key) == cached[0]  # fetched again

    # another tenant cannot reach it, and cannot delete it
    with httpx.Client(base_url=client.base_url, headers={"Authorization": f"Bearer {beta.key}"}) as other:
        assert other.delete(f"/v1/models/{stored.id}").status_code == 404
    assert store.read_manifest(key) is not None

    deleted = client.delete(f"/v1/models/{stored.id}")
    assert deleted.status_code == 200, deleted.text
    assert store.read_manifest(key) is None
    assert store.children(key.rsplit("/", 1)[0]) == []
    assert not cached[0].exists()
    assert store.read_manifest(beta_key) is not None  # the other tenant's objects stay


def test_a_model_whose_objects_are_missing_deploys_as_failed_with_the_reason(
    models_in_bucket, acme, make_model, artifacts
):
    tenant, client = acme
    model = make_model(tenant.tenant, artifacts["intents"], "intents")
    type(model).objects.filter(pk=model.pk).update(artifact_path=f"acme/{model.job_id}/final")  # never uploaded
    response = client.post("/v1/deployments", json={"model": model.id})
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "failed"
    assert "artifact_missing" in response.json()["error"]
    assert client.post("/v1/predictions", json={"model": model.id, "inputs": ["hi"]}).status_code == 409


def test_deleting_a_tenant_deletes_its_objects_only(models_in_bucket, make_tenant, tmp_path):
    from tunery.tenants.models import Tenant

    store = models_in_bucket
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "weights.safetensors").write_bytes(b"w")
    for key in ("gone/ftjob-1/final", "gone/ftjob-1/checkpoints/step-00000004", "gone2/ftjob-2/final"):
        store.put_tree(tree, key)
    make_tenant("gone")
    make_tenant("gone2")

    Tenant.objects.get(slug="gone").delete()

    assert store.children("gone") == []
    assert store.complete_children("gone2/ftjob-2") == ["final"]


def test_readiness_reports_whether_the_models_bucket_answers(models_in_bucket, client, monkeypatch):
    from tunery.core import artifacts

    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.content
    assert ready.json()["checks"]["model_storage"]["ok"] is True

    monkeypatch.setenv("TUNERY_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    artifacts.reset()
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["checks"]["model_storage"] == {"ok": False, "detail": "storage_unreachable"}


def test_a_lora_checkpoint_kept_only_in_the_bucket_is_evaluated(
    models_in_bucket, acme, make_model, artifacts, tmp_path
):
    """The worker's folder is gone (object storage holds the job): the checkpoint is fetched from
    ``<tenant>/<job>/checkpoints/<name>`` and its adapter and head answer, not the final artifact's."""
    import json
    from pathlib import Path

    from tests.serving import builders
    from tunery.evaluations import services
    from tunery.files import services as file_services
    from tunery.jobs.models import JobCheckpoint
    from tunery_engine import checkpoint as ckpt
    from tunery_engine.artifact import load_artifact

    store = models_in_bucket
    tenant = acme[0].tenant
    final = make_model(tenant, artifacts["lora"], "intents")
    in_bucket(store, final, artifacts["lora"])
    base = Path(json.loads((artifacts["lora"] / "tunery_artifact.json").read_text())["base_model"])
    other_dir = builders.lora_artifact(
        tmp_path / "other", base, pack.INTENTS, seed=8, vertical=pack.PACK_ID, task="intents"
    )
    other = make_model(tenant, other_dir, "intents")

    trained, _, _ = load_artifact(other_dir)  # the other adapter and head, as a run's trainable tensors
    for name, param in trained.named_parameters():
        param.requires_grad_("lora_" in name or "modules_to_save" in name)
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    state = ckpt.RunState(label_names=list(pack.INTENTS), fingerprint={}, step=5)
    local = ckpt.save_checkpoint(tmp_path / "worker" / "checkpoints", state, trained, optimizer, scheduler, None)
    store.put_tree(local, f"{tenant.slug}/{final.job_id}/checkpoints/{local.name}")
    shutil.rmtree(local)
    JobCheckpoint.objects.create(job=final.job, step_number=5, path=str(local))

    texts = ["I was charged twice", "where is my parcel?", "refund please", "wrong amount", "lost order"]
    source = tmp_path / "test.jsonl"
    source.write_text(
        "".join(json.dumps({"message": t, "intent": pack.INTENTS[i % 3]}) + "\n" for i, t in enumerate(texts))
    )
    file = file_services.save_generated_file(tenant=tenant, filename="test.jsonl", purpose="fine-tune", source=source)

    scored = {
        name: services.evaluate_now(tenant=tenant, model_id=name, file_id=file.id, actor="test")
        for name in (f"{final.id}:ckpt-step-5", other.id, final.id)
    }
    assert {e.status for e in scored.values()} == {"succeeded"}, [e.error for e in scored.values()]
    of_checkpoint, of_other, of_final = scored.values()
    assert of_checkpoint.checkpoint_step == 5
    scores = [np.array(e.outputs["scores"]) for e in (of_checkpoint, of_other, of_final)]
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-5)
    assert np.abs(scores[0] - scores[2]).max() > 1e-4
