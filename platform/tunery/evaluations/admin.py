"""Evaluations in the admin: list, and a detail page with the report as charts (reliability
diagram, coverage/accuracy against the hand-off threshold) and the per-label table."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from tunery.core.admin import AuditedModelAdmin
from tunery.dashboard.charts import line_chart_svg
from tunery.evaluations.models import Evaluation


def reliability_svg(report: dict[str, Any] | None) -> str:
    bins = ((report or {}).get("calibration") or {}).get("bins") or []
    filled = [b for b in bins if b["count"]]
    return line_chart_svg(
        {
            "accuracy": [(b["confidence"], b["accuracy"]) for b in filled],
            "perfect calibration": [(0.0, 0.0), (1.0, 1.0)],
        },
        title="Reliability (accuracy per confidence bin)",
        x_label="confidence",
    )


def handoff_svg(report: dict[str, Any] | None) -> str:
    curve = ((report or {}).get("handoff") or {}).get("curve") or []
    return line_chart_svg(
        {
            "coverage": [(c["threshold"], c["coverage"]) for c in curve],
            "accuracy when answered": [(c["threshold"], c["accuracy"]) for c in curve],
        },
        title="Coverage and accuracy by hand-off threshold",
        x_label="threshold",
    )


@admin.register(Evaluation)
class EvaluationAdmin(AuditedModelAdmin):
    list_display = [
        "id",
        "tenant",
        "evaluated",
        "kind",
        "file",
        "status",
        "selection_metric",
        "selected_value",
        "created_at",
    ]
    list_filter = ["status", "vertical", "kind", "tenant"]
    search_fields = ["id", "model__id", "model_name"]
    exclude = ["outputs"]
    readonly_fields = [
        *(f.name for f in Evaluation._meta.fields if f.name != "outputs"),
        "charts",
        "per_label_table",
        "entity_errors_table",
        "language_model_table",
    ]

    def has_add_permission(self, request):
        return False  # evaluations come in through the API

    def get_queryset(self, request):
        return super().get_queryset(request).defer("outputs")

    @admin.display(description="model")
    def evaluated(self, obj: Evaluation) -> str:
        return obj.evaluated_name

    @admin.display(description="selection metric value")
    def selected_value(self, obj: Evaluation) -> str:
        value = (obj.metrics or {}).get(obj.selection_metric)
        return "" if value is None else f"{value:.4f}"

    @admin.display(description="charts")
    def charts(self, obj: Evaluation) -> SafeString:
        if not obj.report or obj.report.get("calibration") is None:
            return mark_safe("")
        parts = [reliability_svg(obj.report)]
        if obj.report.get("handoff"):
            parts.append(handoff_svg(obj.report))
        return mark_safe("".join(parts))  # noqa: S308 - the chart helpers escape every text

    @admin.display(description="per-label report")
    def per_label_table(self, obj: Evaluation) -> SafeString:
        labels = ((obj.report or {}).get("per_label") or {}).get("labels") or {}
        if not labels:
            return mark_safe("")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (name, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", s["support"])
                for name, s in labels.items()
            ),
        )
        return format_html(
            "<table><tr><th>label</th><th>precision</th><th>recall</th><th>f1</th><th>support</th></tr>{}</table>",
            rows,
        )

    @admin.display(description="missed and spurious entities")
    def entity_errors_table(self, obj: Evaluation) -> SafeString:
        errors = (obj.report or {}).get("entity_errors")
        if not errors:
            return mark_safe("")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (what, e["row"], e["type"], e["text"])
                for what, key in (("missed", "missed_examples"), ("spurious", "spurious_examples"))
                for e in errors[key]
            ),
        )
        return format_html(
            "<p>{} missed, {} spurious</p>"
            "<table><tr><th>error</th><th>row</th><th>type</th><th>text</th></tr>{}</table>",
            errors["missed"],
            errors["spurious"],
            rows,
        )

    @admin.display(description="language model")
    def language_model_table(self, obj: Evaluation) -> SafeString:
        language = (obj.report or {}).get("language_model")
        if not language:
            return mark_safe("")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((r["row"], f"{r['mean_token_loss']:.4f}", r["tokens"]) for r in language["worst_rows"]),
        )
        return format_html(
            "<p>mean token loss {}, perplexity {}, {} answer tokens</p>"
            "<table><tr><th>row</th><th>mean token loss</th><th>tokens</th></tr>{}</table>",
            f"{language['mean_token_loss']:.4f}",
            f"{language['perplexity']:.2f}",
            language["tokens"],
            rows,
        )
