"""GET /v1/models/{id}/content: a fine-tuned model in Hugging Face layout, loaded back outside
Tunery (a subprocess with transformers and peft only) and compared with Tunery's own serving."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
import yaml

from tests.serving import builders, pack

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

LOADER = Path(__file__).with_name("plain_hf_loader.py")
TEXTS = ["I was charged twice", "where is my parcel?", "refund please, the box arrived broken and late"]


@pytest.fixture(scope="module")
def mean_pooled(tmp_path_factory) -> dict[str, Path]:
    """Artifacts that read the mean of the token states, as MiniLM fine-tunes do."""
    root = tmp_path_factory.mktemp("export-artifacts")
    base = builders.base_model(root / "base", seed=1)
    return {
        "base": base,
        "full": builders.mean_pooled_artifact(
            root / "full", pack.INTENTS, seed=3, vertical=pack.PACK_ID, task="intents"
        ),
        "lora": builders.lora_artifact(
            root / "lora", base, pack.INTENTS, seed=5, vertical=pack.PACK_ID, task="intents", pooling="mean"
        ),
    }


@pytest.fixture
def setup(live_server, serving_pack, make_tenant, make_model, redis_rate_limits, mean_pooled, artifacts):
    acme = make_tenant("acme", verticals=(pack.PACK_ID,), max_deployments=10)
    models = {name: make_model(acme.tenant, mean_pooled[name], "intents") for name in ("full", "lora")}
    models["cls"] = make_model(acme.tenant, artifacts["intents"], "intents")
    client = httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {acme.key}"}, timeout=120)
    yield {"acme": acme, "models": models, "client": client, "url": live_server.url}
    client.close()


def download(client: httpx.Client, model_id: str, target: Path, **params: str) -> Path:
    """Stream the archive to disk and unpack it; returns the model folder."""
    archive = target.with_suffix(".tar.gz")
    with client.stream("GET", f"/v1/models/{model_id}/content", params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "application/gzip"
        assert "content-length" not in response.headers  # streamed, not built first
        assert response.headers["content-disposition"].endswith('.tar.gz"')
        with archive.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
        assert all(not Path(n).is_absolute() and ".." not in Path(n).parts for n in names)
        tar.extractall(target, filter="data")
    (folder,) = target.iterdir()
    return folder


def served_probabilities(client: httpx.Client, model_id: str) -> list[dict[str, float]]:
    # fp32: the export is compared at 1e-5, and a host with bf16 units serves bf16 by default
    deployed = client.post("/v1/deployments", json={"model": model_id, "precision": "fp32"})
    assert deployed.status_code in (200, 201)
    response = client.post("/v1/predictions", json={"model": model_id, "inputs": TEXTS})
    assert response.status_code == 200, response.text
    return [row["probabilities"] for row in response.json()["data"]]


def plain_probabilities(base: Path, *folders: Path) -> list[list[dict[str, float]]]:
    """One subprocess (starting torch takes seconds) loads every folder as its card says."""
    done = subprocess.run(
        [sys.executable, str(LOADER), str(base), json.dumps(TEXTS), *map(str, folders)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_same(served: list[dict[str, float]], plain: list[dict[str, float]]) -> None:
    assert len(served) == len(plain) == len(TEXTS)
    for a, b in zip(served, plain):
        assert set(a) == set(b) == set(pack.INTENTS)
        for label in a:
            assert a[label] == pytest.approx(b[label], abs=1e-5)


def card_header(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_export_layout_labels_and_model_card(setup, mean_pooled, tmp_path):
    client, model = setup["client"], setup["models"]["full"]
    folder = download(client, model.id, tmp_path / "full")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tunery.json", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    assert not list(folder.rglob("*.bin"))
    assert not list(folder.rglob("*.pt"))
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(pack.INTENTS)}
    assert config["label2id"] == {name: i for i, name in enumerate(pack.INTENTS)}
    assert config["tunery_pooling"] == "mean"
    manifest = json.loads((folder / "tunery.json").read_text())
    assert manifest["exported_as"] == "full"
    assert manifest["pooling"] == "mean"
    assert str(mean_pooled["base"]) not in json.dumps(manifest)  # no server paths leave the box

    header = card_header(folder)
    assert header["library_name"] == "transformers"
    assert header["pipeline_tag"] == "text-classification"
    assert header["base_model"] == "tiny-bert"  # the catalogue's name (no hub id known for it)
    assert {"tunery", pack.PACK_ID, "intents"} <= set(header["tags"])
    assert header["datasets"] == [model.job.training_file_id]
    assert "mean of the token states" in (folder / "README.md").read_text()


@pytest.mark.slow  # a subprocess that starts torch and transformers
def test_full_mean_pooled_model_loads_in_plain_transformers_and_predicts_as_served(setup, mean_pooled, tmp_path):
    client, model = setup["client"], setup["models"]["full"]
    folder = download(client, model.id, tmp_path / "full")
    (plain,) = plain_probabilities(mean_pooled["base"], folder)
    assert_same(served_probabilities(client, model.id), plain)


@pytest.mark.slow
def test_lora_adapter_and_merged_export_predict_as_served(setup, mean_pooled, tmp_path):
    client, model = setup["client"], setup["models"]["lora"]
    served = served_probabilities(client, model.id)

    adapter = download(client, model.id, tmp_path / "adapter")
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "README.md"} <= names
    assert "model.safetensors" not in names
    assert card_header(adapter)["library_name"] == "peft"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-bert"

    merged = download(client, model.id, tmp_path / "merged", merged="true")
    names = {p.name for p in merged.iterdir()}
    assert "model.safetensors" in names
    assert "adapter_config.json" not in names
    assert json.loads((merged / "tunery.json").read_text())["exported_as"] == "merged"
    assert "lora-merged" in card_header(merged)["tags"]
    from_adapter, from_merged = plain_probabilities(mean_pooled["base"], adapter, merged)
    assert_same(served, from_adapter)
    assert_same(served, from_merged)


@pytest.mark.slow
def test_a_cls_model_loads_with_the_stock_auto_class(setup, mean_pooled, tmp_path):
    client, model = setup["client"], setup["models"]["cls"]
    folder = download(client, model.id, tmp_path / "cls")
    assert "tunery_pooling" not in json.loads((folder / "config.json").read_text())
    assert "mean of the token states" not in (folder / "README.md").read_text()
    (plain,) = plain_probabilities(mean_pooled["base"], folder)
    assert_same(served_probabilities(client, model.id), plain)


def test_bad_downloads_are_clear_errors(setup, make_tenant, tmp_path):
    from tunery.catalog.models import FineTunedModel
    from tunery.jobs.models import FineTuningJob, JobStatus

    client, models = setup["client"], setup["models"]

    def error(response: httpx.Response, status: int) -> dict:
        assert response.status_code == status, response.text
        return response.json()["error"]

    intruder = make_tenant("globex", verticals=(pack.PACK_ID,))
    other = httpx.Client(base_url=setup["url"], headers={"Authorization": f"Bearer {intruder.key}"})
    assert error(other.get(f"/v1/models/{models['full'].id}/content"), 404)["code"] == "not_found"
    assert error(client.get("/v1/models/ft:nope:acme::ftjob-nope/content"), 404)["param"] == "model"
    assert error(client.get(f"/v1/models/{models['full'].id}/content?merged=true"), 400)["code"] == "not_a_lora_model"
    assert error(client.get(f"/v1/models/{models['lora'].id}/content?merged=maybe"), 400)["param"] == "merged"
    assert error(client.get("/v1/models/tiny-bert/content"), 400)["code"] == "not_a_fine_tuned_model"
    assert error(httpx.get(f"{setup['url']}/v1/models/{models['full'].id}/content"), 401)

    # a job that has not succeeded yet: its model id is a 409 that says so
    job = FineTuningJob.objects.get(pk=models["full"].job_id)
    running = FineTuningJob.objects.create(
        tenant=job.tenant, base_model=job.base_model, training_file=job.training_file, status=JobStatus.RUNNING
    )
    pending_id = f"ft:tiny-bert:acme::{running.id}"
    body = error(client.get(f"/v1/models/{pending_id}/content"), 409)
    assert body["code"] == "model_not_ready"
    assert "running" in body["message"]
    assert error(other.get(f"/v1/models/{pending_id}/content"), 404)

    # a deleted model is gone
    FineTunedModel.objects.filter(pk=models["cls"].pk).update(deleted_at=running.created_at)
    assert error(client.get(f"/v1/models/{models['cls'].id}/content"), 404)
    other.close()


def test_the_staging_folder_is_removed_whether_or_not_the_download_is_read(setup, tmp_path, monkeypatch):
    import tempfile

    from tunery.catalog import export

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = setup["models"]["lora"]
    unread = export.download(model, merged=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("tunery-export-")]
    unread.chunks.close()  # what Django does when a client leaves before the body
    read = export.download(model)
    archive = b"".join(read.chunks)
    read.chunks.close()
    assert archive[:2] == b"\x1f\x8b"  # gzip
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tunery-export-")]


@pytest.mark.parametrize(
    ("name", "auto_class", "pipeline_tag"),
    [
        ("entities", "AutoModelForTokenClassification", "token-classification"),
        ("ranking", "AutoModelForSequenceClassification", "text-classification"),
        ("assistant", "AutoModelForCausalLM", "text-generation"),
    ],
)
def test_other_task_kinds_export_for_their_stock_auto_class(artifacts, tmp_path, name, auto_class, pipeline_tag):
    """Token classification, pair regression and causal LMs: the stock auto class loads the export
    and computes the same logits as the artifact Tunery serves."""
    import tarfile as tar_module

    import torch
    import transformers

    from tunery_engine.artifact import load_artifact
    from tunery_engine.export import ExportReference, archive_chunks, prepare_export

    files = prepare_export(artifacts[name], tmp_path / "staging", ExportReference(f"ft:{name}", "tiny-bert"))
    archive = tmp_path / "export.tar.gz"
    archive.write_bytes(b"".join(archive_chunks(files, "m")))
    with tar_module.open(archive, "r:gz") as tar:
        tar.extractall(tmp_path / "out", filter="data")
    folder = tmp_path / "out" / "m"
    assert card_header(folder)["pipeline_tag"] == pipeline_tag
    manifest = json.loads((folder / "tunery.json").read_text())
    assert "base_model" in manifest
    assert not str(manifest["base_model"]).startswith("/")

    served, tokenizer, _ = load_artifact(artifacts[name])
    plain = getattr(transformers, auto_class).from_pretrained(str(folder)).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(served(**batch).logits, plain(**batch).logits, atol=1e-5)
