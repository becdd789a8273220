"""Reads for serving, always within one tenant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db.models import Q, QuerySet

from tunery.catalog.models import FineTunedModel
from tunery.core.errors import Conflict, NotFound
from tunery.core.lookupcache import LookupCache
from tunery.jobs.models import JobCheckpoint
from tunery.jobs.selectors import fine_tuned_models, model_checkpoint, names_a_checkpoint, served_checkpoint_name
from tunery.serving.models import ChampionPeriod, Deployment
from tunery.serving.process_runtime import artifact_dir, checkpoint_artifact_dir
from tunery.tenants.models import Tenant
from tunery_contract import TaskDefinition, VerticalPack


def deployments(tenant: Tenant) -> QuerySet[Deployment]:
    return Deployment.objects.filter(tenant=tenant).select_related("model")


def ready_deployment_count(tenant: Tenant) -> int:
    """Models loaded for serving, counted against the quota: each ready deployment's champion and
    challenger (a deleted model no longer counts)."""
    ready = Deployment.objects.filter(tenant=tenant, status=Deployment.Status.READY, model__deleted_at__isnull=True)
    return ready.count() + ready.filter(challenger__isnull=False, challenger__deleted_at__isnull=True).count()


def addressed_deployment(tenant: Tenant, name: str) -> Deployment | None:
    """The tenant's deployment whose id or stable name is ``name`` (None: ``name`` is no deployment's)."""
    if name.startswith("ft:"):
        return None
    return (
        Deployment.objects.filter(tenant=tenant)
        .filter(Q(pk=name) | Q(name=name))
        .select_related("model", "challenger")
        .first()
    )


def deployment_history(deployment: Deployment) -> QuerySet[ChampionPeriod]:
    return ChampionPeriod.objects.filter(deployment=deployment).order_by("started_at", "id")


def tenant_model(tenant: Tenant, model_id: str) -> FineTunedModel:
    """The tenant's fine-tuned model, or a 404 (another tenant's model looks exactly like none)."""
    found = fine_tuned_models(tenant).filter(pk=model_id).first()
    if found is None:
        raise NotFound(
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return found


@dataclass(frozen=True)
class ServingTarget:
    model: FineTunedModel
    #: None when an offline scorer (an evaluation) reads a model that is not deployed.
    deployment: Deployment | None
    path: Path
    kind: str
    #: The name the runtime keeps it under: the model's id, or a checkpoint's model name.
    name: str = ""

    @property
    def runtime_key(self) -> str:
        return self.name or self.model.id


def serving_target(tenant: Tenant, model_id: str, *, deployed_only: bool = True) -> ServingTarget:
    """The model a prediction runs on. Live traffic (``deployed_only``) needs a ready deployment;
    offline scoring (evaluations) also reads a model that is not deployed, from its artifact, and a
    checkpoint of a model (``ft:...:ckpt-step-N``), from an artifact built of the checkpoint."""
    if not deployed_only and names_a_checkpoint(model_id):
        return checkpoint_target(tenant, model_id)
    model = tenant_model(tenant, model_id)
    deployment = Deployment.objects.filter(model=model, tenant=tenant).first()
    ready = deployment is not None and deployment.status == Deployment.Status.READY
    if not deployed_only and not ready:
        return ServingTarget(model, None, artifact_dir(model), artifact_kind(model))
    if deployment is None or deployment.status != Deployment.Status.READY:
        state = "failed to deploy" if deployment is not None else "is not deployed"
        raise Conflict(
            f"The model '{model_id}' {state}; deploy it with POST /v1/deployments first.",
            param="model",
            code="model_not_deployed",
        )
    return ServingTarget(model, deployment, artifact_dir(model), deployment.kind)


def tenant_checkpoint(tenant: Tenant, name: str) -> tuple[FineTunedModel, JobCheckpoint]:
    """The tenant's model checkpoint named ``name`` (see ``jobs.selectors.model_checkpoint``), or a 404."""
    found = model_checkpoint(tenant, name)
    if found is None:
        raise NotFound(
            f"The checkpoint '{name}' does not exist or you do not have access to it (checkpoints of "
            "succeeded jobs, and a job's linear-probe checkpoint once deployed).",
            param="model",
            code="model_not_found",
        )
    return found


