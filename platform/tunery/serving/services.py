"""Writes and calls for serving: deploying, undeploying, predicting and generating."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from django.db import transaction
from django.utils import timezone

from tunery.catalog.models import FineTunedModel
from tunery.core.errors import ApiError, Conflict, InvalidRequest, NotFound, QuotaExceeded
from tunery.core.ids import prefixed_id
from tunery.feedback import prediction_log
from tunery.files.models import File
from tunery.jobs import lifecycle
from tunery.jobs.models import JobCheckpoint
from tunery.jobs.selectors import fine_tuned_models, job_checkpoint, names_a_checkpoint
from tunery.monitoring import prometheus
from tunery.serving import conf, inputs, promotion, routing, selectors, traffic
from tunery.serving.models import Deployment
from tunery.serving.process_runtime import artifact_dir, get_runtime
from tunery.tenants.models import Tenant
from tunery.tenants.services import audit
from tunery_contract import Prediction, TaskKind

if TYPE_CHECKING:  # torch loads with the runtime, on first use
    from tunery_serving import TaskHead

log = logging.getLogger(__name__)

#: Generations one prediction request may ask for (each is a full decode, run one after another).
MAX_GENERATIONS_PER_REQUEST = 8


class ModelUnavailable(ApiError):
    status_code = 503

    def __init__(self, message: str):
        super().__init__(message, code="model_unavailable")


# -- deployments -------------------------------------------------------------------------------


def deploy(*, tenant: Tenant, model_id: str, actor: str, precision: str | None = None) -> tuple[Deployment, bool]:
    """Deploy a tenant's fine-tuned model: check the quota, load the artifact in this process,
    record the outcome. Returns (deployment, created); deploying a ready model again is a no-op,
    unless it names another ``precision`` ("fp32"/"int8"/"bf16", "" for the server's default; None keeps
    the deployment's), which is then recorded and loaded.
    The load runs outside any transaction (it may take seconds; SQLite would hold its write lock).
    ``model_id`` may also name a job's early linear probe by its checkpoint (``ft:...:ckpt-step-0``),
    whatever the job's status: the first deploy enters it in the catalogue under that name."""
    model = deployable_model(tenant, model_id)
    existing = Deployment.objects.filter(model=model).first()
    if precision is None:
        precision = existing.precision if existing is not None else ""
    if _unchanged(existing, precision):
        return existing, False  # type: ignore[return-value]  # _unchanged checked it is there
    if existing is None or existing.status != Deployment.Status.READY:
        _check_quota(tenant)
    status, error, kind = _load(model.id, model, precision)
    with transaction.atomic():
        Tenant.objects.select_for_update().filter(pk=tenant.pk).first()  # serializes a tenant's deploys
        existing = Deployment.objects.filter(model=model).first()
        if _unchanged(existing, precision):
            return existing, False  # type: ignore[return-value]
        was_ready = existing is not None and existing.status == Deployment.Status.READY
        if status == Deployment.Status.READY and not was_ready:
            _check_quota(tenant)  # again, under the lock: a concurrent deploy may have taken the last slot
        deployment, created = Deployment.objects.update_or_create(
            model=model,
            defaults={
                "tenant": tenant,
                "status": status,
                "error": error,
                "kind": kind,
                "precision": precision,
                "created_by": actor[:200],
            },
        )
        if created:
            promotion.first_champion(deployment, actor)
        audit(
            actor=actor,
            action="deployment.create",
            tenant=tenant,
            target=deployment.id,
            model=model.id,
            status=status,
            precision=precision or conf.serving_precision(),
        )
    return deployment, created


def deployable_model(tenant: Tenant, model_id: str) -> FineTunedModel:
    """The tenant's fine-tuned model ``model_id``, or the early probe its checkpoint name names (its
    catalogue entry, written on first use). Any other checkpoint is a 400: a training checkpoint is
    neither calibrated nor checked against the probe's floor; another tenant's, or none, a 404."""
    if not names_a_checkpoint(model_id) or fine_tuned_models(tenant).filter(pk=model_id).exists():
        return selectors.tenant_model(tenant, model_id)
    checkpoint = job_checkpoint(tenant, model_id)
    if checkpoint is None:
        raise NotFound(
            f"The checkpoint '{model_id}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    if checkpoint.kind != JobCheckpoint.Kind.LINEAR_PROBE:
        raise InvalidRequest(
            f"The checkpoint '{model_id}' cannot be deployed: a training checkpoint is neither calibrated nor "
            "checked against the linear-probe floor. Deploy the job's linear-probe checkpoint (step 0, kind "
            "linear_probe in GET /v1/fine_tuning/jobs/{id}/checkpoints) while the job runs, or its model once it "
            "has succeeded.",
            param="model",
            code="checkpoint_not_deployable",
        )
    return lifecycle.probe_model(checkpoint)


def _unchanged(existing: Deployment | None, precision: str) -> bool:
    return existing is not None and existing.status == Deployment.Status.READY and existing.precision == precision


def _check_quota(tenant: Tenant) -> None:
    if selectors.ready_deployment_count(tenant) >= tenant.max_deployments:
        raise QuotaExceeded(
            f"Your organisation may have {tenant.max_deployments} models deployed at once; "
            "undeploy one first (DELETE /v1/deployments/{id}).",
            param="model",
            code="deployment_quota_exceeded",
        )


def _load(model_id: str, model: Any, precision: str) -> tuple[str, str, str]:
    from tunery_serving import ArtifactError

    try:
        loaded = get_runtime().load(model_id, artifact_dir(model), precision or None)
    except ArtifactError as exc:
        return Deployment.Status.FAILED, str(exc), ""
    except Exception as exc:  # an unexpected loader failure is the deployment's state, not a 500
        log.exception("deploying %s failed", model_id)
        return Deployment.Status.FAILED, f"{type(exc).__name__}: {exc}", ""
    return Deployment.Status.READY, "", loaded.kind.value


def undeploy(*, deployment: Deployment, actor: str) -> None:
    model_id, deployment_id = deployment.model_id, deployment.id  # delete() clears the pk
    challenger_id = deployment.challenger_id
    with transaction.atomic():
        deployment.delete()
        audit(actor=actor, action="deployment.delete", tenant=deployment.tenant, target=deployment_id, model=model_id)
    get_runtime().unload(model_id)
    if challenger_id is not None:
        get_runtime().unload(challenger_id)
    traffic.forget(deployment_id)


def change(*, tenant: Tenant, deployment: Deployment, changes: inputs.DeploymentChanges, actor: str) -> Deployment:
    """Apply a create or PATCH body's settings: the stable name, the gate's pinned file and margin,
    and the challenger (loaded here before it is recorded, so a broken artifact is refused)."""
    _change_settings(tenant, deployment, changes, actor)
    if changes.touches_challenger:
        _change_challenger(tenant, deployment, changes, actor)
    deployment.refresh_from_db()
    return deployment


def _change_settings(tenant: Tenant, deployment: Deployment, changes: inputs.DeploymentChanges, actor: str) -> None:
    updates: dict[str, Any] = {}
    if not isinstance(changes.name, inputs.Unset):
        updates["name"] = changes.name
    if not isinstance(changes.evaluation_file, inputs.Unset):
        updates["evaluation_file"] = _evaluation_file(tenant, changes.evaluation_file)
    if not isinstance(changes.gate_margin, inputs.Unset):
        updates["gate_margin"] = changes.gate_margin
    if not updates:
        return
    with transaction.atomic():
        name = updates.get("name")
        if name and Deployment.objects.filter(tenant=tenant, name=name).exclude(pk=deployment.pk).exists():
            raise Conflict(
                f"Another of your deployments is named '{name}'.", param="name", code="deployment_name_taken"
            )
        Deployment.objects.filter(pk=deployment.pk).update(**updates, updated_at=timezone.now())
        shown = {k: (v.pk if isinstance(v, File) else v) for k, v in updates.items()}
        audit(actor=actor, action="deployment.settings", tenant=tenant, target=deployment.id, **shown)


def _evaluation_file(tenant: Tenant, file_id: str | None) -> File | None:
    if file_id is None:
        return None
    found = File.objects.filter(tenant=tenant, pk=file_id, deleted_at__isnull=True).first()
    if found is None:
        raise InvalidRequest(f"No file with id '{file_id}' found.", param="evaluation_file", code="file_not_found")
    if found.purpose != File.Purpose.FINE_TUNE:
        raise InvalidRequest(
            f"File {file_id} has purpose '{found.purpose}'; the gate evaluates a labelled file uploaded with "
            "purpose 'fine-tune' in the model's task schema.",
            param="evaluation_file",
            code="invalid_file_purpose",
        )
    return found


def _change_challenger(tenant: Tenant, deployment: Deployment, changes: inputs.DeploymentChanges, actor: str) -> None:
    challenger_id = deployment.challenger_id if isinstance(changes.challenger, inputs.Unset) else changes.challenger
    mode = deployment.mode if isinstance(changes.mode, inputs.Unset) else changes.mode
    share = deployment.canary_share if isinstance(changes.canary_share, inputs.Unset) else changes.canary_share
    if challenger_id is None and isinstance(changes.challenger, inputs.Unset):
        raise InvalidRequest(
            "The deployment has no challenger; pass challenger (a fine-tuned model id) with mode and canary_share.",
            param="challenger",
            code="missing_challenger",
        )
    if challenger_id is None:
        promotion.set_challenger(
            tenant=tenant, deployment_id=deployment.id, challenger=None, mode="", canary_share=share, actor=actor
        )
        return
    if not mode:
        raise InvalidRequest("A challenger needs a mode: 'shadow' or 'canary'.", param="mode", code="missing_mode")
    challenger = _challenger_model(tenant, deployment, challenger_id)
    if challenger.pk != deployment.challenger_id:
        _check_quota(tenant)
        status, error, kind = _load(challenger.pk, challenger, deployment.precision)
        if status != Deployment.Status.READY:
            raise Conflict(f"The challenger could not be loaded: {error}", param="challenger", code="model_unavailable")
        if kind != deployment.kind:
            raise Conflict(
                f"The challenger is a {kind} model; the deployment serves {deployment.kind} models.",
                param="challenger",
                code="challenger_mismatch",
            )
    promotion.set_challenger(
        tenant=tenant, deployment_id=deployment.id, challenger=challenger, mode=mode, canary_share=share, actor=actor
    )


def _challenger_model(tenant: Tenant, deployment: Deployment, model_id: str) -> Any:
    challenger = selectors.tenant_model(tenant, model_id)
    champion = deployment.model
    if (challenger.vertical, challenger.task) != (champion.vertical, champion.task):
        raise Conflict(
            f"The challenger was trained for {challenger.vertical or '-'}/{challenger.task or '-'}; the champion for "
            f"{champion.vertical or '-'}/{champion.task or '-'}. Only models of one task can replace each other.",
            param="challenger",
            code="challenger_mismatch",
        )
    promotion.refuse_champion_elsewhere(deployment, challenger)
    return challenger


def remove_challenger(*, deployment: Deployment, actor: str) -> None:
    """Take the deployment's challenger away (e.g. the challenger model is being deleted)."""
    promotion.set_challenger(
        tenant=deployment.tenant,
        deployment_id=deployment.id,
        challenger=None,
        mode="",
        canary_share=deployment.canary_share,
        actor=actor,
    )


def precheck(*, tenant: Tenant, changes: inputs.DeploymentChanges) -> None:
    """Refuse a create body's unknown challenger or file before anything is deployed."""
    if isinstance(changes.challenger, str):
        selectors.tenant_model(tenant, changes.challenger)
    if isinstance(changes.evaluation_file, str):
        _evaluation_file(tenant, changes.evaluation_file)


def rollback(*, tenant: Tenant, deployment: Deployment, actor: str) -> Deployment:
    return promotion.rollback(tenant=tenant, deployment_id=deployment.id, actor=actor)


# -- predictions -------------------------------------------------------------------------------


def predict(*, tenant: Tenant, request: inputs.PredictionRequest, deployed_only: bool = True) -> dict[str, Any]:
    """One prediction request's answer. ``deployed_only=False`` (offline scoring: evaluations)
    also answers for a model that is not deployed, at the server's default precision, and is
    neither counted as the deployment's traffic nor logged."""
    answer, target, hooks, seen = _predict(tenant, request, deployed_only)
    _log(tenant, target, hooks, answer, seen)
    return answer


def _log(
    tenant: Tenant,
    target: selectors.ServingTarget,
    hooks: selectors.PackHooks,
    answer: dict[str, Any],
    seen: list[dict[str, Any]],
) -> None:
    """Leave each answered item in the prediction log (for feedback and monitoring); offline
    scoring of an undeployed model is not live traffic and is not logged."""
    if target.deployment is None:
        return
    prediction_log.record(
        tenant=tenant,
        request_id=answer["id"],
        endpoint=str(answer.get("object", "prediction")),
        model_id=target.model.id,
        deployment_id=target.deployment.id,
        kind=target.kind,
        items=[prediction_log.AnsweredItem(item, entry) for item, entry in zip(seen, answer["data"])],
        screen=prediction_log.input_screen(hooks.pack, hooks.task, hooks.config),
    )


def _hooks(tenant: Tenant, chosen: routing.Route) -> selectors.PackHooks:
    """The pack's hooks for the model that answers; a deployment's champion's come from the
    lookup cache (no query on a warm request)."""
    if chosen.role == routing.CHAMPION and chosen.target.deployment is not None:
        return selectors.cached_serving_route(tenant, chosen.target.model.id)[1]
    return selectors.pack_hooks(tenant, chosen.target.model)


def _predict(
    tenant: Tenant, request: inputs.PredictionRequest, deployed_only: bool = True
) -> tuple[dict[str, Any], selectors.ServingTarget, selectors.PackHooks, list[dict[str, Any]]]:
    """The answer, with what each of its items saw (in the order of its ``data``), unlogged."""
    chosen = routing.route(tenant, request.model, deployed_only=deployed_only)
    target = chosen.target
    hooks = _hooks(tenant, chosen)
    head = head_of(target)
    if head.generates_text:
        generated, seen = _predict_generations(target, hooks, request)
        return generated, target, hooks, seen
    text_column = _column(hooks, "text")
    pair_column = _column(hooks, "text_pair")
    if request.items is not None:
        if not head.takes_pairs:
            raise InvalidRequest(
                f"A ranking call (user + items) needs a text-pair model; '{request.model}' is {target.kind}.",
                param="items",
                code="not_a_ranking_model",
            )
        rows = [
            {  # the item's own fields, then the pair the model scores (the query always wins)
                **item,
                text_column: request.query,
                pair_column: _field(item, (pair_column, "text", "item"), f"items[{i}]"),
            }
            for i, item in enumerate(request.items)
        ]
    else:
        rows = request.inputs or []
    from tunery_serving import PredictionInput

    model_inputs = []
    for i, row in enumerate(rows):
        words = row.get(inputs.TOKENS)
        if isinstance(words, list):
            model_inputs.append(_pre_split(target, row, words, (text_column, "text"), f"inputs[{i}]"))
            continue
        model_inputs.append(
            PredictionInput(
                text=_field(row, (text_column, "text"), f"inputs[{i}]"),
                text_pair=_field(row, (pair_column, "text_pair"), f"inputs[{i}]") if head.takes_pairs else None,
            )
        )
    started = time.perf_counter()
    precision = (target.deployment.precision if target.deployment is not None else "") or None
    predictions = _run(lambda: get_runtime().predict(target.runtime_key, target.path, model_inputs, precision))
    elapsed = time.perf_counter() - started
    prometheus.PREDICTION_LATENCY.labels(target.kind).observe(elapsed)
    data = _entries(predictions, rows, hooks)

    def shadow_answer(challenger: Any) -> list[dict[str, Any]]:
        shadowed = get_runtime().predict(challenger.id, artifact_dir(challenger), model_inputs, precision)
        return _entries(shadowed, rows, hooks)

    if deployed_only:
        routing.answered(chosen, data, elapsed, shadow_answer)
    seen = [
        {"text": item.text, **({"text_pair": item.text_pair} if item.text_pair is not None else {})}
        for item in model_inputs
    ]
    if request.items is not None:
        for entry, item in zip(data, request.items):
            entry.setdefault("item", item)
        order = sorted(range(len(data)), key=lambda i: data[i].get("score", 0.0), reverse=True)
        data, seen = [data[i] for i in order], [seen[i] for i in order]
        for rank, entry in enumerate(data, start=1):
            entry["rank"] = rank
    answer = {
        "id": prefixed_id("pred"),
        "object": "prediction",
        "created": int(time.time()),
        "model": target.runtime_key,
        "deployment": target.deployment.id if target.deployment is not None else None,
        "served_by": chosen.role,
        "kind": target.kind,
        "data": data,
        "usage": {"items": len(data)},
    }
    return answer, target, hooks, seen


def _entries(
    predictions: Iterable[Prediction], rows: list[dict[str, Any]], hooks: selectors.PackHooks
) -> list[dict[str, Any]]:
    """Each prediction in API form, with the pack's post-processing of its input row."""
    data = []
    for index, (prediction, row) in enumerate(zip(predictions, rows)):
        result = {"index": index, **decoded(prediction)}
        if hooks.task is not None and hooks.task.postprocess is not None:
            result.update(hooks.task.postprocess(prediction, row, hooks.config))
        data.append(result)
    return data


def predict_many(
    *, tenant: Tenant, requests: list[inputs.PredictionRequest], deployed_only: bool = True
) -> list[dict[str, Any] | ApiError]:
    """Each request's answer (or the error it alone would get), as :func:`predict` gives it. Requests
    for one encoder model that differ only in their ``inputs`` are scored in runtime calls of up to
    ``max_items`` rows, so the runtime batches them (batch scoring: one request per input line)."""
    answers: list[dict[str, Any] | ApiError | None] = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        if request.inputs is not None and request.items is None:
            rest = {k: v for k, v in (request.body or {}).items() if k != "inputs"}
            groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(index)
    limit = conf.max_items()
    for members in groups.values():
        for start in range(0, len(members), limit):
            _predict_merged(tenant, requests, members[start : start + limit], answers, limit, deployed_only)
    for index, request in enumerate(requests):
        if answers[index] is None:
            try:
                answers[index] = predict(tenant=tenant, request=request, deployed_only=deployed_only)
            except ApiError as exc:
                answers[index] = exc
    return cast("list[dict[str, Any] | ApiError]", answers)


def _predict_merged(
    tenant: Tenant,
    requests: list[inputs.PredictionRequest],
    members: list[int],
    answers: list[dict[str, Any] | ApiError | None],
    limit: int,
    deployed_only: bool = True,
) -> None:
    """Score ``members`` (same model and settings) in one call of at most ``limit`` rows; leave
    them unanswered (answered one by one) where merging would not be the same as asking alone."""
    rows = [row for index in members for row in requests[index].inputs or []]
    first = requests[members[0]]
    try:
        if (
            len(members) < 2
            or len(rows) > limit
            or head_of(routing.route(tenant, first.model, deployed_only=deployed_only).target).generates_text
        ):
            return
        merged, target, hooks, seen = _predict(
            tenant, inputs.PredictionRequest(first.model, inputs=rows, body=first.body), deployed_only
        )
    except ApiError:
        return  # one member's fault: the others must not share it
    offset = 0
    for index in members:
        count = len(requests[index].inputs or [])
        data = [{**entry, "index": entry["index"] - offset} for entry in merged["data"][offset : offset + count]]
        answers[index] = answer = {**merged, "id": prefixed_id("pred"), "data": data, "usage": {"items": count}}
        _log(tenant, target, hooks, answer, seen[offset : offset + count])
        offset += count


def _predict_generations(
    target: selectors.ServingTarget, hooks: selectors.PackHooks, request: inputs.PredictionRequest
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A causal LM behind /v1/predictions: each input (a text for the user turn, {"messages"} or
    {"prompt"}) is generated, decoded into a Prediction and given to the pack's post-processing
    (the customer-service reply and hand-off, the medical summary's PHI screening, ...)."""
    from tunery_serving import GenerationRequest

    if request.inputs is None:
        raise InvalidRequest("A language model takes inputs, not a ranking call.", param="items", code="wrong_endpoint")
    if len(request.inputs) > MAX_GENERATIONS_PER_REQUEST:
        raise InvalidRequest(
            f"inputs has {len(request.inputs)} items; a language model takes at most "
            f"{MAX_GENERATIONS_PER_REQUEST} per request.",
            param="inputs",
            code="too_many_items",
        )
    params = inputs.generation_parameters({**(request.body or {}), "stream": False})
    data, seen, prompt_tokens, completion_tokens = [], [], 0, 0
    started = time.perf_counter()
    for index, row in enumerate(request.inputs):
        messages = row.get("messages")
        prompt = row.get("prompt") if messages is None else None
        if messages is None and prompt is None:
            messages = [{"role": "user", "content": _field(row, ("text",), f"inputs[{index}]")}]
        generation = GenerationRequest(
            messages=tuple(messages) if messages is not None else None,
            prompt=prompt,
            max_new_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=params.stop,
            seed=params.seed,
        )
        result = _run(lambda g=generation: get_runtime().generate(target.runtime_key, target.path, g))
        prompt_tokens += result.prompt_tokens
        completion_tokens += result.completion_tokens
        seen.append({"messages": list(messages)} if messages is not None else {"prompt": prompt})
        prediction = Prediction(kind=TaskKind.CAUSAL_LM, text=result.text)
        entry = {"index": index, **decoded(prediction), "finish_reason": result.finish_reason}
        if hooks.task is not None and hooks.task.postprocess is not None:
            entry.update(hooks.task.postprocess(prediction, row, hooks.config))
        data.append(entry)
    prometheus.PREDICTION_LATENCY.labels(target.kind).observe(time.perf_counter() - started)
    prometheus.GENERATED_TOKENS.inc(completion_tokens)
    answer = {
        "id": prefixed_id("pred"),
        "object": "prediction",
        "created": int(time.time()),
        "model": target.runtime_key,
        "kind": target.kind,
        "data": data,
        "usage": {"items": len(data), "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }
    return answer, seen


def head_of(target: selectors.ServingTarget) -> type[TaskHead]:
    """The task head of the served model's kind: what inputs it takes and how it answers."""
    from tunery_serving import head_type

    return head_type(TaskKind(target.kind))


def _column(hooks: selectors.PackHooks, role: str) -> str:
    if hooks.task is not None:
        column = hooks.task.schema.column_for(role)
        if column is not None:
            return column.name
    return role


def _pre_split(
    target: selectors.ServingTarget, row: dict[str, Any], words: list[str], text_names: tuple[str, ...], param: str
) -> Any:
    """A token classifier's input given as words (the training rows' shape): tags come one per word."""
    from tunery_serving import PredictionInput

    if target.kind != TaskKind.TOKEN_CLASSIFICATION.value:
        raise InvalidRequest(
            f"{param}: a list of words is input for token-classification models; '{target.model.id}' is "
            f"{target.kind} and takes text.",
            param=f"{param}.tokens",
            code="tokens_not_supported",
        )
    if any(isinstance(row.get(name), str) and row[name].strip() for name in text_names):
        raise InvalidRequest(
            f"{param}: give either the text or its words (tokens), not both.", param=param, code="invalid_value"
        )
    return PredictionInput.from_tokens(words)


def _field(row: dict[str, Any], names: tuple[str, ...], param: str) -> str:
    for name in names:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value
    raise InvalidRequest(f"{param} needs a non-empty string field '{names[0]}'.", param=param, code="missing_field")


def decoded(prediction: Prediction) -> dict[str, Any]:
    """The runtime's decoding in API form, before (and beneath) a pack's post-processing."""
    if prediction.probabilities is not None:
        probabilities = dict(zip(prediction.label_names, prediction.probabilities))
        if prediction.kind is TaskKind.MULTI_LABEL_CLASSIFICATION:
            return {"labels": [n for n, p in probabilities.items() if p >= 0.5], "probabilities": probabilities}
        label, score = prediction.top_label()
        return {"label": label, "score": score, "probabilities": probabilities}
    if prediction.entities is not None:
        return {"entities": prediction.entities, "tokens": prediction.tokens, "tags": prediction.tags}
    if prediction.score is not None:
        return {"score": prediction.score}
    return {"text": prediction.text}


def _run(call: Any) -> Any:
    from tunery_serving import ArtifactError

    try:
        return call()
    except ArtifactError as exc:
        log.error("model could not be loaded: %s", exc)
        raise ModelUnavailable(f"The model could not be loaded: {exc}") from exc


# -- generation (OpenAI chat/completions shapes) -----------------------------------------------


def _generation_target(tenant: Tenant, model: str) -> selectors.ServingTarget:
    target = routing.route(tenant, model).target  # a deployment's name works too; canary applies, shadow does not
    if not head_of(target).generates_text:
        raise InvalidRequest(
            f"The model '{model}' is a {target.kind} model, not a language model; call /v1/predictions.",
            param="model",
            code="wrong_endpoint",
        )
    return target


def generate(*, tenant: Tenant, body: dict[str, Any], chat: bool) -> dict[str, Any] | Iterator[str]:
    """A chat completion (``chat``) or a text completion in OpenAI's shape; an iterator of
    server-sent-event lines when the body asks for ``stream``."""
    from tunery_serving import GenerationRequest

    params = inputs.generation_parameters(body)
    messages = inputs.chat_messages(body) if chat else None
    prompt = None if chat else inputs.completion_prompt(body)
    target = _generation_target(tenant, params.model)
    hooks = selectors.pack_hooks(tenant, target.model)  # a missing pack is refused here too
    screen = _screen(hooks)
    request = GenerationRequest(
        messages=messages,
        prompt=prompt,
        max_new_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        stop=params.stop,
        seed=params.seed,
    )
    shape = _Shape(chat=chat, model=target.model.id)

    def log_generation(text: str) -> None:
        seen = {"messages": list(messages)} if messages is not None else {"prompt": prompt}
        answer = {"id": shape.id, "object": shape.object, "data": [{"text": text}]}
        _log(tenant, target, hooks, answer, [seen])

    if params.stream and screen is None:
        return _stream(target, request, shape, params.include_usage, log_generation)
    started = time.perf_counter()
    result = _run(lambda: get_runtime().generate(target.model.id, target.path, request))
    prometheus.PREDICTION_LATENCY.labels(target.kind).observe(time.perf_counter() - started)
    prometheus.GENERATED_TOKENS.inc(result.completion_tokens)
    if screen is not None:
        result.text = screen(result.text)
    log_generation(result.text)
    if params.stream:  # screened text is only known whole: one content chunk
        return _whole_as_stream(result, shape, params.include_usage)
    return shape.whole(result)


def _screen(hooks: selectors.PackHooks) -> Callable[[str], str] | None:
    """The pack's text filter for its generated text, bound to the tenant's configuration."""
    text_filter = hooks.task.text_filter if hooks.task is not None else None
    if text_filter is None:
        return None
    return lambda text: text_filter(text, hooks.config)


class _Shape:
    """OpenAI's response objects for chat.completion(.chunk) and text_completion."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat = chat
        self.model = model
        self.id = prefixed_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _base(self, chunk: bool) -> dict[str, Any]:
        kind = self.object + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "system_fingerprint": None}

    @staticmethod
    def usage(result: Any) -> dict[str, int]:
        return {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }

    def whole(self, result: Any) -> dict[str, Any]:
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": result.text, "refusal": None},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        else:
            choice = {"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}
        return {**self._base(chunk=False), "choices": [choice], "usage": self.usage(result)}

    def chunk(self, piece: str | None, finish_reason: str | None = None, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if piece:
                delta["content"] = piece
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish_reason, "logprobs": None}
        return {**self._base(chunk=True), "choices": [choice]}


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _framed(shape: _Shape, pieces: Iterable[str], result: Any, include_usage: bool) -> Iterator[str]:
    """The events of one streamed answer: the role (chat), each piece, the finish reason and the
    usage (read from ``result`` once the pieces are through)."""
    if shape.chat:
        yield _event(shape.chunk(None, role=True))
    for piece in pieces:
        yield _event(shape.chunk(piece))
    yield _event(shape.chunk(None, finish_reason=result.finish_reason))
    if include_usage:
        yield _event({**shape.chunk(None), "choices": [], "usage": shape.usage(result)})


def _whole_as_stream(result: Any, shape: _Shape, include_usage: bool) -> Iterator[str]:
    yield from _framed(shape, [result.text], result, include_usage)
    yield "data: [DONE]\n\n"


def _stream(
    target: selectors.ServingTarget,
    request: Any,
    shape: _Shape,
    include_usage: bool,
    finished: Callable[[str], None],
) -> Iterator[str]:
    from tunery_serving import GenerationResult

    # Load (and fail) before the first byte, so a broken model is a proper error response.
    runtime = get_runtime()
    _run(lambda: runtime.load(target.model.id, target.path))

    def events() -> Iterator[str]:
        result = GenerationResult()
        started = time.perf_counter()
        try:
            pieces = runtime.stream(target.model.id, target.path, request, result)
            yield from _framed(shape, pieces, result, include_usage)
            finished(result.text)
        except Exception as exc:  # headers are gone: report in-band, as OpenAI does
            log.exception("generation failed mid-stream for %s", target.model.id)
            yield _event(
                {"error": {"message": f"Generation failed: {exc}", "type": "server_error", "param": None, "code": None}}
            )
        finally:
            prometheus.PREDICTION_LATENCY.labels(target.kind).observe(time.perf_counter() - started)
            prometheus.GENERATED_TOKENS.inc(result.completion_tokens)
        yield "data: [DONE]\n\n"

    return events()
