"""The one writer of a deployment's champion and challenger (``model``, ``challenger``, ``mode``,
``canary_share``) and of its champion history. Each change locks the deployment row
(select_for_update), checks what it depends on under the lock, writes the fields, closes the
current ``ChampionPeriod`` and opens the next in one transaction, and writes an audit entry.

Loading artifacts and running the promotion gate happen before, in ``tunery.serving.services``
(they take seconds); ``expected_challenger`` makes sure the challenger promoted is the one gated."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from tunery.catalog.models import FineTunedModel
from tunery.core.errors import Conflict, NotFound
from tunery.jobs.selectors import fine_tuned_models
from tunery.serving.models import ChampionPeriod, Deployment
from tunery.tenants.models import Tenant
from tunery.tenants.services import audit


def first_champion(deployment: Deployment, actor: str) -> ChampionPeriod:
    """The history's first entry, written with a new deployment (inside its transaction)."""
    return ChampionPeriod.objects.create(
        deployment=deployment,
        tenant_id=deployment.tenant_id,
        model_id=deployment.model_id,
        action=ChampionPeriod.Action.DEPLOY,
        actor=actor[:200],
        started_at=deployment.created_at or timezone.now(),
    )


def _locked(tenant: Tenant, deployment_id: str) -> Deployment:
    found = Deployment.objects.select_for_update().filter(tenant=tenant, pk=deployment_id).first()
    if found is None:
        raise NotFound(f"No deployment with id '{deployment_id}' found.", param="id")
    return found


def set_challenger(
    *,
    tenant: Tenant,
    deployment_id: str,
    challenger: FineTunedModel | None,
    mode: str,
    canary_share: float,
    actor: str,
) -> Deployment:
    """Give the deployment a challenger in ``mode`` (or take it away: ``challenger`` None)."""
    with transaction.atomic():
        deployment = _locked(tenant, deployment_id)
        if challenger is not None and challenger.pk == deployment.model_id:
            raise Conflict(
                f"'{challenger.pk}' is already this deployment's champion.", param="challenger", code="already_champion"
            )
        deployment.challenger = challenger
        deployment.mode = mode if challenger is not None else ""
        deployment.canary_share = canary_share
        deployment.save(update_fields=["challenger", "mode", "canary_share", "updated_at"])
        audit(
            actor=actor,
            action="deployment.challenger",
            tenant=tenant,
            target=deployment.id,
            challenger=challenger.pk if challenger is not None else None,
            mode=deployment.mode,
            canary_share=canary_share,
        )
    return deployment


def promote(
    *,
    tenant: Tenant,
    deployment_id: str,
    expected_challenger: str,
    actor: str,
    gate: dict[str, Any] | None,
    overridden: bool,
) -> Deployment:
    """The challenger becomes the champion; the deployment has no challenger afterwards."""
    action = ChampionPeriod.Action.PROMOTE_OVERRIDE if overridden else ChampionPeriod.Action.PROMOTE
    with transaction.atomic():
        deployment = _locked(tenant, deployment_id)
        if deployment.challenger_id is None:
            raise Conflict("The deployment has no challenger to promote.", param="challenger", code="no_challenger")
        if deployment.challenger_id != expected_challenger:
            raise Conflict(
                "The deployment's challenger changed while the promotion was being checked; try again.",
                param="challenger",
                code="deployment_changed",
            )
        challenger = fine_tuned_models(tenant).filter(pk=deployment.challenger_id).first()
        if challenger is None:
            raise Conflict("The challenger model was deleted.", param="challenger", code="model_not_found")
        _switch(deployment, challenger, action, actor, gate)
        audit(
            actor=actor,
            action="deployment.promote_override" if overridden else "deployment.promote",
            tenant=tenant,
            target=deployment.id,
            model=challenger.pk,
            gate=gate,
        )
    return deployment


def rollback(*, tenant: Tenant, deployment_id: str, actor: str) -> Deployment:
    """The model that served before the current champion serves again (no gate: it served before)."""
    with transaction.atomic():
        deployment = _locked(tenant, deployment_id)
        periods = list(ChampionPeriod.objects.filter(deployment=deployment).order_by("-started_at", "-id")[:2])
        if len(periods) < 2:
            raise Conflict(
                "The deployment has had only one champion; there is nothing to roll back to.",
                code="nothing_to_roll_back",
            )
        previous = fine_tuned_models(tenant).filter(pk=periods[1].model_id).first()
        if previous is None:
            raise Conflict(
                f"The previous champion '{periods[1].model_id}' was deleted; it cannot serve again.",
                code="model_not_found",
            )
        _switch(deployment, previous, ChampionPeriod.Action.ROLLBACK, actor, None)
        audit(actor=actor, action="deployment.rollback", tenant=tenant, target=deployment.id, model=previous.pk)
    return deployment


def refuse_champion_elsewhere(deployment: Deployment, model: FineTunedModel) -> None:
    """409 when ``model`` already answers as another deployment's champion (a model serves one)."""
    elsewhere = Deployment.objects.filter(model=model).exclude(pk=deployment.pk).first()
    if elsewhere is not None:
        raise Conflict(
            f"'{model.pk}' is the champion of another deployment ('{elsewhere.pk}'); undeploy it there first.",
            param="challenger",
            code="model_already_deployed",
        )


def _switch(
    deployment: Deployment, model: FineTunedModel, action: str, actor: str, gate: dict[str, Any] | None
) -> None:
    """Under the caller's lock: ``model`` becomes the champion and the history says so."""
    refuse_champion_elsewhere(deployment, model)
    now = timezone.now()
    ChampionPeriod.objects.filter(deployment=deployment, ended_at__isnull=True).update(ended_at=now)
    ChampionPeriod.objects.create(
        deployment=deployment,
        tenant_id=deployment.tenant_id,
        model_id=model.pk,
        action=action,
        actor=actor[:200],
        gate=gate,
        started_at=now,
    )
    deployment.model = model
    if deployment.challenger_id == model.pk or action != ChampionPeriod.Action.ROLLBACK:
        deployment.challenger = None
        deployment.mode = ""
    deployment.save(update_fields=["model", "challenger", "mode", "updated_at"])
