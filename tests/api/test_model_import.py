"""POST /v1/models: a tenant's own base model from a Hugging Face folder archive (tiny real BERT),
scoped to that tenant; pickles, remote code, unknown architectures and truncated uploads are
clear 4xx errors that leave nothing stored."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.serving import builders
from tests.storage.conftest import bucket, s3_server  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return builders.base_model(tmp_path_factory.mktemp("import") / "tiny-bert", seed=2)


@pytest.fixture
def artifacts_dir(settings, tmp_path) -> Path:
    settings.TUNERY_ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings.TUNERY_ARTIFACTS_DIR


def tar_gz(folder: Path, extra: dict[str, bytes] | None = None, skip: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            if path.name not in skip:
                tar.add(path, arcname=f"my-model/{path.name}")
        for name, content in (extra or {}).items():
            info = tarfile.TarInfo(f"my-model/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def zipped(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, path.name)
    return buffer.getvalue()


def send(api, tenant, content: bytes, name: str = "legal-bert", filename: str = "model.tar.gz"):
    body = {"file": SimpleUploadedFile(filename, content), "name": name}
    return api.post("/v1/models", body, format="multipart", **tenant.headers)


def stored(artifacts_dir: Path) -> list[Path]:
    root = artifacts_dir / "base-models"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_imported_model_is_listed_usable_and_invisible_to_other_tenants(
    api, acme, globex, artifacts_dir, model_folder, training_file, create_job
):
    from tunery.catalog.models import BaseModel

    response = send(api, acme, tar_gz(model_folder))
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["id"] == "legal-bert"
    assert created["kind"] == "base"
    assert created["owned_by"] == "acme"
    assert created["architecture"] == "bert"
    assert created["parameters"] > 0
    row = BaseModel.objects.get(tenant=acme.tenant, name="legal-bert")
    assert (Path(row.local_path) / "model.safetensors").is_file()
    assert not [p for p in Path(row.local_path).parent.iterdir() if p.name.startswith(".tmp")]

    listed = {m["id"] for m in api.get("/v1/models", **acme.headers).json()["data"]}
    assert "legal-bert" in listed
    assert api.get("/v1/models/legal-bert", **acme.headers).status_code == 200
    job = create_job(acme, training_file, model="legal-bert")
    assert job.status_code == 200, job.content

    # another tenant: not listed, not retrievable, not usable for a job
    assert "legal-bert" not in {m["id"] for m in api.get("/v1/models", **globex.headers).json()["data"]}
    assert api.get("/v1/models/legal-bert", **globex.headers).status_code == 404
    refused = create_job(globex, "file-whatever", model="legal-bert")  # the model is checked first
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "model_not_found"

    # the same name again is a conflict; a zip of the same folder under another name works
    again = send(api, acme, tar_gz(model_folder))
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "model_exists"
    assert send(api, acme, zipped(model_folder), name="legal-bert-zip", filename="m.zip").status_code == 201


def _config_with(folder: Path, tmp_path: Path, **changes) -> Path:
    copy = tmp_path / "changed"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config.update(changes)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("pickle", 400, "pickle_refused"),
        ("python_file", 400, "remote_code_refused"),
        ("auto_map", 400, "remote_code_refused"),
        ("unknown_architecture", 400, "unsupported_architecture"),
        ("truncated_upload", 400, "truncated_archive"),
        ("truncated_weights", 400, "truncated_archive"),
        ("no_weights", 400, "missing_weights"),
        ("symlink", 400, "invalid_model_archive"),
        ("path_traversal", 400, "invalid_model_archive"),
        ("not_an_archive", 400, "unsupported_archive"),
        ("too_large", 413, "file_too_large"),
        ("bad_name", 400, "invalid_value"),
    ],
)
def test_bad_imports_are_clear_errors_and_store_nothing(
    api, acme, artifacts_dir, model_folder, tmp_path, settings, case, status, code
):
    from tunery.catalog.models import BaseModel

    name, filename = "legal-bert", "model.tar.gz"
    if case == "pickle":
        content = tar_gz(model_folder, {"pytorch_model.bin": b"\x80\x04K\x01."})
    elif case == "python_file":
        content = tar_gz(model_folder, {"modeling_evil.py": b"import os\n"})
    elif case == "auto_map":
        folder = _config_with(model_folder, tmp_path, auto_map={"AutoModel": "modeling_evil.EvilModel"})
        content = tar_gz(folder)
    elif case == "unknown_architecture":
        content = tar_gz(_config_with(model_folder, tmp_path, model_type="evil_net"))
    elif case == "truncated_upload":
        whole = tar_gz(model_folder)
        content = whole[: len(whole) // 2]
    elif case == "truncated_weights":
        copy = tmp_path / "cut"
        shutil.copytree(model_folder, copy)
        weights = (copy / "model.safetensors").read_bytes()
        (copy / "model.safetensors").write_bytes(weights[: len(weights) - 1000])
        content = tar_gz(copy)
    elif case == "no_weights":
        content = tar_gz(model_folder, skip=("model.safetensors",))
    elif case == "symlink":
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            link = tarfile.TarInfo("vocab.txt")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
        content = buffer.getvalue()
    elif case == "path_traversal":
        content = tar_gz(model_folder, {"../../escape.json": b"{}"})
    elif case == "not_an_archive":
        content, filename = b"{}", "model.json"
    elif case == "too_large":
        settings.TUNERY_MAX_MODEL_IMPORT_BYTES = 10_000
        content = tar_gz(model_folder)
    else:
        content, name = tar_gz(model_folder), "Bad Name!"

    response = send(api, acme, content, name=name, filename=filename)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert not BaseModel.objects.filter(tenant=acme.tenant).exists()
    assert stored(artifacts_dir) == []
    assert not (tmp_path.parent / "escape.json").exists()


def test_importing_needs_an_admin_key(api, make_tenant, dummy_packs, base_model, artifacts_dir, model_folder):
    member = make_tenant("acme", role="member")
    response = send(api, member, tar_gz(model_folder))
    assert response.status_code == 403
    assert stored(artifacts_dir) == []


def test_an_imported_model_is_deleted_with_its_files_unless_a_job_used_it(
    api, acme, globex, artifacts_dir, model_folder, training_file, create_job, settings
):
    assert send(api, acme, tar_gz(model_folder), name="spare").status_code == 201
    assert send(api, acme, tar_gz(model_folder), name="used").status_code == 201
    assert create_job(acme, training_file, model="used").status_code == 200

    settings.TUNERY_MAX_IMPORTED_MODELS = 2
    over = send(api, acme, tar_gz(model_folder), name="third")
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "quota_exceeded"

    assert api.delete("/v1/models/spare", **globex.headers).status_code == 404
    in_use = api.delete("/v1/models/used", **acme.headers)
    assert in_use.status_code == 409
    assert in_use.json()["error"]["code"] == "model_in_use"
    deleted = api.delete("/v1/models/spare", **acme.headers)
    assert deleted.status_code == 200
    assert deleted.json()["deleted"] is True
    assert api.get("/v1/models/spare", **acme.headers).status_code == 404
    assert not [p for p in stored(artifacts_dir) if "/spare-" in str(p)]
    assert [p for p in stored(artifacts_dir) if "/used-" in str(p)]
    # platform-wide base models stay the operator's
    assert api.delete("/v1/models/all-minilm-l6-v2", **acme.headers).status_code == 403


def test_with_object_storage_an_import_lives_in_the_bucket_and_reaches_any_worker(
    api,
    acme,
    artifacts_dir,
    model_folder,
    settings,
    tmp_path,
    monkeypatch,
    s3_server,  # noqa: F811
    bucket,  # noqa: F811
):
    from tunery.catalog.models import BaseModel
    from tunery.core import artifacts
    from tunery.jobs.runner import resolve_base_model_path

    for name, value in s3_server.env(bucket).items():
        monkeypatch.setenv(name, value)
    settings.TUNERY_ARTIFACT_CACHE_DIR = tmp_path / "worker-cache"
    artifacts.reset()
    try:
        response = send(api, acme, tar_gz(model_folder))
        assert response.status_code == 201, response.content
        row = BaseModel.objects.get(tenant=acme.tenant, name="legal-bert")
        assert row.local_path.startswith("acme/base-models/legal-bert-")  # a key, not this host's folder
        assert stored(artifacts_dir) == []  # nothing kept on the web host
        store = artifacts.object_store()
        assert store.read_manifest(row.local_path)["files"]["model.safetensors"]["size"] > 0

        on_worker = Path(resolve_base_model_path(row))  # a worker host fetches it on first use
        assert on_worker.is_relative_to(tmp_path / "worker-cache")
        assert (on_worker / "model.safetensors").read_bytes() == (model_folder / "model.safetensors").read_bytes()

        assert api.delete("/v1/models/legal-bert", **acme.headers).status_code == 200
        assert store.read_manifest(row.local_path) is None
        assert store.children("acme/base-models") == []
    finally:
        artifacts.reset()
