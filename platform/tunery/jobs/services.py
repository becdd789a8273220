"""Writes for fine-tuning jobs: create, cancel, pause, resume.

Status changes belong to ``tunery.jobs.lifecycle`` (compare-and-set, so a worker and an API call
racing on the same job cannot both win); these add the business checks (packs, files, quotas).
After each commit the queue is told through ``tunery.jobs.dispatch`` (it owns what message, if
any, wakes a worker)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from tunery.catalog.models import BaseModel
from tunery.core.errors import InvalidRequest, QuotaExceeded
from tunery.files.models import File
from tunery.jobs import dispatch, estimates, lifecycle, lineage, selectors, tracking
from tunery.jobs.file_validation import FilesRefused, check_files, refuse_blocking, training_labels
from tunery.jobs.hyperparameters import (
    GPU_RANGE,
    KNOB_GROUPS,
    SEED_RANGE,
    TUNERY_KNOBS,
    engine_overrides,
    method_overrides,
    method_type,
    parse_integer,
    parse_requested,
)
from tunery.jobs.models import FineTuningJob, JobEvent, JobStatus
from tunery.jobs.queues import training_queue
from tunery.tenants.models import Tenant
from tunery.verticals.registry import tenant_config
from tunery.verticals.selectors import task_for
from tunery_contract import TaskKind, out_of_scope
from tunery_contract.columns import mapped_columns, mapping_problems
from tunery_contract.preferences import FIELDS as PREFERENCE_FIELDS
from tunery_contract.types import TaskDefinition, VerticalPack
from tunery_contract.vocabulary import AUTO, ConfigError

SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_METADATA_KEYS = 16
#: Every top-level field a create request may carry (OpenAI's, then Tunery's extra body fields).
CREATE_FIELDS = frozenset(
    {"model", "training_file", "validation_file", "hyperparameters", "suffix", "seed", "metadata", "method"}
    | {"integrations", "vertical", "task", "teacher_model", "gpus", "dry_run", "column_mapping", "replay_fraction"}
    | set(KNOB_GROUPS)
    | {name for name in TUNERY_KNOBS if "." not in name}
)


@dataclass(frozen=True)
class JobRequest:
    """A checked job-create request: everything resolved to rows and packs."""

    base_model: BaseModel
    training_file: File
    validation_file: File | None
    pack: VerticalPack
    task: TaskDefinition
    #: Engine config overrides (TrainConfig names, concrete values only).
    requested: dict[str, Any]
    suffix: str
    seed: int
    metadata: dict[str, str]
    teacher_model: str
    gpus: int
    integrations: list[dict[str, Any]] = field(default_factory=list)
    #: Tunery's ``dry_run``: check and resolve everything, create nothing.
    dry_run: bool = False
    #: The files' columns renamed to the task's (file column -> schema column).
    column_mapping: dict[str, str] = field(default_factory=dict)
    #: A continued fine-tune's parent model (``tunery.jobs.lineage``), and the share of its
    #: training rows replayed.
    parent: lineage.Parent | None = None
    replay_fraction: float = 0.0


def check_create_request(tenant: Tenant, body: dict[str, Any]) -> JobRequest:
    """Every check that needs no lock, in the order a client would fix them."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"Unrecognized request argument supplied: {unknown[0]}. Known: {', '.join(sorted(CREATE_FIELDS))}.",
            param=unknown[0],
            code="unknown_parameter",
        )
    integrations = tracking.parse_integrations(body.get("integrations"))
    model_name = _required_string(body, "model")
    parent = lineage.resolve_parent(tenant, model_name) if lineage.is_fine_tuned(model_name) else None
    base_model = parent.base_model if parent else selectors.base_model_by_name(tenant, model_name)
    if base_model is None:
        raise InvalidRequest(
            f"The model '{model_name}' does not exist or is not available to you. "
            "GET /v1/models lists the base models you can fine-tune.",
            param="model",
            code="model_not_found",
        )
    vertical, task_id = lineage.vertical_and_task(parent, body) if parent else (body.get("vertical"), body.get("task"))
    pack, task = task_for(tenant, vertical, task_id)
    preferences = method_type(body, task) == "dpo"  # OpenAI's preference format, not the task's columns
    column_mapping = body.get("column_mapping")
    if column_mapping is None:  # the mapping the training file was uploaded with, if any
        column_mapping = {} if preferences else _stored_mapping(tenant, body.get("training_file"))
    if preferences and column_mapping:
        raise InvalidRequest("column_mapping does not apply to preference files.", param="column_mapping")
    training_file = _tenant_file(
        tenant,
        _required_string(body, "training_file"),
        "training_file",
        task,
        column_mapping,
        check_mapping=True,
        preferences=preferences,
    )
    validation_file = None
    if body.get("validation_file"):
        validation_file = _tenant_file(
            tenant,
            _required_string(body, "validation_file"),
            "validation_file",
            task,
            column_mapping,
            preferences=preferences,
        )
    if task.suitable_architectures and base_model.architecture not in task.suitable_architectures:
        raise InvalidRequest(
            f"Task '{task.id}' needs a base model of architecture {', '.join(task.suitable_architectures)}; "
            f"'{base_model.name}' is {base_model.architecture or 'unknown'}.",
            param="model",
            code="model_not_suitable",
        )
    requested = engine_overrides(parse_requested(body), task.default_hyperparameters)
    if parent is not None:
        requested = lineage.inherit_training_type(parent, requested)
    requested |= method_overrides(body, task, requested)
    _check_handoff_target(requested, task)
    if parent is None:  # a continued fine-tune's labels include its parent's: the engine checks those
        _check_out_of_scope_label(tenant, requested, pack, task, training_file, column_mapping)
    replay_fraction = lineage.checked_replay_fraction(parent, body.get("replay_fraction"))
    suffix = body.get("suffix") or ""
    if suffix and (not isinstance(suffix, str) or not SUFFIX.match(suffix)):
        raise InvalidRequest("suffix must be 1-64 letters, digits, '-' or '_'.", param="suffix", code="invalid_value")
    seed = body.get("seed")
    seed = secrets.randbelow(SEED_RANGE[1]) if seed is None else parse_integer(seed, "seed", SEED_RANGE)
    gpus = body.get("gpus", "auto")
    gpus = 0 if gpus in ("auto", None) else parse_integer(gpus, "gpus", GPU_RANGE)
    teacher = body.get("teacher_model") or ""
    if teacher:
        _check_teacher(tenant, teacher)
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidRequest("dry_run must be true or false.", param="dry_run", code="invalid_type")
    return JobRequest(
        base_model=base_model,
        training_file=training_file,
        validation_file=validation_file,
        pack=pack,
        task=task,
        requested=requested,
        suffix=suffix,
        seed=seed,
        metadata=checked_metadata(body.get("metadata")),
        teacher_model=teacher,
        gpus=gpus,
        integrations=integrations,
        dry_run=dry_run,
        column_mapping=dict(column_mapping),
        parent=parent,
        replay_fraction=replay_fraction,
    )


