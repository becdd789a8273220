"""Continued fine-tuning on the control plane: a job whose ``model`` is one of the tenant's ``ft:``
models, or a checkpoint of one (``<ft id>:ckpt-step-<N>``, as GET .../checkpoints names them).

The parent is looked up within the tenant only: another tenant's id, a deleted model or a
checkpoint no longer stored answer like an unknown model. The new job takes the parent's base
model, vertical, task and training type (``tunery_engine.continued`` trains it the parent's way)
and records the lineage (``FineTuningJob.parent_model`` / ``parent_checkpoint``, then
``FineTunedModel.parent``). ``replay_fraction`` mixes a sample of the parent's training file in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.catalog.models import BaseModel, FineTunedModel
from tunery.core import artifacts
from tunery.core.errors import Conflict, InvalidRequest
from tunery.files.models import File
from tunery.jobs import selectors
from tunery.jobs.models import FineTuningJob, JobCheckpoint, JobStatus
from tunery.tenants.models import Tenant
from tunery_contract.vocabulary import AUTO

FINE_TUNED_PREFIX = "ft:"


@dataclass(frozen=True)
class Parent:
    """A checked parent: the tenant's model and, when the job starts from one, its job's checkpoint."""

    name: str
    model: FineTunedModel
    checkpoint: JobCheckpoint | None

    @property
    def job(self) -> FineTuningJob:
        return self.model.source_job

    @property
    def base_model(self) -> BaseModel:
        return self.model.base_model

    @property
    def training_type(self) -> str | None:
        value = (self.job.resolved_config or {}).get("training_type")
        return str(value) if value else None


def is_fine_tuned(model_name: str) -> bool:
    return model_name.startswith(FINE_TUNED_PREFIX)


def _not_found(name: str, why: str = "") -> InvalidRequest:
    return InvalidRequest(
        f"The model '{name}' does not exist or is not available to you{why}. "
        "GET /v1/models lists your fine-tuned models; GET /v1/fine_tuning/jobs/{id}/checkpoints their checkpoints.",
        param="model",
        code="model_not_found",
    )


def resolve_parent(tenant: Tenant, name: str) -> Parent:
    """The tenant's ``ft:`` model or checkpoint ``name`` (400 model_not_found, or 409 while its job
    has not finished)."""
    named = selectors.split_checkpoint_name(name)
    model_id = named[0] if named is not None else name
    model = selectors.fine_tuned_models(tenant).select_related("job", "base_model").filter(pk=model_id).first()
    if model is None:
        _refuse_unfinished(tenant, name, model_id)
        raise _not_found(name)
    if named is None:
        return Parent(name, model, None)
    checkpoint = JobCheckpoint.objects.filter(job=model.job, step_number=named[1]).first()
    if checkpoint is None or not checkpoint_is_stored(checkpoint):
        raise _not_found(name, " (that checkpoint is not kept; the job keeps its latest and best checkpoints)")
    if checkpoint.kind == JobCheckpoint.Kind.LINEAR_PROBE:
        raise InvalidRequest(
            f"The checkpoint '{name}' is the job's linear probe (the frozen base model with a logistic-regression "
            "head), not a point to continue training from: a new job from the base model starts from the same "
            f"probe, or continue from '{model.id}'.",
            param="model",
            code="checkpoint_not_continuable",
        )
    return Parent(name, model, checkpoint)


def _refuse_unfinished(tenant: Tenant, name: str, model_id: str) -> None:
    """A model id names its job last: a job of this tenant that has not succeeded yet is a 409."""
    job_id = model_id.rsplit(":", 1)[-1]
    job = FineTuningJob.objects.filter(tenant=tenant, pk=job_id).only("status").first()
    if job is not None and job.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        raise Conflict(
            f"The model '{name}' is not ready: its fine-tuning job {job_id} is {job.status}. "
            "Continue from it once the job has succeeded.",
            param="model",
            code="model_not_ready",
        )


def checkpoint_is_stored(checkpoint: JobCheckpoint) -> bool:
    """Whether the checkpoint's files are still there (pruned ones are not). With object storage
    the bucket is asked when the job starts, not here."""
    if artifacts.object_store() is not None:
        return True
    return Path(checkpoint.path).is_dir()


def checkpoint_location(checkpoint: JobCheckpoint) -> str:
    """An ``artifact_path``-like location of a checkpoint for :func:`artifacts.local_artifact_dir`:
    its key in the bucket with object storage, else the folder the engine wrote. The early linear
    probe's is its artifact (``<prefix>/probe``, where checkpoint pruning never reaches)."""
    if artifacts.object_store() is None:
        return checkpoint.path
    job = checkpoint.job
    if checkpoint.kind == JobCheckpoint.Kind.LINEAR_PROBE:
        return artifacts.probe_artifact_key(job.tenant.slug, job.pk)
    return f"{artifacts.job_prefix(job.tenant.slug, job.pk)}/checkpoints/{Path(checkpoint.path).name}"


def vertical_and_task(parent: Parent, body: dict[str, Any]) -> tuple[str, str]:
    """The parent's vertical and task; asking for others is a 400 (the head would not fit)."""
    for param, own in (("vertical", parent.model.vertical), ("task", parent.model.task)):
        asked = body.get(param)
        if asked not in (None, "", own):
            raise InvalidRequest(
                f"The model '{parent.name}' was fine-tuned for {param} '{own}'; a continued fine-tune keeps it "
                f"(leave {param} out or pass '{own}').",
                param=param,
                code="parent_model_mismatch",
            )
    return parent.model.vertical, parent.model.task


def inherit_training_type(parent: Parent, requested: dict[str, Any]) -> dict[str, Any]:
    """``requested`` with the parent's training type (a LoRA parent's adapter trains on; a full
    fine-tune's weights do); asking for the other is a 400."""
    own = parent.training_type
    if own is None:
        return requested
    asked = requested.get("training_type")
    if asked not in (None, AUTO, own):
        raise InvalidRequest(
            f"The model '{parent.name}' was fine-tuned with training_type '{own}'; a continued fine-tune "
            f"trains the same way (leave training_type out or pass '{own}').",
            param="training_type",
            code="parent_model_mismatch",
        )
    return {**requested, "training_type": own}


def checked_replay_fraction(parent: Parent | None, value: Any) -> float:
    """``replay_fraction``: 0..1, only for a continued fine-tune whose parent's training file the
    tenant still holds."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidRequest(
            "replay_fraction must be a number from 0 to 1.", param="replay_fraction", code="invalid_value"
        )
    if not value:
        return 0.0
    if parent is None:
        raise InvalidRequest(
            "replay_fraction replays a parent model's training data: it needs an ft: model as model.",
            param="replay_fraction",
            code="invalid_value",
        )
    if replay_file(parent.job) is None:
        raise InvalidRequest(
            f"The training file of '{parent.name}' was deleted: there is nothing to replay.",
            param="replay_fraction",
            code="replay_file_missing",
        )
    return float(value)


def replay_file(parent_job: FineTuningJob) -> File | None:
    """The parent job's training file while the tenant still holds it."""
    return File.objects.filter(
        pk=parent_job.training_file_id, tenant_id=parent_job.tenant_id, deleted_at__isnull=True
    ).first()


def requested_model_name(job: FineTuningJob) -> str:
    """What the job was created with as ``model`` (OpenAI echoes the ft: id of a continued job)."""
    if job.parent_checkpoint_id is not None and job.parent_model_id is not None:
        return selectors.checkpoint_model_name(job.parent_model_id, job.parent_checkpoint.step_number)
    if job.parent_model_id is not None:
        return str(job.parent_model_id)
    return job.base_model.name
