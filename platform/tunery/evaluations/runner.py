"""Scoring an evaluation: the file's rows, validated with the model's pack as a training file is,
go through the serving path (``serving.services.predict_many``, as batch lines do, so the model
answers exactly as it does for clients), then the pack's metrics and the report are computed.

The same code runs in a worker (``run_evaluation``, sent through tunery.evaluations.dispatch) and
in the caller's process (``services.evaluate_now``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunery.core.errors import ApiError
from tunery.evaluations import lifecycle, report
from tunery.evaluations.models import Evaluation, EvaluationStatus
from tunery.files.models import File
from tunery.jobs.lifecycle import new_lease_owner
from tunery.serving import conf, inputs
from tunery.serving import selectors as serving_selectors
from tunery.serving import services as serving
from tunery.verticals.registry import pack_context
from tunery_contract import TaskDefinition, TaskKind
from tunery_contract.records import RecordFormatError, iter_records
from tunery_contract.types import PackError

log = logging.getLogger(__name__)

#: Row errors kept on an evaluation (the count says how many more).
MAX_ROW_ERRORS = 50


class EvaluationFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def run_evaluation(evaluation_id: str) -> str:
    """Claim ``evaluation_id`` and score it; its final status ("" if another worker has it)."""
    owner = new_lease_owner()
    evaluation = lifecycle.claim(evaluation_id, owner)
    if evaluation is None:
        return ""
    return run_claimed(evaluation, owner)


def run_claimed(evaluation: Evaluation, owner: str) -> str:
    try:
        results = score(evaluation)
    except EvaluationFailed as exc:
        lifecycle.fail(evaluation.id, owner, exc.code, exc.message)
        return EvaluationStatus.FAILED
    except Exception as exc:  # a bug or a broken runtime: the evaluation says so, the worker goes on
        log.exception("evaluation %s failed", evaluation.id)
        lifecycle.fail(evaluation.id, owner, "server_error", f"{type(exc).__name__}: {exc}")
        return EvaluationStatus.FAILED
    try:
        lifecycle.succeed(evaluation.id, owner, **results)
    except lifecycle.LeaseLost:
        log.warning("evaluation %s: lease lost by %s, leaving it to its new owner", evaluation.id, owner)
        return ""
    return EvaluationStatus.SUCCEEDED


@dataclass
class LabelledRows:
    """A file's rows as prediction inputs, with their truths (and groups for ranking metrics)."""

    items: list[dict[str, Any]] = field(default_factory=list)
    truths: list[Any] = field(default_factory=list)
    groups: list[str] | None = None


def labelled_rows(task: TaskDefinition, config: dict[str, Any], file: File) -> LabelledRows:
    """Validate ``file`` against ``task`` (the pack's schema, labels and aliases, as for training)
    and split each row into the prediction input and its truth. Raises EvaluationFailed."""
    try:
        with file.content.open("rb") as stream:
            checked = task.validate(iter_records(stream, file.format), config)
    except RecordFormatError as exc:
        raise EvaluationFailed("invalid_file", f"file {file.pk}: {exc}") from exc
    except FileNotFoundError as exc:
        raise EvaluationFailed("file_unreadable", f"file {file.pk}: the file's content is missing") from exc
    if checked.row_count == 0 and not checked.errors:
        raise EvaluationFailed("empty_file", f"file {file.pk} holds no data rows.")
    if not checked.ok:
        raise EvaluationFailed(
            "invalid_evaluation_file",
            f"file {file.pk} does not fit task '{task.id}': {checked.summary()}",
        )
    group = task.schema.column_for("group")
    rows = LabelledRows(groups=[] if group is not None else None)
    if task.kind is TaskKind.TOKEN_CLASSIFICATION:  # pre-split words in, one tag per word
        words, tags = task.role_column("tokens"), task.role_column("tags")
        for row in checked.rows:
            rows.items.append({inputs.TOKENS: [str(w) for w in row[words]]})
            rows.truths.append([str(t) for t in row[tags]])
        return rows
    if task.kind is TaskKind.CAUSAL_LM:  # the conversation in; its reference answers are scored by loss
        column = task.role_column("messages")
        for row in checked.rows:
            rows.items.append({column: row[column]})
            rows.truths.append([m for m in row[column] if m.get("role") == "assistant"])
        return rows
    label = task.role_column("label")
    for row in checked.rows:
        rows.items.append(
            {
                k: v
                for k, v in row.items()
                if k != label and (v is None or isinstance(v, (str, int, float, bool))) and v != ""
            }
        )
        rows.truths.append(row[label])
        if rows.groups is not None and group is not None:
            rows.groups.append(str(row.get(group.name, "")))
    return rows