def create_job(*, tenant: Tenant, checked: JobRequest, actor: str) -> FineTuningJob:
    """Insert a job from a checked request (:func:`check_create_request`) and wake a validator."""
    with transaction.atomic():
        # The tenant row lock serialises concurrent creates, so quotas cannot be overrun by a race.
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        _check_job_quotas(locked)
        job = FineTuningJob.objects.create(
            tenant=tenant,
            created_by=actor,
            base_model=checked.base_model,
            training_file=checked.training_file,
            validation_file=checked.validation_file,
            vertical=checked.pack.id,
            vertical_version=checked.pack.version,
            task=checked.task.id,
            suffix=checked.suffix,
            seed=checked.seed,
            metadata=checked.metadata,
            requested_hyperparameters=checked.requested,
            teacher_model=checked.teacher_model,
            column_mapping=checked.column_mapping,
            gpus=checked.gpus,
            parent_model=checked.parent.model if checked.parent else None,
            parent_checkpoint=checked.parent.checkpoint if checked.parent else None,
            replay_fraction=checked.replay_fraction,
            integrations=checked.integrations,
            queue=training_queue(checked.gpus),
            status=JobStatus.VALIDATING_FILES,
        )
        JobEvent.objects.create(job=job, message=f"Created fine-tuning job: {job.id}", dedupe_key="created")
        transaction.on_commit(lambda: dispatch.job_created(job.id))
    return job


