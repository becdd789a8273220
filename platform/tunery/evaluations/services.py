"""Writes and calls for evaluations: create one for a worker, run one now (the promotion gate's
way in), and compare two evaluations of the same file.

For other apps (the deployment gate)::

    evaluation = evaluate_now(tenant=t, model_id="ft:...", file_id="file-...", actor="...")
    evaluation = evaluate_or_reuse(...)    # the same, or an earlier result on the same file content
    evaluation.status                      # "succeeded" or "failed" (evaluation.error says why)
    evaluation.metrics[evaluation.selection_metric], evaluation.greater_is_better
    compare(champion_evaluation, challenger_evaluation)["metrics"][name]["difference"]  # b - a
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from tunery.catalog.models import BaseModel, FineTunedModel
from tunery.core.errors import ApiError, Conflict, InvalidRequest, NotFound, QuotaExceeded
from tunery.evaluations import dispatch, lifecycle, report, runner
from tunery.evaluations.models import EVALUATION_QUEUES, Evaluation, EvaluationStatus
from tunery.files.models import File
from tunery.jobs.lifecycle import new_lease_owner
from tunery.jobs.models import JobCheckpoint
from tunery.jobs.queues import CPU_QUEUE
from tunery.jobs.selectors import base_model_by_name, names_a_checkpoint, served_checkpoint_name
from tunery.jobs.services import checked_metadata
from tunery.serving import selectors as serving_selectors
from tunery.tenants.models import Tenant
from tunery.verticals.registry import PackContext, pack_context
from tunery_contract import TaskKind
from tunery_contract.types import PackError

PENDING = (EvaluationStatus.QUEUED, EvaluationStatus.RUNNING)


def create_evaluation(*, tenant: Tenant, body: dict[str, Any], actor: str) -> Evaluation:
    """POST /v1/evaluations: check the model, the file (every row, against the model's pack) and
    the options, insert the row and wake a worker once it is committed."""
    model = body.get("model")
    file_id = body.get("file")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "model is required: one of your fine-tuned models, or a checkpoint of one (ft:...:ckpt-step-N).",
            param="model",
        )
    if not isinstance(file_id, str) or not file_id:
        raise InvalidRequest("file is required: the id of a labelled file in the model's task schema.", param="file")
    queue = body.get("queue", CPU_QUEUE)
    if queue not in EVALUATION_QUEUES:
        raise InvalidRequest(f"queue must be one of {', '.join(EVALUATION_QUEUES)}; got {queue!r}.", param="queue")
    metadata = checked_metadata(body.get("metadata"))
    pending = Evaluation.objects.filter(tenant=tenant, status__in=PENDING).count()
    if pending >= settings.TUNERY_EVALUATION_MAX_PENDING:
        raise QuotaExceeded(
            f"Your organisation has {pending} evaluations queued or running, the most it may have at once; "
            "wait for one to finish.",
            param="model",
            code="evaluation_quota_exceeded",
        )
    generate = body.get("generate", False)
    if not isinstance(generate, bool):
        raise InvalidRequest("generate must be true or false.", param="generate")
    evaluation = _new_evaluation(
        tenant=tenant,
        model_id=model,
        file_id=file_id,
        actor=actor,
        handoff_threshold=body.get("handoff_threshold"),
        queue=queue,
        metadata=metadata,
        generate=generate,
        vertical=body.get("vertical"),
        task=body.get("task"),
    )
    dispatch.evaluation_created(evaluation.id, evaluation.queue)
    return evaluation


def evaluate_now(
    *, tenant: Tenant, model_id: str, file_id: str, actor: str, handoff_threshold: float | None = None
) -> Evaluation:
    """Create an evaluation and score it in this process (the worker's code), e.g. for a promotion
    gate. Bad arguments raise the API's errors (404 unknown model or file, 400 wrong schema or
    empty file); a scoring failure is the returned evaluation's ``status``/``error``."""
    evaluation = _new_evaluation(
        tenant=tenant, model_id=model_id, file_id=file_id, actor=actor, handoff_threshold=handoff_threshold
    )
    owner = new_lease_owner()
    claimed = lifecycle.claim(evaluation.id, owner)
    if claimed is not None:
        runner.run_claimed(claimed, owner)
    evaluation.refresh_from_db()
    return evaluation


def evaluate_or_reuse(*, tenant: Tenant, model_id: str, file_id: str, actor: str) -> Evaluation:
    """The latest succeeded evaluation of this model on this file's content at the tenant's current
    hand-off threshold and the pack's current selection metric, else :func:`evaluate_now`. A
    model's weights never change, so a second promotion through the gate scores nothing twice."""
    model = serving_selectors.tenant_model(tenant, model_id)
    file = _tenant_file(tenant, file_id)
    context = _model_context(model)
    threshold = _threshold(None, context, _scored_kind(model), fitted_threshold(model))
    earlier = (
        Evaluation.objects.filter(
            tenant=tenant,
            model=model,
            checkpoint__isnull=True,
            file__sha256=file.sha256,
            status=EvaluationStatus.SUCCEEDED,
            selection_metric=context.task.selection_metric,
            handoff_threshold=threshold,
            outputs__isnull=False,
        )
        .order_by("-created_at")
        .first()
    )
    if earlier is not None:
        return earlier
    return evaluate_now(tenant=tenant, model_id=model_id, file_id=file_id, actor=actor)


def selection_metric(evaluation: Evaluation) -> tuple[str, bool]:
    """The pack's metric that decides between models, and whether greater is better."""
    return evaluation.selection_metric, evaluation.greater_is_better


def _new_evaluation(
    *,
    tenant: Tenant,
    model_id: str,
    file_id: str,
    actor: str,
    handoff_threshold: Any = None,
    queue: str = CPU_QUEUE,
    metadata: dict[str, str] | None = None,
    generate: bool = False,
    vertical: Any = None,
    task: Any = None,
) -> Evaluation:
    subject = _subject(tenant, model_id, vertical, task)
    file = _tenant_file(tenant, file_id)
    context, kind = subject.context, subject.kind
    fitted = fitted_threshold(subject.model) if subject.checkpoint is None else None
    threshold = _threshold(handoff_threshold, context, kind, fitted)
    if generate:
        _check_generation(file, subject)
    _check_file(file, context)
    checkpoint = subject.checkpoint
    with transaction.atomic():
        return Evaluation.objects.create(
            tenant=tenant,
            model=subject.model,
            base_model=subject.base_model,
            model_name=subject.name,
            checkpoint=checkpoint,
            checkpoint_step=checkpoint.step_number if checkpoint is not None else None,
            file=file,
            queue=queue,
            vertical=subject.vertical,
            task=subject.task,
            kind=kind.value,
            selection_metric=context.task.selection_metric,
            greater_is_better=context.task.greater_is_better,
            handoff_threshold=threshold,
            generate=generate,
            metadata=metadata or None,
            created_by=actor[:200],
        )


def _tenant_file(tenant: Tenant, file_id: str) -> File:
    file = File.objects.filter(tenant=tenant, pk=file_id, deleted_at__isnull=True).first()
    if file is None:
        raise NotFound(f"No file with id '{file_id}' found.", param="file", code="file_not_found")
    return file


@dataclass(frozen=True)
class Subject:
    """What an evaluation scores: a fine-tuned model, one of its job's checkpoints, or a base model
    (causal LMs only) for a pack's task."""

    name: str
    vertical: str
    task: str
    context: PackContext
    kind: TaskKind
    model: FineTunedModel | None = None
    checkpoint: JobCheckpoint | None = None
    base_model: BaseModel | None = None


def _subject(tenant: Tenant, name: str, vertical: Any, task: Any) -> Subject:
    """The fine-tuned model ``name`` names, or the model and checkpoint (``ft:...:ckpt-step-N`` or
    the checkpoint's id), or a base model with ``vertical``/``task``; 404 otherwise."""
    checkpoint = None
    if names_a_checkpoint(name):
        model, checkpoint = serving_selectors.tenant_checkpoint(tenant, name)
        name = served_checkpoint_name(model, checkpoint)
    else:
        try:
            model = serving_selectors.tenant_model(tenant, name)
        except NotFound:
            base = base_model_by_name(tenant, name)
            if base is None:
                raise
            return _base_model_subject(tenant, base, vertical, task)
    context = _model_context(model)
    return Subject(name, model.vertical, model.task, context, _scored_kind(model), model, checkpoint)


def _base_model_subject(tenant: Tenant, base: BaseModel, vertical: Any, task: Any) -> Subject:
    """A base model scored for a pack's causal-LM task by the token loss of the file's answers (a
    language model needs no trained head for that). A task with a head (labels, tags, a score) is
    refused: an untrained head's answers would mean nothing."""
    for value, param in ((vertical, "vertical"), (task, "task")):
        if not isinstance(value, str) or not value:
            raise InvalidRequest(
                f"'{base.name}' is a base model: name the pack's {param} it is evaluated for "
                "(a causal-LM task such as customer_service/reply).",
                param=param,
            )
    try:
        context = pack_context(tenant.pk, vertical, task)
    except PackError as exc:
        raise InvalidRequest(f"{exc}.", param="task", code="vertical_unavailable") from exc
    kind = context.task.kind
    if kind not in report.LOSS_KINDS:
        raise InvalidRequest(
            f"'{base.name}' is a base model and {vertical}/{task} is a {kind.value} task: a base model has no "
            "trained head for it (its labels, tags or scores would be those of random weights). Fine-tune it "
            "(POST /v1/fine_tuning/jobs; a job reports its linear probe, the frozen base model under a fitted "
            "head, as a floor) and evaluate the fine-tuned model.",
            param="model",
            code="evaluation_not_supported",
        )
    suitable = context.task.suitable_architectures
    if suitable and base.architecture and base.architecture not in suitable:
        raise InvalidRequest(
            f"'{base.name}' is a {base.architecture} model; {vertical}/{task} takes {', '.join(suitable)}.",
            param="model",
            code="evaluation_not_supported",
        )
    return Subject(base.name, vertical, task, context, kind, base_model=base)


def _model_context(model: FineTunedModel) -> PackContext:
    try:
        return pack_context(model.tenant_id, model.vertical, model.task)
    except PackError as exc:
        raise Conflict(
            f"The model '{model.id}' cannot be evaluated: {exc}.", param="model", code="vertical_unavailable"
        ) from exc


def _scored_kind(model: FineTunedModel) -> TaskKind:
    kind = TaskKind(serving_selectors.artifact_kind(model))
    if kind not in report.SCORED_KINDS and kind not in report.LOSS_KINDS:
        raise InvalidRequest(
            f"The model '{model.id}' is a {kind.value} model; evaluations score classification, "
            "multi-label, pair-regression, token-classification and causal-LM models.",
            param="model",
            code="evaluation_not_supported",
        )
    return kind


def fitted_threshold(model: FineTunedModel | None) -> float | None:
    """The hand-off threshold the engine chose on validation for ``model`` (its final metrics'
    ``handoff_threshold``), which serving applies when the tenant's setting is "auto"; None when
    it has none (a base model, a model trained before thresholds were fitted)."""
    value = (model.metrics or {}).get("handoff_threshold") if model is not None else None
    return float(value) if value is not None and _is_fraction(value) else None


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def _threshold(value: Any, context: PackContext, kind: TaskKind, fitted: float | None = None) -> float | None:
    """The request's hand-off threshold, else the tenant's pack setting, else (a setting of "auto"
    or none) the model's fitted one, as serving applies it, else the report's default (single-label
    classifiers only: the others hand nothing off)."""
    if value is None:
        configured = context.config.get("handoff_threshold")
        if _is_fraction(configured):
            value = configured
        elif fitted is not None:
            value = fitted
        else:
            value = report.DEFAULT_HANDOFF_THRESHOLD
    elif not _is_fraction(value):
        raise InvalidRequest("handoff_threshold must be a number from 0 to 1.", param="handoff_threshold")
    return float(value) if kind in report.SINGLE_LABEL else None


def _check_generation(file: File, subject: Subject) -> None:
    if subject.kind not in report.LOSS_KINDS or subject.model is None:
        what = "a base model" if subject.model is None else f"a {subject.kind.value} model"
        raise InvalidRequest(
            f"generate is for fine-tuned causal-LM models (served as they answer); '{subject.name}' is {what}.",
            param="generate",
            code="evaluation_not_supported",
        )
    limit = settings.TUNERY_EVALUATION_MAX_GENERATIONS
    if file.row_count > limit:
        raise InvalidRequest(
            f"File {file.id} has {file.row_count} rows; an evaluation generates answers for at most {limit} "
            "(TUNERY_EVALUATION_MAX_GENERATIONS); leave generate out to score every row by its token loss.",
            param="generate",
            code="file_too_large",
        )


def _check_file(file: File, context: PackContext) -> None:
    if file.purpose != File.Purpose.FINE_TUNE:
        raise InvalidRequest(
            f"File {file.id} has purpose '{file.purpose}'; an evaluation reads a labelled file uploaded "
            "with purpose 'fine-tune'.",
            param="file",
            code="invalid_file_purpose",
        )
    limit = settings.TUNERY_EVALUATION_MAX_ROWS
    if file.row_count > limit:
        raise InvalidRequest(
            f"File {file.id} has {file.row_count} rows; an evaluation scores at most {limit} "
            "(TUNERY_EVALUATION_MAX_ROWS).",
            param="file",
            code="file_too_large",
        )
    try:
        runner.labelled_rows(context.task, dict(context.config), file)
    except runner.EvaluationFailed as exc:
        raise InvalidRequest(exc.message, param="file", code=exc.code) from exc


# -- comparison -----------------------------------------------------------------------------------


def compare(a: Evaluation, b: Evaluation) -> dict[str, Any]:
    """Metric by metric, ``b - a`` on the rows both scored, with a paired bootstrap confidence
    interval (the same resampled rows for both). Both must have succeeded on the same file content
    for the same vertical and task."""
    for evaluation in (a, b):
        if evaluation.status != EvaluationStatus.SUCCEEDED:
            raise Conflict(
                f"Evaluation {evaluation.id} is {evaluation.status}; only succeeded evaluations can be compared.",
                param="with",
                code="evaluation_not_succeeded",
            )
    same_file = a.file_id == b.file_id or a.file.sha256 == b.file.sha256
    if not same_file:
        raise InvalidRequest(
            f"Evaluations {a.id} and {b.id} scored different files ({a.file_id}, {b.file_id}); "
            "a paired comparison needs the same rows.",
            param="with",
            code="different_files",
        )
    if (a.vertical, a.task) != (b.vertical, b.task):
        raise InvalidRequest(
            f"Evaluation {a.id} is for {a.vertical}/{a.task}, {b.id} for {b.vertical}/{b.task}.",
            param="with",
            code="different_tasks",
        )
    try:
        task = pack_context(a.tenant_id, a.vertical, a.task).task
    except PackError as exc:
        raise Conflict(str(exc), param="with", code="vertical_unavailable") from exc
    out_a, out_b = _paired_outputs(a, b)
    try:
        differences = report.paired_bootstrap(out_a, out_b, task.metrics)
    except report.ScoringError as exc:
        raise ApiError(str(exc), param="with", code="not_comparable") from exc
    return {
        "object": "evaluation.comparison",
        "a": a.id,
        "b": b.id,
        "model_a": a.evaluated_name,
        "model_b": b.evaluated_name,
        "file": a.file_id,
        "rows": report.row_count(out_a),
        "selection_metric": a.selection_metric,
        "greater_is_better": a.greater_is_better,
        "confidence": 0.95,
        "resamples": report.resamples_for(report.row_count(out_a), max(len(out_a.label_names), len(out_b.label_names))),
        "metrics": {name: difference.to_json() for name, difference in differences.items()},
    }


def _paired_outputs(a: Evaluation, b: Evaluation) -> tuple[Any, Any]:
    """Both evaluations' outputs on the rows both scored, in the same order."""
    outputs_a, outputs_b = a.outputs or {}, b.outputs or {}
    rows_a, rows_b = outputs_a.get("rows", []), outputs_b.get("rows", [])
    shared = sorted(set(rows_a) & set(rows_b))
    position_a = {row: i for i, row in enumerate(rows_a)}
    position_b = {row: i for i, row in enumerate(rows_b)}
    out_a = report.subset(report.from_json(outputs_a), [position_a[r] for r in shared])
    out_b = report.subset(report.from_json(outputs_b), [position_b[r] for r in shared])
    return out_a, out_b