def score(evaluation: Evaluation) -> dict[str, Any]:
    """The fields a succeeded evaluation gets: metrics, report, outputs, rows_scored, row_errors."""
    model = evaluation.model
    if model is not None and model.deleted_at is not None:
        raise EvaluationFailed("model_not_found", f"The model '{model.id}' was deleted.")
    if evaluation.file.deleted_at is not None:
        raise EvaluationFailed("file_not_found", f"The file '{evaluation.file_id}' was deleted.")
    try:
        context = pack_context(evaluation.tenant_id, evaluation.vertical, evaluation.task)
    except PackError as exc:
        raise EvaluationFailed("vertical_unavailable", str(exc)) from exc
    rows = labelled_rows(context.task, dict(context.config), evaluation.file)
    kind = TaskKind(evaluation.kind)
    if kind in report.LOSS_KINDS:
        return _score_losses(evaluation, context.task, rows)
    answers, errors = predictions(evaluation, rows.items)
    scored = [i for i, answer in enumerate(answers) if answer is not None]
    if not scored:
        first = errors[0]["message"] if errors else "no answer"
        raise EvaluationFailed("no_row_scored", f"No row of file {evaluation.file_id} could be scored: {first}")
    try:
        out = report.eval_output(
            kind,
            [rows.truths[i] for i in scored],
            [answers[i] for i in scored],  # type: ignore[misc]
            [rows.groups[i] for i in scored] if rows.groups is not None else None,
        )
    except (KeyError, TypeError, report.ScoringError) as exc:
        raise EvaluationFailed("unexpected_answer", f"The model's answers cannot be scored: {exc}") from exc
    outputs = report.to_json(out)
    outputs["rows"] = scored
    words = [rows.items[i].get(inputs.TOKENS) or [] for i in scored] if kind is TaskKind.TOKEN_CLASSIFICATION else None
    built = report.build_report(
        out,
        evaluation.handoff_threshold,
        words=words,
        row_numbers=[i + 1 for i in scored],
        out_of_scope_label=_out_of_scope_label(evaluation),
    )
    return {
        "metrics": {
            **report.finite_metrics(context.task.metrics(out)),
            **report.out_of_scope_metrics(built.get("out_of_scope")),
        },
        "report": built,
        "outputs": outputs,
        "rows_scored": len(scored),
        "row_errors": errors[:MAX_ROW_ERRORS],
    }


def _out_of_scope_label(evaluation: Evaluation) -> str | None:
    """The fine-tuned model's out-of-scope label (its job's resolved ``out_of_scope_label``)."""
    model = evaluation.model
    if model is None:
        return None
    label = (model.source_job.resolved_config or {}).get("out_of_scope_label")
    return label if isinstance(label, str) and label != "auto" else None


def _score_losses(evaluation: Evaluation, task: TaskDefinition, rows: LabelledRows) -> dict[str, Any]:
    """A causal LM scored by teacher forcing: the mean token loss of the file's reference answers
    (its assistant turns) given their conversations, and perplexity; no generation."""
    column = task.role_column("messages")
    losses = language_model_losses(evaluation, task, [item[column] for item in rows.items])
    scored = [i for i, loss in enumerate(losses) if loss is not None]
    errors = [
        {
            "row": i + 1,
            "code": "no_answer_tokens",
            "message": f"row {i + 1}: no assistant token within the model's max_length",
        }
        for i, loss in enumerate(losses)
        if loss is None
    ]
    if not scored:
        raise EvaluationFailed(
            "no_row_scored", f"No row of file {evaluation.file_id} could be scored: {errors[0]['message']}"
        )
    prompts: list[str] = []
    generated: list[str] = []
    if evaluation.generate:
        conversations = [rows.items[i][column] for i in scored]
        prompts = [_last_turn(c[: _last_answer(c)], "user") for c in conversations]
        generated = generations(evaluation, [c[: _last_answer(c)] for c in conversations])
    out = report.language_model_output([losses[i] for i in scored], prompts, generated)  # type: ignore[misc]
    outputs = report.to_json(out)
    outputs["rows"] = scored
    return {
        "metrics": report.finite_metrics(task.metrics(out)),
        "report": report.build_report(out, None, row_numbers=[i + 1 for i in scored]),
        "outputs": outputs,
        "rows_scored": len(scored),
        "row_errors": errors[:MAX_ROW_ERRORS],
    }


def _last_answer(conversation: list[dict[str, Any]]) -> int:
    """Index of the conversation's last assistant turn (what a generation answers)."""
    return max(i for i, message in enumerate(conversation) if message.get("role") == "assistant")


def _last_turn(conversation: list[dict[str, Any]], role: str) -> str:
    return next((str(m.get("content", "")) for m in reversed(conversation) if m.get("role") == role), "")