#: Settled by the training worker's device, so a dry run leaves them as asked.
DEVICE_DEPENDENT = ("precision", "compile")


def dry_run(*, tenant: Tenant, checked: JobRequest) -> dict[str, Any]:
    """What a job from ``checked`` would train with, without creating it: the files' profile (the
    one stored at upload where it fits, else the files validated and profiled as the job's
    validation does) and the engine's "auto" rules applied to the task's defaults merged with the
    request. A 400 where the job would fail validation."""
    method = checked.requested.get("training_method", "supervised")
    profile = _stored_profile(checked) if method == "supervised" else None
    try:
        if profile is None:
            config = tenant_config(tenant.pk, checked.pack)
            profile = check_files(
                checked.task, config, checked.training_file, checked.validation_file, checked.column_mapping, method
            ).profile
        else:
            refuse_blocking(profile, checked.training_file)
    except FilesRefused as refused:
        raise InvalidRequest(refused.message, param=refused.param, code="invalid_training_data") from refused
    resolved, reasons, stage_replaces_epochs = _resolved_hyperparameters(checked, profile)
    expected = estimates.estimate(
        base_model=checked.base_model,
        task=checked.task,
        queue=training_queue(checked.gpus),
        gpus=checked.gpus,
        profile=profile,
        config=resolved,
        has_validation_file=checked.validation_file is not None,
        stage_replaces_epochs=stage_replaces_epochs,
    )
    return {
        "object": "fine_tuning.job.dry_run",
        "model": checked.parent.name if checked.parent else checked.base_model.name,
        "training_file": checked.training_file.pk,
        "validation_file": checked.validation_file.pk if checked.validation_file else None,
        "vertical": checked.pack.id,
        "task": checked.task.id,
        "resolved_hyperparameters": resolved,
        "auto_reasons": reasons,
        "data_profile": profile,
        "estimate": expected.to_json(),
        "warnings": [*profile["warnings"], *_quota_warnings(tenant, expected.seconds)],
    }


def _quota_warnings(tenant: Tenant, seconds: float) -> list[dict[str, str]]:
    """What the tenant's quotas would do to this job (a dry run consumes none): a create refused
    now, or training hours that may run out before the estimated run ends. The quotas are read
    afresh, as a create does (the request's tenant may come from the key cache)."""
    tenant = Tenant.objects.get(pk=tenant.pk)
    try:
        _check_job_quotas(tenant)
    except QuotaExceeded as refused:
        return [{"code": str(refused.code), "message": f"{refused.message} A job created now would be refused."}]
    left = tenant.max_training_hours - selectors.training_hours_this_month(tenant)
    if seconds / 3600 > left:
        return [
            {
                "code": "training_hours_may_run_out",
                "message": f"The estimate is {seconds / 3600:.2f} training hours; this tenant has {left:.2f} of its "
                f"{tenant.max_training_hours:g} left this month. Train on fewer rows or epochs, or ask your "
                "administrator for more hours.",
            }
        ]
    return []


def _stored_profile(checked: JobRequest) -> dict[str, Any] | None:
    """The training file's profile from its upload, when it was checked against this task and no
    validation file needs the overlap measured (nor columns renamed): a dry run then reads no file."""
    if checked.column_mapping != (checked.training_file.column_mapping or {}):
        return None
    profile = checked.training_file.profile or {}
    same_task = (profile.get("vertical"), profile.get("task")) == (checked.pack.id, checked.task.id)
    return profile if same_task and checked.validation_file is None else None


