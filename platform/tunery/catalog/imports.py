"""A tenant's own base model, uploaded as an archive of a Hugging Face model folder.

Checked before anything is kept: the archive (tar, tar.gz or zip) holds only regular files with
safe relative names and allowed kinds (safetensors weights, JSON, text tokenizer files, a
sentencepiece model, a README; never pickles such as ``*.bin``/``*.pt``, never Python), its
unpacked size is bounded, every safetensors file is complete (its header's offsets fit the file),
``config.json`` names an architecture on the allow-list and no remote code (``auto_map``), and the
engine's own loader check passes. It is unpacked into a temporary folder next to its final place
and renamed there only when all of that holds and the catalogue row is written, so a refused or
broken upload leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from django.conf import settings
from django.db import IntegrityError, transaction

from tunery.catalog.models import BaseModel
from tunery.catalog.services import check_loadable, describe_model_dir
from tunery.core import artifacts
from tunery.core.errors import Conflict, InvalidRequest, PayloadTooLarge, QuotaExceeded, ServiceUnavailable
from tunery.tenants.models import AuditLog, Tenant

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_FILES = 200
#: file kinds an imported model may hold; anything else is refused by name
ALLOWED_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".md", ".jinja")
#: named so the message can say why: pickles run code when loaded, .py files are remote code
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".msgpack")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spm.model")


def bad_archive(message: str, code: str = "invalid_model_archive") -> InvalidRequest:
    return InvalidRequest(message, param="file", code=code)


def importable_model_types() -> tuple[str, ...]:
    """The allow-list: architectures the engine knows how to fine-tune (its LoRA target table)."""
    from tunery_engine.modeling import LORA_TARGETS

    return tuple(sorted(LORA_TARGETS))


def import_base_model(
    *, tenant: Tenant, name: str, archive: Path, filename: str, actor: str, description: str = ""
) -> BaseModel:
    """Unpack, check and register ``archive`` as ``tenant``'s base model ``name``."""
    if not NAME_PATTERN.match(name or ""):
        raise InvalidRequest(
            "name must be 1-63 characters of lowercase letters, digits, '.', '_' or '-', starting with a "
            "letter or digit.",
            param="name",
            code="invalid_value",
        )
    if BaseModel.objects.filter(tenant=tenant, name=name).exists():
        raise Conflict(f"You already have a base model named '{name}'.", param="name", code="model_exists")
    limit = settings.TUNERY_MAX_IMPORTED_MODELS
    if BaseModel.objects.filter(tenant=tenant).count() >= limit:
        raise QuotaExceeded(
            f"You have {limit} base models of your own, the most this server keeps per tenant; delete one first.",
            param="file",
        )
    root = Path(settings.TUNERY_ARTIFACTS_DIR) / "base-models" / tenant.slug
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".tmp-{uuid.uuid4().hex}"
    final = root / f"{name}-{uuid.uuid4().hex[:8]}"
    try:
        _unpack(archive, filename, staging)
        model_dir = _model_root(staging)
        _check_model(model_dir)
        described = describe_model_dir(model_dir)
        os.replace(model_dir, final)
        local_path = _store(tenant, final)
        try:
            with transaction.atomic():
                model = BaseModel.objects.create(
                    tenant=tenant,
                    name=name,
                    local_path=local_path,
                    description=description[:2000],
                    **described,
                )
                AuditLog.objects.create(tenant=tenant, actor=actor, action="base_model.import", target=name)
        except IntegrityError as exc:  # the same name imported at the same moment
            shutil.rmtree(final, ignore_errors=True)
            _delete_stored(local_path)
            raise Conflict(f"You already have a base model named '{name}'.", param="name", code="model_exists") from exc
        return model
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _store(tenant: Tenant, folder: Path) -> str:
    """The model's ``local_path``: the folder, or with object storage for models its key in the
    bucket (``<tenant>/base-models/<name>-<id>``; workers on any host fetch it into their cache)."""
    store = artifacts.object_store()
    if store is None:
        return str(folder)
    key = f"{tenant.slug}/base-models/{folder.name}"
    try:
        store.put_tree(folder, key)
    except artifacts.StorageError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise ServiceUnavailable(
            f"The model could not be stored right now ({exc.code}); try again shortly.", code=exc.code
        ) from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the bucket holds it
    return key


def _delete_stored(local_path: str) -> None:
    if local_path and not Path(local_path).is_absolute():
        try:
            artifacts.delete_objects(local_path)
        except artifacts.StorageError as exc:
            log.error("could not delete the objects of %s: %s", local_path, exc.message)


def _check_name(raw: str) -> PurePosixPath:
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts or raw.startswith("\\") or "\\" in raw or not path.parts:
        raise bad_archive(f"the archive member '{raw}' has an unsafe path")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise bad_archive(
            f"the archive holds '{raw}': pickle-based weights are refused (they can run code when loaded); "
            "convert them to safetensors",
            code="pickle_refused",
        )
    if suffix == ".py":
        raise bad_archive(
            f"the archive holds '{raw}': models that need their own code are refused", "remote_code_refused"
        )
    if suffix not in ALLOWED_SUFFIXES:
        raise bad_archive(
            f"the archive holds '{raw}', a kind of file a model does not need ({', '.join(ALLOWED_SUFFIXES)})"
        )
    return path