def checkpoint_target(tenant: Tenant, name: str) -> ServingTarget:
    model, checkpoint = tenant_checkpoint(tenant, name)
    key = served_checkpoint_name(model, checkpoint)
    return ServingTarget(model, None, checkpoint_artifact_dir(model, checkpoint), artifact_kind(model), key)


def artifact_kind(model: FineTunedModel) -> str:
    """The task kind recorded in a model's artifact (a 409 when the artifact cannot be read)."""
    from tunery_serving import ArtifactError, read_artifact

    try:
        return read_artifact(artifact_dir(model)).kind.value
    except ArtifactError as exc:
        raise Conflict(f"The model '{model.id}' cannot be read: {exc}", param="model", code="model_unreadable") from exc


@dataclass(frozen=True)
class PackHooks:
    """What a model's vertical pack contributes to serving (nothing for a model of no pack)."""

    task: TaskDefinition | None
    config: dict[str, Any]
    pack: VerticalPack | None = None


def pack_hooks(tenant: Tenant, model: FineTunedModel) -> PackHooks:
    """The pack's task and the tenant's pack config. A model trained for a pack that is no longer
    installed (or no longer has its task) is refused with a 409: answering without the pack's
    post-processing (replies, hand-offs, PHI screening) would silently change what callers get."""
    from tunery.verticals import registry

    if not model.vertical:
        return PackHooks(None, {})
    pack = registry.get_pack(model.vertical)
    if pack is None:
        raise Conflict(
            f"The model '{model.id}' was trained for the vertical pack '{model.vertical}', which is not "
            "installed on this server; an operator must reinstall the pack before it can serve predictions.",
            param="model",
            code="vertical_not_installed",
        )
    task = next((t for t in pack.tasks if t.id == model.task), None)
    if task is None:
        raise Conflict(
            f"The model '{model.id}' was trained for the task '{model.task}', which the installed "
            f"vertical pack '{model.vertical}' (version {pack.version}) no longer has.",
            param="model",
            code="vertical_task_not_found",
        )
    return PackHooks(task, registry.tenant_config(tenant.pk, pack, enabled_only=True), pack)


#: A ready model's serving target and pack hooks by (tenant, model id): a warm prediction asks the
#: database nothing about them (``tunery.core.lookupcache``; emptied when a deployment, a model or
#: a pack enablement is saved or deleted in this process, other processes within the TTL).
serving_routes: LookupCache[tuple[ServingTarget, PackHooks]] = LookupCache()


def cached_serving_route(tenant: Tenant, model_id: str) -> tuple[ServingTarget, PackHooks]:
    """``serving_target`` and ``pack_hooks`` of a ready model, from the lookup cache when warm.
    Refusals (404, 409) are never cached. The hooks' config is a copy per call."""
    key = (tenant.pk, model_id)
    cached = serving_routes.get(key)
    if cached is not None and not _pack_still_installed(cached[0].model, cached[1]):
        cached = None  # the pack was uninstalled or reloaded: pack_hooks decides again (409)
    if cached is None:
        target = serving_target(tenant, model_id)
        cached = (target, pack_hooks(tenant, target.model))
        serving_routes.put(key, cached)
    target, hooks = cached
    return target, PackHooks(hooks.task, dict(hooks.config), hooks.pack)


def _pack_still_installed(model: FineTunedModel, hooks: PackHooks) -> bool:
    """The cached hooks' task is still the installed pack's (an in-memory check, no query)."""
    from tunery.verticals import registry

    if not model.vertical:
        return True
    pack = registry.get_pack(model.vertical)
    return pack is not None and any(task is hooks.task for task in pack.tasks)
