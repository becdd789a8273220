"""Reads for the operator dashboard: a job's learning curves, per-tenant usage, pack enablement."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Q, Sum

from tunery.dashboard.models import PredictionUsage
from tunery.files.models import File
from tunery.jobs.models import FineTuningJob, JobEvent, JobStatus
from tunery.tenants.models import Tenant
from tunery.verticals import registry
from tunery.verticals.models import VerticalEnablement

#: Keys of a metrics event that are bookkeeping, not curves.
NOT_CURVES = frozenset({"step", "total_steps", "epoch", "learning_rate", "lr", "throughput", "eta_seconds", "elapsed"})


@dataclass
class JobCurves:
    """Per-step values from a job's metrics events, split into losses and task metrics."""

    losses: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    metrics: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    #: One row per metrics event, oldest first: {"step": ..., name: value, ...}.
    rows: list[dict[str, float]] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return sorted({key for row in self.rows for key in row if key != "step"})

    def latest(self, name: str) -> float | None:
        points = self.losses.get(name) or self.metrics.get(name)
        return points[-1][1] if points else None


def job_curves(job: FineTuningJob) -> JobCurves:
    curves = JobCurves()
    events = JobEvent.objects.filter(job=job, type="metrics").order_by("created_at", "id").only("data")
    for event in events:
        data = event.data or {}
        step = data.get("step")
        if not isinstance(step, int | float):
            continue
        row: dict[str, float] = {"step": float(step)}
        for name, value in data.items():
            if name in NOT_CURVES or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            row[name] = float(value)
            if "/" in name or name.startswith("full_"):  # per-class breakdowns: in the table, not the chart
                continue
            target = curves.losses if "loss" in name else curves.metrics
            target.setdefault(name, []).append((float(step), float(value)))
        curves.rows.append(row)
    return curves


@dataclass(frozen=True)
class TenantUsage:
    tenant: Tenant
    jobs_total: int
    jobs_by_status: dict[str, int]
    training_hours: float
    stored_bytes: int
    stored_files: int
    fine_tuned_models: int
    deployments: int | None
    predictions: int | None
    enabled_verticals: list[str]

    @property
    def training_quota_used(self) -> float:
        return self.training_hours / self.tenant.max_training_hours if self.tenant.max_training_hours else 0.0


def tenant_usage() -> list[TenantUsage]:
    """One row per tenant: jobs by status, training hours, stored bytes, models, serving counts."""
    tenants = Tenant.objects.order_by("slug").annotate(
        jobs_total=Count("jobs", distinct=True),
        training_seconds=Sum("jobs__training_seconds"),
    )
    status_counts: dict[int, dict[str, int]] = defaultdict(dict)
    for row in FineTuningJob.objects.values("tenant_id", "status").annotate(n=Count("id")):
        status_counts[row["tenant_id"]][row["status"]] = row["n"]
    storage = {
        row["tenant_id"]: (row["bytes"] or 0, row["n"])
        for row in File.objects.filter(deleted_at__isnull=True)
        .values("tenant_id")
        .annotate(bytes=Sum("bytes"), n=Count("id"))
    }
    models = _count_by_tenant("catalog", "FineTunedModel", Q(deleted_at__isnull=True))
    deployments = _count_by_tenant("serving", "Deployment")
    predictions = _prediction_counts()
    enabled: dict[int, list[str]] = defaultdict(list)
    for tenant_id, vertical in VerticalEnablement.objects.filter(enabled=True).values_list("tenant_id", "vertical"):
        enabled[tenant_id].append(vertical)
    return [
        TenantUsage(
            tenant=tenant,
            jobs_total=tenant.jobs_total,
            jobs_by_status={s: status_counts[tenant.id].get(s, 0) for s in JobStatus.values},
            training_hours=(tenant.training_seconds or 0.0) / 3600,
            stored_bytes=storage.get(tenant.id, (0, 0))[0],
            stored_files=storage.get(tenant.id, (0, 0))[1],
            fine_tuned_models=(models or {}).get(tenant.id, 0),
            deployments=None if deployments is None else deployments.get(tenant.id, 0),
            predictions=None if predictions is None else predictions.get(tenant.id, 0),
            enabled_verticals=sorted(enabled[tenant.id]),
        )
        for tenant in tenants
    ]


def _count_by_tenant(app_label: str, model_name: str, condition: Q | None = None) -> dict[int, int] | None:
    """Rows per tenant of a model another app owns; None while that app has no such model."""
    from django.apps import apps

    try:
        model = apps.get_model(app_label, model_name)
    except LookupError:
        return None
    queryset = model.objects.all()
    if condition is not None:
        queryset = queryset.filter(condition)
    return {row["tenant_id"]: row["n"] for row in queryset.values("tenant_id").annotate(n=Count("pk"))}


def _prediction_counts() -> dict[int, int]:
    """Served prediction and completion requests per tenant, all time."""
    return {
        row["tenant_id"]: row["n"] or 0
        for row in PredictionUsage.objects.values("tenant_id").annotate(n=Sum("requests"))
    }


@dataclass(frozen=True)
class EnablementCell:
    vertical: str
    enabled: bool
    has_config: bool


@dataclass(frozen=True)
class EnablementRow:
    tenant: Tenant
    cells: list[EnablementCell]


def enablement_matrix() -> tuple[list[Any], list[EnablementRow], dict[str, str]]:
    """(installed packs, one row per tenant with a cell per pack, packs that failed to load)."""
    packs = sorted(registry.installed_packs().values(), key=lambda p: p.id)
    rows_by_tenant: dict[int, dict[str, VerticalEnablement]] = defaultdict(dict)
    for row in VerticalEnablement.objects.all():
        rows_by_tenant[row.tenant_id][row.vertical] = row
    matrix = []
    for tenant in Tenant.objects.order_by("slug"):
        cells = []
        for pack in packs:
            enablement = rows_by_tenant[tenant.id].get(pack.id)
            cells.append(
                EnablementCell(pack.id, bool(enablement and enablement.enabled), bool(enablement and enablement.config))
            )
        matrix.append(EnablementRow(tenant, cells))
    return packs, matrix, dict(registry.failures())