def _members(archive: Path, filename: str) -> Iterator[tuple[PurePosixPath, int, Any]]:
    """(path, size, opener) of each file, refusing links, devices and unsafe names."""
    lower = filename.lower()
    if lower.endswith(".zip"):
        try:
            with zipfile.ZipFile(archive) as zipped:
                for entry in zipped.infolist():
                    if entry.is_dir():
                        continue
                    if (entry.external_attr >> 16) & 0o170000 not in (0, 0o100000):  # not a regular file
                        raise bad_archive(f"the archive member '{entry.filename}' is not a regular file")
                    yield _check_name(entry.filename), entry.file_size, lambda e=entry: zipped.open(e)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise bad_archive(f"the zip archive is damaged or truncated: {exc}", "truncated_archive") from exc
        return
    if not lower.endswith((".tar.gz", ".tgz", ".tar")):
        raise bad_archive("send the model folder as a .tar.gz, .tgz, .tar or .zip archive", "unsupported_archive")
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise bad_archive(f"the archive member '{member.name}' is a link or a device, not a file")
                yield _check_name(member.name), member.size, lambda m=member: tar.extractfile(m)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise bad_archive(f"the archive is damaged or truncated: {exc}", "truncated_archive") from exc


def _unpack(archive: Path, filename: str, staging: Path) -> None:
    limit = settings.TUNERY_MAX_MODEL_IMPORT_BYTES
    total = 0
    staging.mkdir(parents=True)
    for count, (path, size, opener) in enumerate(_members(archive, filename), start=1):
        total += size
        if count > MAX_FILES:
            raise bad_archive(f"the archive holds more than {MAX_FILES} files")
        if total > limit:
            raise PayloadTooLarge(
                f"the model unpacks to more than the {limit} bytes this server accepts",
                param="file",
                code="file_too_large",
            )
        target = staging.joinpath(*path.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise bad_archive(f"the archive holds '{path}' twice")
        written = 0
        try:
            source: IO[bytes] = opener()
            with source, target.open("wb") as out:
                while chunk := source.read(1 << 20):
                    written += len(chunk)
                    if written > size:
                        raise bad_archive(f"'{path}' is longer than the archive says")
                    out.write(chunk)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise bad_archive(f"the archive is damaged or truncated: {exc}", "truncated_archive") from exc
        if written != size:
            raise bad_archive(f"'{path}' is cut short: the archive is truncated", "truncated_archive")


def _model_root(staging: Path) -> Path:
    """The folder holding config.json: the archive's top level or its one sub-folder."""
    if (staging / "config.json").is_file():
        return staging
    entries = [p for p in staging.iterdir()]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "config.json").is_file():
        return entries[0]
    raise bad_archive("the archive holds no config.json (at its top level or in its one folder)", "missing_config")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise bad_archive(f"{path.name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise bad_archive(f"{path.name} must hold a JSON object")
    return value


def _check_model(model_dir: Path) -> None:
    config = _read_json(model_dir / "config.json")
    for name in ("config.json", "tokenizer_config.json"):
        if (model_dir / name).is_file() and "auto_map" in _read_json(model_dir / name):
            raise bad_archive(
                f"{name} asks for the model's own code (auto_map); models that need remote code are refused",
                "remote_code_refused",
            )
    allowed = importable_model_types()
    if config.get("model_type") not in allowed:
        raise bad_archive(
            f"config.json names the architecture {config.get('model_type')!r}; importable architectures are "
            f"{', '.join(allowed)}",
            "unsupported_architecture",
        )
    weights = sorted(model_dir.rglob("*.safetensors"))
    if not weights:
        raise bad_archive("the archive holds no safetensors weights", "missing_weights")
    for path in weights:
        _check_safetensors(path)
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise bad_archive(f"the archive holds no tokenizer (one of {', '.join(TOKENIZER_FILES)})", "missing_tokenizer")
    try:
        check_loadable(model_dir)
    except ValueError as exc:
        raise bad_archive(str(exc)) from exc


def _check_safetensors(path: Path) -> None:
    """A complete safetensors file: a JSON header whose tensors' byte ranges fit what follows it."""
    size = path.stat().st_size
    try:
        with path.open("rb") as stream:
            (header_size,) = struct.unpack("<Q", stream.read(8))
            if header_size > min(size - 8, 100 * 1024 * 1024):
                raise ValueError("header longer than the file")
            header = json.loads(stream.read(header_size))
        end = max((int(e["data_offsets"][1]) for k, e in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise bad_archive(f"{path.name} is not a valid safetensors file: {exc}", "invalid_weights") from exc
    if 8 + header_size + end > size:
        raise bad_archive(
            f"{path.name} is cut short: its tensors need {end} bytes after the header", "truncated_archive"
        )


def delete_base_model(*, model: BaseModel, actor: str) -> None:
    """Delete a tenant's own base model and its files; refused while a job refers to it."""
    from tunery.jobs.models import FineTuningJob

    if FineTuningJob.objects.filter(base_model=model).exists():
        raise Conflict(
            f"Fine-tuning jobs were trained from '{model.name}'; it stays while they exist.",
            param="model",
            code="model_in_use",
        )
    folder = Path(model.local_path)
    root = (Path(settings.TUNERY_ARTIFACTS_DIR) / "base-models").resolve()
    with transaction.atomic():
        AuditLog.objects.create(tenant_id=model.tenant_id, actor=actor, action="base_model.delete", target=model.name)
        model.delete()
    if not folder.is_absolute():  # a key in the object store
        _delete_stored(model.local_path)
    elif folder.resolve().is_relative_to(root):  # only what an import stored
        shutil.rmtree(folder, ignore_errors=True)
