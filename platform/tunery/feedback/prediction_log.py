"""The prediction log: what each answered item leaves behind for feedback and monitoring.

Serving calls :func:`record` once per request, after answering. The rows go to the process's
write-behind buffer (``tunery.core.writebehind``), which inserts them in batches off the request
path, at most ``TUNERY_WRITE_BEHIND_SECONDS`` later: feedback on an id posted within that second
may still find no row (a 404). A failure to log never fails the prediction."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.utils import timezone

from tunery.core import writebehind
from tunery.feedback.models import PredictionRecord
from tunery.tenants.models import Tenant
from tunery_contract import TaskDefinition, VerticalPack

log = logging.getLogger(__name__)

#: Characters of one input kept at most (a prediction input is bounded already; this bounds chats).
MAX_KEPT_CHARACTERS = 20_000

Screen = Callable[[str], str]


@dataclass(frozen=True)
class AnsweredItem:
    """One item as the model saw it (``{"text", "text_pair"}``, ``{"messages"}`` or ``{"prompt"}``)
    and the entry the API answered with for it."""

    input: Mapping[str, Any]
    answer: Mapping[str, Any]


def input_screen(pack: VerticalPack | None, task: TaskDefinition | None, config: Mapping[str, Any]) -> Screen | None:
    """The pack's screening for text it keeps (the medical pack's PHI screening): the task's own
    ``text_filter``, else the first one its pack has. None: the pack keeps text as it is."""
    candidates = [task] if task is not None else []
    candidates += list(pack.tasks) if pack is not None else []
    for candidate in candidates:
        if candidate.text_filter is not None:
            text_filter = candidate.text_filter
            return lambda text: text_filter(text, config)
    return None


def record(
    *,
    tenant: Tenant,
    request_id: str,
    endpoint: str,
    model_id: str,
    deployment_id: str,
    kind: str,
    items: Sequence[AnsweredItem],
    screen: Screen | None,
) -> None:
    try:
        now = timezone.now()
        retention = int(tenant.prediction_text_retention_days)
        expires = now + timedelta(days=retention) if retention > 0 else None
        rows = [
            _row(tenant, request_id, endpoint, model_id, deployment_id, kind, index, item, now, expires, screen)
            for index, item in enumerate(items)
        ]
        _write(rows)
    except Exception:  # the answer is already computed: losing its log line beats failing it
        log.exception("could not log prediction %s", request_id)


#: The write-behind sink of the log's rows (registered in FeedbackConfig.ready).
SINK = "feedback.prediction_log"


def _write(rows: list[PredictionRecord]) -> None:
    for row in rows:
        writebehind.append(SINK, row)


def write_rows(rows: Sequence[PredictionRecord]) -> None:
    """The sink: one insert for a flush's rows (a row already there, e.g. written twice, is skipped)."""
    PredictionRecord.objects.bulk_create(list(rows), ignore_conflicts=True)


def _row(
    tenant: Tenant,
    request_id: str,
    endpoint: str,
    model_id: str,
    deployment_id: str,
    kind: str,
    index: int,
    item: AnsweredItem,
    now: Any,
    expires: Any,
    screen: Screen | None,
) -> PredictionRecord:
    answer = item.answer
    label, labels, confidence = _decision(answer)
    handoff = answer.get("handoff")
    length = sum(len(text) for text in _texts(item.input))
    kept = _kept_input(item.input, screen) if expires is not None else None
    output = answer.get("text") if isinstance(answer.get("text"), str) else ""
    if output and screen is not None and expires is not None:
        output = screen(output)
    return PredictionRecord(
        tenant=tenant,
        request_id=request_id,
        index=index,
        endpoint=endpoint,
        model_id=model_id,
        deployment_id=deployment_id,
        kind=kind,
        created_at=now,
        label=label[:200],
        labels=labels,
        confidence=confidence,
        handoff=handoff if isinstance(handoff, bool) else None,
        input_length=length,
        input=kept,
        output_text=(output or "")[:MAX_KEPT_CHARACTERS] if expires is not None else "",
        input_expires_at=expires if kept is not None else None,
    )


def _decision(answer: Mapping[str, Any]) -> tuple[str, list[str], float | None]:
    """(top label, labels, confidence) of one answer entry as serving decoded it."""
    probabilities = answer.get("probabilities")
    if isinstance(answer.get("label"), str):
        score = answer.get("score")
        return answer["label"], [], float(score) if isinstance(score, (int, float)) else None
    if isinstance(answer.get("labels"), list) and isinstance(probabilities, dict):
        labels = [str(label) for label in answer["labels"]]
        confidence = max(probabilities.values(), default=None)
        return "", labels, float(confidence) if confidence is not None else None
    if isinstance(answer.get("entities"), list):
        entities = [e for e in answer["entities"] if isinstance(e, Mapping)]
        types = sorted({str(e.get("type") or e.get("label") or e.get("entity") or "") for e in entities} - {""})
        scores = [float(e["score"]) for e in entities if isinstance(e.get("score"), (int, float))]
        return "", types, (sum(scores) / len(scores)) if scores else None
    return "", [], None


def _texts(value: Mapping[str, Any]) -> list[str]:
    texts = [v for k, v in value.items() if k in ("text", "text_pair", "prompt") and isinstance(v, str)]
    for message in value.get("messages") or []:
        if isinstance(message, Mapping) and isinstance(message.get("content"), str):
            texts.append(message["content"])
    return texts


def _kept_input(value: Mapping[str, Any], screen: Screen | None) -> dict[str, Any] | None:
    def kept(text: str) -> str:
        return (screen(text) if screen is not None else text)[:MAX_KEPT_CHARACTERS]

    out: dict[str, Any] = {}
    for key in ("text", "text_pair", "prompt"):
        if isinstance(value.get(key), str):
            out[key] = kept(value[key])
    if isinstance(value.get("messages"), (list, tuple)):
        out["messages"] = [
            {"role": str(m.get("role", "")), "content": kept(m["content"])}
            for m in value["messages"]
            if isinstance(m, Mapping) and isinstance(m.get("content"), str)
        ]
    if len(json.dumps(out)) > 4 * MAX_KEPT_CHARACTERS:
        return None
    return out or None