def _resolved_hyperparameters(checked: JobRequest, profile: dict[str, Any]) -> estimates.ExpectedConfig:
    """The configuration the engine would resolve on this data, with the rule behind each "auto"
    value (``estimates.expected_config``); precision and compile (``DEVICE_DEPENDENT``) stay as
    asked, and ``max_length`` may come out lower on the worker (the base model's own limit)."""
    try:
        expected = estimates.expected_config(
            checked.task,
            checked.requested,
            seed=checked.seed,
            base_model=checked.base_model,
            gpus=checked.gpus,
            profile=profile,
            has_validation_file=checked.validation_file is not None,
        )
    except ConfigError as exc:
        raise InvalidRequest(f"The configuration cannot train: {exc}.", code="invalid_hyperparameter") from exc
    config = {**dict(checked.task.default_hyperparameters), **checked.requested}
    for name in DEVICE_DEPENDENT:
        expected.values[name] = config.get(name, AUTO)
    return expected


#: The knobs of the calibrated hand-off (``tunery_engine`` ``calibrate``): single-label classification only.
HANDOFF_TARGETS = ("handoff_coverage", "handoff_precision")


def _check_handoff_target(requested: dict[str, Any], task: TaskDefinition) -> None:
    """A hand-off target the task's model cannot have is a 400, not a job that silently ignores it:
    only a single-label classifier has one confidence to hand off below."""
    if task.kind is TaskKind.SEQUENCE_CLASSIFICATION:
        return
    for name in HANDOFF_TARGETS:
        if requested.get(name) is not None:
            raise InvalidRequest(
                f"{name} sets the hand-off threshold of a single-label classifier; task '{task.id}' is "
                f"{task.kind.value}, whose model has no hand-off threshold. Leave it out.",
                param=name,
                code="invalid_hyperparameter",
            )


def _check_out_of_scope_label(
    tenant: Tenant,
    requested: dict[str, Any],
    pack: VerticalPack,
    task: TaskDefinition,
    training_file: File,
    column_mapping: Any,
) -> None:
    """A named ``out_of_scope_label`` must be a label of the training file (a 400, not a job that
    fails later); "auto" and null need no check."""
    name = requested.get("out_of_scope_label")
    if name is None or name == AUTO:
        return
    if task.kind is not TaskKind.SEQUENCE_CLASSIFICATION:
        raise InvalidRequest(
            f"out_of_scope_label needs a single-label classification task; '{task.id}' is {task.kind.value}.",
            param="out_of_scope_label",
            code="invalid_hyperparameter",
        )
    labels = training_labels(task, tenant_config(tenant.pk, pack), training_file, column_mapping)
    problem = None if labels is None else out_of_scope.missing_label_message(str(name), labels)
    if problem is not None:
        raise InvalidRequest(problem, param="out_of_scope_label", code="invalid_hyperparameter")


def _required_string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{name} is required (a string).", param=name, code="missing_required_parameter")
    return value


def _stored_mapping(tenant: Tenant, file_id: Any) -> dict[str, str]:
    if not isinstance(file_id, str):
        return {}
    found = File.objects.filter(tenant=tenant, pk=file_id, deleted_at__isnull=True).values_list(
        "column_mapping", flat=True
    )
    return dict(found.first() or {})


def _tenant_file(
    tenant: Tenant,
    file_id: str,
    param: str,
    task: TaskDefinition,
    column_mapping: Any,
    *,
    check_mapping: bool = False,
    preferences: bool = False,
) -> File:
    """The tenant's fine-tune file ``file_id`` with the columns ``task`` needs (after
    ``column_mapping``; ``check_mapping``: its keys must be columns of this file), or with
    ``preferences`` the fields of OpenAI's preference format."""
    file = File.objects.filter(tenant=tenant, pk=file_id, deleted_at__isnull=True).first()
    if file is None:
        raise InvalidRequest(f"No file with id '{file_id}' found.", param=param, code="file_not_found")
    if file.purpose != File.Purpose.FINE_TUNE:
        raise InvalidRequest(
            f"File '{file_id}' has purpose '{file.purpose}'; fine-tuning needs purpose 'fine-tune'.",
            param=param,
            code="invalid_file_purpose",
        )
    if preferences:
        missing = [name for name in PREFERENCE_FIELDS if name not in (file.columns or [])]
        if missing:
            raise InvalidRequest(
                f"{param} '{file_id}' is not a preference file: it lacks {', '.join(missing)} (method 'dpo' "
                f"trains on lines of {', '.join(PREFERENCE_FIELDS)}).",
                param=param,
                code="missing_columns",
            )
        return file
    problems = mapping_problems(column_mapping, task.schema, file.columns if check_mapping else None)
    if problems:
        raise InvalidRequest(problems[0] + ".", param="column_mapping", code="invalid_column_mapping")
    required = [c.name for c in task.schema.columns if c.required]
    columns = mapped_columns(file.columns or [], column_mapping)
    missing = [name for name in required if name not in columns]
    if missing:
        hint = "" if column_mapping else ' (column_mapping {"<your column>": "<task column>"} renames yours)'
        raise InvalidRequest(
            f"{param} '{file_id}' lacks the column(s) {', '.join(missing)} that task '{task.id}' needs "
            f"(it needs {', '.join(required)}; the file has {', '.join(columns) or 'none'}){hint}.",
            param=param,
            code="missing_columns",
        )
    return file


