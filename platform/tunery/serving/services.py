"""Writes and calls for serving: deploying, undeploying, predicting and generating."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from django.db import transaction

from tunery.core.errors import ApiError, InvalidRequest, QuotaExceeded
from tunery.core.ids import prefixed_id
from tunery.monitoring import prometheus
from tunery.serving import conf, inputs, selectors
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
    The load runs outside any transaction (it may take seconds; SQLite would hold its write lock)."""
    model = selectors.tenant_model(tenant, model_id)
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
    with transaction.atomic():
        deployment.delete()
        audit(actor=actor, action="deployment.delete", tenant=deployment.tenant, target=deployment_id, model=model_id)
    get_runtime().unload(model_id)


# -- predictions -------------------------------------------------------------------------------


def predict(*, tenant: Tenant, request: inputs.PredictionRequest) -> dict[str, Any]:
    target, hooks = selectors.cached_serving_route(tenant, request.model)
    head = head_of(target)
    if head.generates_text:
        return _predict_generations(target, hooks, request)
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

    model_inputs = [
        PredictionInput(
            text=_field(row, (text_column, "text"), f"inputs[{i}]"),
            text_pair=_field(row, (pair_column, "text_pair"), f"inputs[{i}]") if head.takes_pairs else None,
        )
        for i, row in enumerate(rows)
    ]
    started = time.perf_counter()
    precision = target.deployment.precision or None
    predictions = _run(lambda: get_runtime().predict(target.model.id, target.path, model_inputs, precision))
    prometheus.PREDICTION_LATENCY.labels(target.kind).observe(time.perf_counter() - started)
    data = []
    for index, (prediction, row) in enumerate(zip(predictions, rows)):
        result = {"index": index, **decoded(prediction)}
        if hooks.task is not None and hooks.task.postprocess is not None:
            result.update(hooks.task.postprocess(prediction, row, hooks.config))
        data.append(result)
    if request.items is not None:
        for entry, item in zip(data, request.items):
            entry.setdefault("item", item)
        data.sort(key=lambda r: r.get("score", 0.0), reverse=True)
        for rank, entry in enumerate(data, start=1):
            entry["rank"] = rank
    return {
        "id": prefixed_id("pred"),
        "object": "prediction",
        "created": int(time.time()),
        "model": target.model.id,
        "kind": target.kind,
        "data": data,
        "usage": {"items": len(data)},
    }


def predict_many(*, tenant: Tenant, requests: list[inputs.PredictionRequest]) -> list[dict[str, Any] | ApiError]:
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
            _predict_merged(tenant, requests, members[start : start + limit], answers, limit)
    for index, request in enumerate(requests):
        if answers[index] is None:
            try:
                answers[index] = predict(tenant=tenant, request=request)
            except ApiError as exc:
                answers[index] = exc
    return cast("list[dict[str, Any] | ApiError]", answers)


def _predict_merged(
    tenant: Tenant,
    requests: list[inputs.PredictionRequest],
    members: list[int],
    answers: list[dict[str, Any] | ApiError | None],
    limit: int,
) -> None:
    """Score ``members`` (same model and settings) in one call of at most ``limit`` rows; leave
    them unanswered (answered one by one) where merging would not be the same as asking alone."""
    rows = [row for index in members for row in requests[index].inputs or []]
    first = requests[members[0]]
    try:
        if (
            len(members) < 2
            or len(rows) > limit
            or head_of(selectors.serving_target(tenant, first.model)).generates_text
        ):
            return
        merged = predict(tenant=tenant, request=inputs.PredictionRequest(first.model, inputs=rows, body=first.body))
    except ApiError:
        return  # one member's fault: the others must not share it
    offset = 0
    for index in members:
        count = len(requests[index].inputs or [])
        data = [{**entry, "index": entry["index"] - offset} for entry in merged["data"][offset : offset + count]]
        answers[index] = {**merged, "id": prefixed_id("pred"), "data": data, "usage": {"items": count}}
        offset += count


def _predict_generations(
    target: selectors.ServingTarget, hooks: selectors.PackHooks, request: inputs.PredictionRequest
) -> dict[str, Any]:
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
    data, prompt_tokens, completion_tokens = [], 0, 0
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
        result = _run(lambda g=generation: get_runtime().generate(target.model.id, target.path, g))
        prompt_tokens += result.prompt_tokens
        completion_tokens += result.completion_tokens
        prediction = Prediction(kind=TaskKind.CAUSAL_LM, text=result.text)
        entry = {"index": index, **decoded(prediction), "finish_reason": result.finish_reason}
        if hooks.task is not None and hooks.task.postprocess is not None:
            entry.update(hooks.task.postprocess(prediction, row, hooks.config))
        data.append(entry)
    prometheus.PREDICTION_LATENCY.labels(target.kind).observe(time.perf_counter() - started)
    prometheus.GENERATED_TOKENS.inc(completion_tokens)
    return {
        "id": prefixed_id("pred"),
        "object": "prediction",
        "created": int(time.time()),
        "model": target.model.id,
        "kind": target.kind,
        "data": data,
        "usage": {"items": len(data), "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


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
    target = selectors.serving_target(tenant, model)
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
    if params.stream and screen is None:
        return _stream(target, request, shape, params.include_usage)
    started = time.perf_counter()
    result = _run(lambda: get_runtime().generate(target.model.id, target.path, request))
    prometheus.PREDICTION_LATENCY.labels(target.kind).observe(time.perf_counter() - started)
    prometheus.GENERATED_TOKENS.inc(result.completion_tokens)
    if screen is not None:
        result.text = screen(result.text)
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


def _stream(target: selectors.ServingTarget, request: Any, shape: _Shape, include_usage: bool) -> Iterator[str]:
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