def generations(evaluation: Evaluation, prompts: list[list[dict[str, Any]]]) -> list[str]:
    """Greedy answers to ``prompts`` (conversations ending before the answer) through the serving
    path, one request each, at the serving default length."""
    requests = [
        inputs.prediction_request({"model": evaluation.evaluated_name, "inputs": [{"messages": p}], "temperature": 0})
        for p in prompts
    ]
    answers = _predict(evaluation, requests)
    texts = []
    for number, answer in enumerate(answers, start=1):
        if isinstance(answer, ApiError):
            raise EvaluationFailed(answer.code or "generation_failed", f"generating row {number}: {answer.message}")
        texts.append(str(answer["data"][0].get("text") or ""))
    return texts


def language_model_losses(
    evaluation: Evaluation, task: TaskDefinition, conversations: list[Any]
) -> list[tuple[float, int] | None]:
    """Each conversation's summed answer-token loss and token count under the evaluated model (or
    checkpoint, loaded from the files serving loads; or base model, at the task's default
    max_length); None for a row with no answer token in reach."""
    import torch

    from tunery_engine import modeling
    from tunery_engine.artifact import load_artifact
    from tunery_engine.errors import ArtifactError
    from tunery_engine.heads.causal_lm import conversation_losses

    if evaluation.base_model is not None:
        from tunery.core.artifacts import StorageError
        from tunery.jobs.runner import SpecError, resolve_base_model_path
        from tunery_contract.vocabulary import EngineError

        try:
            path = Path(resolve_base_model_path(evaluation.base_model))
            model = modeling.load_pretrained("AutoModelForCausalLM", path, dtype=torch.float32)
            tokenizer = modeling.load_tokenizer(path)
        except (EngineError, SpecError, StorageError) as exc:
            raise EvaluationFailed("model_unavailable", f"The base model could not be loaded: {exc}") from exc
        max_length = task.default_hyperparameters.get("max_length")
        model.eval()
        return conversation_losses(model, tokenizer, conversations, max_length if isinstance(max_length, int) else 512)
    try:
        target = serving_selectors.serving_target(evaluation.tenant, evaluation.evaluated_name, deployed_only=False)
    except ApiError as exc:
        raise EvaluationFailed(exc.code or "model_unavailable", exc.message) from exc
    try:
        loaded, tokenizer, info = load_artifact(target.path)
    except ArtifactError as exc:
        raise EvaluationFailed("model_unavailable", f"The model could not be loaded: {exc}") from exc
    return conversation_losses(loaded, tokenizer, conversations, info.max_length)


def predictions(
    evaluation: Evaluation, items: list[dict[str, Any]]
) -> tuple[list[dict[str, Any] | None], list[dict[str, Any]]]:
    """Each row's decoded answer (None where the row alone was refused) and the row errors. Rows go
    in requests of the serving limit; a refused request is asked again row by row, so one bad
    row (a text over the length limit) does not cost its neighbours their answers."""
    limit = conf.max_items()
    chunks = [list(range(start, min(start + limit, len(items)))) for start in range(0, len(items), limit)]
    answers: list[dict[str, Any] | None] = [None] * len(items)
    errors: list[dict[str, Any]] = []
    retry: list[int] = []
    requests, asked = [], []
    for chunk in chunks:
        try:
            requests.append(_request(evaluation.evaluated_name, [items[i] for i in chunk]))
            asked.append(chunk)
        except ApiError:
            retry.extend(chunk)
    for chunk, answer in zip(asked, _predict(evaluation, requests)):
        if isinstance(answer, ApiError):
            retry.extend(chunk)
        else:
            for i, entry in zip(chunk, answer["data"]):
                answers[i] = entry
    for i in sorted(retry):
        try:
            (answer,) = _predict(evaluation, [_request(evaluation.evaluated_name, [items[i]])])
        except ApiError as exc:
            answer = exc
        if isinstance(answer, ApiError):
            errors.append({"row": i + 1, "code": answer.code, "message": f"row {i + 1}: {answer.message}"})
        else:
            answers[i] = answer["data"][0]
    return answers, errors


def _request(model_id: str, rows: list[dict[str, Any]]) -> inputs.PredictionRequest:
    return inputs.prediction_request({"model": model_id, "inputs": rows})


def _predict(evaluation: Evaluation, requests: list[inputs.PredictionRequest]) -> list[dict[str, Any] | ApiError]:
    """Answers of ``requests``; an error that is the model's, not the rows' (it cannot be loaded,
    its pack is gone), ends the evaluation."""
    answers = serving.predict_many(tenant=evaluation.tenant, requests=requests, deployed_only=False)
    for answer in answers:
        if isinstance(answer, ApiError) and not str(answer.param or "").startswith("inputs"):
            raise EvaluationFailed(answer.code or "model_unavailable", answer.message)
    return answers
