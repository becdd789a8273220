"""Which model answers a request, and what the challenger does with live traffic.

A request names a fine-tuned model id (``ft:...``: that model answers, as before deployments had
challengers) or a deployment by its id (``deploy-...``) or stable name: the champion answers,
except in ``canary`` mode, where a ``canary_share`` of such requests goes to the challenger. In
``shadow`` mode the challenger answers a copy of every request to the deployment after the
champion's answer is computed, in a bounded background executor; its answers are only compared
and counted (``tunery.serving.traffic``), never returned."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tunery.catalog.models import FineTunedModel
from tunery.core.errors import Conflict
from tunery.monitoring import prometheus
from tunery.serving import selectors, traffic
from tunery.serving.models import Deployment
from tunery.serving.process_runtime import artifact_dir
from tunery.tenants.models import Tenant

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
SHADOW = "shadow"

#: Shadow copies waiting or running at once per process; more are dropped (and counted), so a
#: slow challenger can never pile up work behind the champion's traffic.
SHADOW_BACKLOG = 32

_rng = random.Random()
_rng_lock = threading.Lock()
_shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunery-shadow")
_shadow_slots = threading.BoundedSemaphore(SHADOW_BACKLOG)


def seed(value: int) -> None:
    """Make the canary draws of this process repeatable (tests, benchmarks)."""
    with _rng_lock:
        _rng.seed(value)


@dataclass(frozen=True)
class Route:
    target: selectors.ServingTarget
    #: CHAMPION or CHALLENGER: which of the deployment's models answers.
    role: str
    #: The challenger to give a shadow copy of this request, if any.
    shadow: FineTunedModel | None = None


def route(tenant: Tenant, name: str, *, deployed_only: bool = True) -> Route:
    """The model that answers a request addressed to ``name``; 404/409 as ``serving_target`` gives
    them. ``deployed_only=False`` (offline scoring) also reads a model that is not deployed."""
    deployment = selectors.addressed_deployment(tenant, name)
    if deployment is None:
        if deployed_only:  # live traffic: a warm route asks the database nothing
            target = selectors.cached_serving_route(tenant, name)[0]
        else:
            target = selectors.serving_target(tenant, name, deployed_only=False)
        shadow = _shadow_of(target.deployment) if target.deployment is not None and deployed_only else None
        return Route(target, CHAMPION, shadow)
    if deployment.status != Deployment.Status.READY:
        raise Conflict(
            f"The deployment '{name}' failed to deploy: {deployment.error}",
            param="model",
            code="model_not_deployed",
        )
    challenger = _live_challenger(deployment)
    if challenger is not None and deployment.mode == Deployment.Mode.CANARY and _draw() < deployment.canary_share:
        return Route(_target(deployment, challenger), CHALLENGER)
    if deployment.model.deleted_at is not None:
        raise Conflict(f"The deployment '{name}' has no model to serve.", param="model", code="model_not_deployed")
    return Route(_target(deployment, deployment.model), CHAMPION, _shadow_of(deployment))


def _draw() -> float:
    with _rng_lock:
        return _rng.random()


def _live_challenger(deployment: Deployment) -> FineTunedModel | None:
    if deployment.challenger_id is None or not deployment.mode:
        return None
    challenger = deployment.challenger
    return challenger if challenger is not None and challenger.deleted_at is None else None


def _shadow_of(deployment: Deployment) -> FineTunedModel | None:
    return _live_challenger(deployment) if deployment.mode == Deployment.Mode.SHADOW else None


def _target(deployment: Deployment, model: FineTunedModel) -> selectors.ServingTarget:
    return selectors.ServingTarget(model, deployment, artifact_dir(model), deployment.kind)


def answered(
    chosen: Route,
    entries: Sequence[dict[str, Any]],
    latency: float,
    shadow_answer: Callable[[FineTunedModel], Sequence[dict[str, Any]]] | None = None,
) -> None:
    """Count the answer, then (shadow mode) hand the challenger its copy: ``shadow_answer(challenger)``
    runs in the background and its entries are compared with ``entries``."""
    deployment = chosen.target.deployment
    if deployment is None:  # offline scoring of a model that is not deployed
        return
    traffic.record(deployment.id, chosen.target.model.id, chosen.role, traffic.observe(entries, latency))
    if chosen.shadow is None or shadow_answer is None:
        return
    if not _shadow_slots.acquire(blocking=False):
        prometheus.SHADOW_DROPPED.inc()
        return
    champion_entries = [dict(entry) for entry in entries]  # the caller may go on to change its own
    try:
        _shadow_pool.submit(_run_shadow, deployment.id, chosen.shadow, champion_entries, shadow_answer)
    except RuntimeError:  # the pool is shut down (interpreter exit)
        _shadow_slots.release()


def _run_shadow(
    deployment_id: str,
    challenger: FineTunedModel,
    champion_entries: list[dict[str, Any]],
    shadow_answer: Callable[[FineTunedModel], Sequence[dict[str, Any]]],
) -> None:
    try:
        started = time.perf_counter()
        entries = list(shadow_answer(challenger))
        seen = traffic.observe(entries, time.perf_counter() - started)
        agreed = sum(1 for mine, theirs in zip(entries, champion_entries) if agrees(mine, theirs))
        compared = min(len(entries), len(champion_entries))
        traffic.record(
            deployment_id,
            challenger.id,
            SHADOW,
            traffic.Observation(seen.items, seen.latency, seen.confidences, seen.handoffs, compared, agreed),
        )
    except Exception:  # a failing challenger is counted, never felt by the champion's callers
        prometheus.SHADOW_FAILED.inc()
        log.warning("shadow prediction by %s failed", challenger.id, exc_info=True)
    finally:
        _shadow_slots.release()


#: Scores (regression, ranking) agree when within this share of their size (at least 1).
SCORE_TOLERANCE = 0.05


def agrees(challenger: dict[str, Any], champion: dict[str, Any]) -> bool:
    """Whether two answers to one input say the same: the top label, the label set, the tags, the
    text, or (scores) values within ``SCORE_TOLERANCE``."""
    for field in ("label", "labels", "tags", "text"):
        if field in champion:
            mine, theirs = challenger.get(field), champion[field]
            return sorted(mine) == sorted(theirs) if field == "labels" and mine is not None else mine == theirs
    if isinstance(champion.get("score"), int | float) and isinstance(challenger.get("score"), int | float):
        a, b = float(champion["score"]), float(challenger["score"])
        return abs(a - b) <= SCORE_TOLERANCE * max(1.0, abs(a), abs(b))
    return False


def wait_for_shadows(timeout: float = 30.0) -> bool:
    """Block until every queued shadow copy has run (tests and graceful shutdown)."""
    deadline = time.monotonic() + timeout
    taken = 0
    try:
        while taken < SHADOW_BACKLOG:
            if not _shadow_slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
            taken += 1
        return True
    finally:
        for _ in range(taken):
            _shadow_slots.release()