def _check_teacher(tenant: Tenant, teacher: Any) -> None:
    if not isinstance(teacher, str):
        raise InvalidRequest("teacher_model must be a model id.", param="teacher_model", code="invalid_value")
    if teacher.startswith("ft:"):
        found = selectors.fine_tuned_models(tenant).filter(pk=teacher).exists()
    else:
        found = selectors.base_model_by_name(tenant, teacher) is not None
    if not found:
        raise InvalidRequest(
            f"The teacher model '{teacher}' does not exist or is not available to you.",
            param="teacher_model",
            code="model_not_found",
        )


def checked_metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA_KEYS
        or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in value.items()
        )
    ):
        raise InvalidRequest(
            f"metadata must be an object of at most {MAX_METADATA_KEYS} string keys (<= 64 chars) "
            "and string values (<= 512 chars).",
            param="metadata",
            code="invalid_value",
        )
    return dict(value)


def _check_job_quotas(tenant: Tenant) -> None:
    # Jobs beyond the running limit (max_concurrent_jobs, the claim's) wait queued; this bounds the queue.
    active = selectors.active_job_count(tenant)
    if active >= tenant.max_queued_jobs:
        raise QuotaExceeded(
            f"This tenant already has {active} unfinished jobs (validating, queued or running), its limit "
            f"is {tenant.max_queued_jobs}; wait for one to finish or cancel one.",
            code="queued_jobs_quota_exceeded",
        )
    used = selectors.training_hours_this_month(tenant)
    if used >= tenant.max_training_hours:
        raise QuotaExceeded(
            f"This tenant has used {used:.2f} of its {tenant.max_training_hours:g} training hours this month.",
            code="training_hours_quota_exceeded",
        )


# Client requests on a job. The status change is tunery.jobs.lifecycle's; what the API adds is the
# tenant's quota on resume and the wake-up message after commit.


def cancel_job(*, job: FineTuningJob, actor: str) -> FineTuningJob:
    """Jobs not holding a worker stop at once; a running one is asked to stop between steps."""
    with transaction.atomic():
        lifecycle.cancel(job.pk, actor=actor)
        transaction.on_commit(lambda: dispatch.job_action_requested(job.id, "cancel"))
    job.refresh_from_db()
    return job


def pause_job(*, job: FineTuningJob, actor: str) -> FineTuningJob:
    """A queued job is paused at once; a running one checkpoints and frees its worker."""
    with transaction.atomic():
        lifecycle.pause(job.pk, actor=actor)
        transaction.on_commit(lambda: dispatch.job_action_requested(job.id, "pause"))
    job.refresh_from_db()
    return job


def resume_job(*, job: FineTuningJob, actor: str) -> FineTuningJob:
    """A paused job goes back to the queue if the tenant's quotas allow it; a running job whose
    pause is still pending keeps running."""
    with transaction.atomic():
        # The tenant row lock serialises this check with concurrent creates and resumes.
        locked = Tenant.objects.select_for_update().get(pk=job.tenant_id)
        if job.status == JobStatus.PAUSED:
            _check_job_quotas(locked)
        if lifecycle.resume(job.pk, actor=actor) == JobStatus.QUEUED:
            transaction.on_commit(lambda: dispatch.job_resumed(job.id))
    job.refresh_from_db()
    return job
