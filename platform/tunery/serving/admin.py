from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join

from tunery.core.admin import AuditedModelAdmin, audit_admin
from tunery.core.errors import ApiError
from tunery.serving import gate, services, traffic
from tunery.serving.models import ChampionPeriod, Deployment


class ChampionPeriodInline(admin.TabularInline):
    model = ChampionPeriod
    fields = ("model_id", "action", "actor", "started_at", "ended_at", "gate")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-started_at", "-id")

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Deployment)
class DeploymentAdmin(AuditedModelAdmin):
    list_display = ("id", "name", "tenant", "model", "challenger", "mode", "status", "kind", "created_at")
    list_filter = ("status", "kind", "mode", "precision")
    search_fields = ("id", "name", "model__id", "challenger__id", "tenant__slug")
    # The champion and challenger change only through promotion (the API or the actions below).
    readonly_fields = (
        "id",
        "tenant",
        "model",
        "challenger",
        "mode",
        "canary_share",
        "status",
        "kind",
        "error",
        "traffic",
        "created_by",
        "created_at",
        "updated_at",
    )
    raw_id_fields = ("evaluation_file",)
    inlines = (ChampionPeriodInline,)
    actions = ("promote_overriding_gate", "roll_back")

    @admin.display(description="traffic per model")
    def traffic(self, deployment: Deployment) -> str:
        rows = traffic.stats(deployment.id)
        if not rows:
            return "no traffic yet"
        return format_html_join(
            "",
            "<div>{} ({}): {} requests, agreement {}, mean confidence {}, hand-off rate {}, {} ms</div>",
            (
                (
                    r["model"],
                    r["role"],
                    r["requests"],
                    _share(r["agreement"]),
                    _share(r["mean_confidence"]),
                    _share(r["handoff_rate"]),
                    f"{r['mean_latency_ms']:.1f}" if r["mean_latency_ms"] is not None else "-",
                )
                for r in rows
            ),
        )

    @admin.action(description="Promote the challenger, overriding a refusing gate (audit-logged)")
    def promote_overriding_gate(self, request: HttpRequest, deployments: QuerySet[Deployment]) -> None:
        actor = f"admin:{request.user.get_username()}"
        for deployment in deployments.select_related("tenant"):
            challenger = deployment.challenger_id
            try:
                promoted = gate.promote(tenant=deployment.tenant, deployment=deployment, actor=actor, override=True)
            except ApiError as refused:
                self.message_user(request, f"{deployment.pk}: {refused.message}", messages.WARNING)
                continue
            audit_admin(request, "promote_override", promoted, model=challenger)
            self.message_user(request, f"{deployment.pk} is served by {promoted.model_id}.")

    @admin.action(description="Roll back to the previous champion")
    def roll_back(self, request: HttpRequest, deployments: QuerySet[Deployment]) -> None:
        actor = f"admin:{request.user.get_username()}"
        for deployment in deployments.select_related("tenant"):
            try:
                rolled = services.rollback(tenant=deployment.tenant, deployment=deployment, actor=actor)
            except ApiError as refused:
                self.message_user(request, f"{deployment.pk}: {refused.message}", messages.WARNING)
                continue
            audit_admin(request, "rollback", rolled, model=rolled.model_id)
            self.message_user(request, f"{deployment.pk} is served by {rolled.model_id} again.")


def _share(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"
