"""Feedback endpoints: thin views that parse, call a service, serialize.

- ``POST /v1/predictions/{id}/feedback``, ``/v1/chat/completions/{id}/feedback`` and
  ``/v1/completions/{id}/feedback``: correct one answered item (201; 200 when it replaces one)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tunery.core.errors import InvalidRequest, NotFound
from tunery.core.schema import BODY_ERRORS, ERRORS, list_of
from tunery.core.scoping import TenantScopedViewSet, request_tenant, scope_to_tenant
from tunery.core.timestamps import unix_seconds
from tunery.feedback import alerts, exports, inputs, monitoring, retraining, services
from tunery.feedback.models import AlertRule, Feedback, PredictionRecord, WebhookDelivery
from tunery.serving.models import Deployment
from tunery.serving.views import request_body

FeedbackBodySerializer = inline_serializer(
    name="FeedbackBody",
    fields={
        "index": serializers.IntegerField(required=False, min_value=0, help_text="The item of the prediction (0)."),
        "label": serializers.CharField(required=False, min_length=1, help_text="The right label (classification)."),
        "labels": serializers.ListField(
            child=serializers.CharField(min_length=1), required=False, help_text="Multi-label."
        ),
        "entities": serializers.ListField(
            child=serializers.DictField(), required=False, help_text="The right entities: [{type, text, start?, end?}]."
        ),
        "reply": serializers.CharField(required=False, min_length=1, help_text="A corrected reply (language models)."),
        "rating": serializers.IntegerField(required=False, min_value=1, max_value=5),
        "preference": inline_serializer(
            name="FeedbackPreference",
            fields={"preferred": serializers.CharField(min_length=1), "rejected": serializers.CharField(min_length=1)},
            required=False,
        ),
    },
)
FeedbackObject = inline_serializer(
    name="Feedback",
    fields={
        "id": serializers.CharField(),
        "object": serializers.CharField(default="feedback"),
        "prediction": serializers.CharField(),
        "index": serializers.IntegerField(),
        "model": serializers.CharField(),
        "predicted": serializers.DictField(),
        "label": serializers.CharField(allow_null=True),
        "labels": serializers.ListField(child=serializers.CharField(), allow_null=True),
        "entities": serializers.ListField(child=serializers.DictField(), allow_null=True),
        "reply": serializers.CharField(allow_null=True),
        "rating": serializers.IntegerField(allow_null=True),
        "preference": serializers.DictField(allow_null=True),
        "correct": serializers.BooleanField(allow_null=True),
        "new_labels": serializers.ListField(child=serializers.CharField()),
        "replaced": serializers.BooleanField(),
        "source": serializers.CharField(),
        "created_at": serializers.IntegerField(),
        "updated_at": serializers.IntegerField(),
    },
)


def feedback_object(feedback: Feedback, replaced: bool = False) -> dict[str, Any]:
    record: PredictionRecord = feedback.record
    return {
        "id": feedback.id,
        "object": "feedback",
        "prediction": record.request_id,
        "index": record.index,
        "model": record.model_id,
        "predicted": {
            "label": record.label or None,
            "labels": record.labels,
            "confidence": record.confidence,
            "handoff": record.handoff,
        },
        "label": feedback.label or None,
        "labels": feedback.labels or None,
        "entities": feedback.entities,
        "reply": feedback.reply or None,
        "rating": feedback.rating,
        "preference": feedback.preference,
        "correct": feedback.correct,
        "new_labels": feedback.new_labels,
        "replaced": replaced,
        "source": feedback.source,
        "created_at": unix_seconds(feedback.created_at),
        "updated_at": unix_seconds(feedback.updated_at),
    }


class _FeedbackView(APIView):
    endpoint: str = PredictionRecord.Endpoint.PREDICTION

    def post(self, request: Request, request_id: str) -> Response:
        body = inputs.feedback_body(request_body(request))
        recorded = services.record_feedback(
            tenant=request_tenant(request), request_id=request_id, endpoint=self.endpoint, body=body
        )
        return Response(
            feedback_object(recorded.feedback, recorded.replaced),
            status=status.HTTP_200_OK if recorded.replaced else status.HTTP_201_CREATED,
        )


_DESCRIPTION = (
    "One correction per answered item (``index``, default 0): the right label (classification), "
    "labels (multi-label), entities (tagging), a corrected reply, a preferred answer between two "
    "(language models), or a rating 1-5 (any model). A second post for the same item replaces the "
    "first (200, ``replaced``: true). A label the model does not know is accepted and listed in "
    "``new_labels``. An unknown, expired or another organisation's id is a 404."
)
_RESPONSES = {201: FeedbackObject, 200: FeedbackObject, **BODY_ERRORS}


class PredictionFeedbackView(_FeedbackView):
    endpoint = PredictionRecord.Endpoint.PREDICTION

    @extend_schema(
        summary="Correct a prediction", description=_DESCRIPTION, request=FeedbackBodySerializer, responses=_RESPONSES
    )
    def post(self, request: Request, request_id: str) -> Response:
        return super().post(request, request_id)


class ChatCompletionFeedbackView(_FeedbackView):
    endpoint = PredictionRecord.Endpoint.CHAT

    @extend_schema(
        summary="Correct a chat completion",
        description=_DESCRIPTION,
        request=FeedbackBodySerializer,
        responses=_RESPONSES,
    )
    def post(self, request: Request, request_id: str) -> Response:
        return super().post(request, request_id)


class CompletionFeedbackView(_FeedbackView):
    endpoint = PredictionRecord.Endpoint.COMPLETION

    @extend_schema(
        summary="Correct a text completion",
        description=_DESCRIPTION,
        request=FeedbackBodySerializer,
        responses=_RESPONSES,
    )
    def post(self, request: Request, request_id: str) -> Response:
        return super().post(request, request_id)


ImportObject = inline_serializer(
    name="FeedbackImport",
    fields={
        "object": serializers.CharField(default="feedback.import"),
        "file": serializers.CharField(),
        "recorded": serializers.IntegerField(),
        "replaced": serializers.IntegerField(),
        "failed": serializers.IntegerField(),
        "errors": serializers.ListField(child=serializers.DictField()),
        "new_labels": serializers.ListField(child=serializers.CharField()),
    },
)
ExportObject = inline_serializer(
    name="FeedbackExport",
    fields={
        "object": serializers.CharField(default="feedback.export"),
        "model": serializers.CharField(),
        "file": serializers.DictField(help_text="The training file (purpose fine-tune), as GET /v1/files/{id}."),
        "rows": serializers.IntegerField(),
        "duplicates": serializers.IntegerField(help_text="Corrections already in the training data, left out."),
        "without_text": serializers.IntegerField(help_text="Corrections whose input is no longer kept."),
        "rejected": serializers.ListField(child=serializers.DictField(), help_text="Rows the pack refused."),
        "new_labels": serializers.ListField(child=serializers.CharField()),
    },
)


class FeedbackImportView(APIView):
    @extend_schema(
        summary="Record corrections in bulk from an uploaded file",
        description=(
            "Upload a JSONL file with purpose 'feedback', one correction per line: "
            '{"prediction": "pred-..." | "chatcmpl-..." | "cmpl-...", "index"?: 0, <label|labels|entities|'
            "reply|rating|preference>}. Each line is recorded as if posted alone; bad lines are listed "
            "with their number and the others are kept."
        ),
        request=inline_serializer(name="FeedbackImportBody", fields={"file": serializers.CharField(min_length=1)}),
        responses={200: ImportObject, **BODY_ERRORS},
    )
    def post(self, request: Request) -> Response:
        body = inputs.require_object(request_body(request))
        report = exports.import_feedback(tenant=request_tenant(request), file_id=body.get("file"))
        return Response(
            {
                "object": "feedback.import",
                "file": body.get("file"),
                "recorded": report.recorded,
                "replaced": report.replaced,
                "failed": report.error_count,
                "errors": report.errors,
                "new_labels": sorted(report.new_labels),
            }
        )


class FeedbackExportView(APIView):
    @extend_schema(
        summary="Write a training file from a model's corrected predictions",
        description=(
            "Body: {model}. The corrections of the model's logged predictions whose input is still kept "
            "become rows of its pack's schema in a new file (purpose fine-tune), ready for a new job; "
            "rows already in the model's training file are left out; rows the pack's validation "
            "refuses (e.g. a label a fixed-label task does not have) are listed, not written. "
            'format "preference" (causal-LM models): the preference pairs of the feedback in OpenAI\'s DPO '
            'format, for a job with method {"type": "dpo"}.'
        ),
        request=inline_serializer(
            name="FeedbackExportBody",
            fields={
                "model": serializers.CharField(min_length=1),
                "format": serializers.ChoiceField(choices=exports.EXPORT_FORMATS, required=False),
            },
        ),
        responses={201: ExportObject, **BODY_ERRORS},
    )
    def post(self, request: Request) -> Response:
        from tunery.files.serializers import file_object

        body = inputs.require_object(request_body(request))
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model is required: the id of a fine-tuned model ('ft:...').", param="model")
        export_format = body.get("format", "training")
        if not isinstance(export_format, str):
            raise InvalidRequest("format must be a string.", param="format")
        report = exports.export_feedback(tenant=request_tenant(request), model_id=model, export_format=export_format)
        return Response(
            {
                "object": "feedback.export",
                "model": model,
                "file": file_object(report.file),
                "rows": report.rows,
                "duplicates": report.duplicates,
                "without_text": report.without_text,
                "rejected": report.rejected,
                "new_labels": report.new_labels,
            },
            status=status.HTTP_201_CREATED,
        )


MonitoringWindow = inline_serializer(
    name="MonitoringWindow",
    fields={
        "start": serializers.IntegerField(),
        "end": serializers.IntegerField(),
        "volume": serializers.IntegerField(),
        "mean_confidence": serializers.FloatField(allow_null=True),
        "confidence_histogram": serializers.ListField(child=serializers.IntegerField()),
        "handoff_rate": serializers.FloatField(allow_null=True),
        "labels": serializers.DictField(child=serializers.IntegerField()),
        "psi": serializers.FloatField(allow_null=True),
        "drift": serializers.BooleanField(),
        "mean_input_length": serializers.FloatField(allow_null=True),
        "feedback": serializers.IntegerField(),
        "live_accuracy": serializers.FloatField(allow_null=True),
    },
)
MonitoringObject = inline_serializer(
    name="DeploymentMonitoring",
    fields={
        "object": serializers.CharField(default="deployment.monitoring"),
        "deployment": serializers.CharField(),
        "model": serializers.CharField(),
        "window_seconds": serializers.IntegerField(),
        "drift_threshold": serializers.FloatField(),
        "training_labels": serializers.DictField(child=serializers.IntegerField()),
        "evaluation_accuracy": serializers.FloatField(allow_null=True),
        "current": MonitoringWindow,
        "series": serializers.ListField(child=MonitoringWindow),
        "retraining": inline_serializer(
            name="RetrainingProposal",
            fields={
                "mode": serializers.ChoiceField(choices=["suggest", "create"]),
                "corrections": serializers.IntegerField(),
                "min_corrections": serializers.IntegerField(),
                "alert": inline_serializer(
                    name="RetrainingAlert",
                    fields={
                        "rule": serializers.CharField(),
                        "kind": serializers.ChoiceField(choices=["drift", "accuracy_drop", "handoff_rate"]),
                        "fired_at": serializers.IntegerField(),
                    },
                    allow_null=True,
                    help_text="The deployment's latest quality alert since the model's last continued fine-tune.",
                ),
                "trigger": serializers.CharField(
                    allow_null=True, help_text="What makes it ready: 'corrections' or 'alert:<kind>'; null when not."
                ),
                "ready": serializers.BooleanField(),
                "last_job": serializers.CharField(allow_null=True),
                "request": serializers.DictField(),
            },
            allow_null=True,
            help_text="The retraining proposal (the tenant's setting; null when off): corrections since the "
            "model's last continued fine-tune, and the continued job that is suggested or created when ready.",
        ),
    },
)
MAX_WINDOW_SECONDS = 7 * 24 * 3600
MAX_BUCKETS = 48


def _int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be a whole number from {low} to {high}.", param=name, code="invalid_value")
    return value


class DeploymentMonitoringView(APIView):
    @extend_schema(
        summary="Drift and quality of a deployment's live traffic",
        description=(
            "The last `window` seconds (default 3600) of the deployment's logged predictions: volume, "
            "confidence (mean, 10-bin histogram), hand-off rate, predicted labels against the training "
            "labels (population stability index; `drift` when it reaches `drift_threshold` on at least 30 "
            "labelled items), mean input length and live accuracy from feedback; `series` splits the same "
            "span into `buckets` windows (default 12) for charts."
        ),
        parameters=[
            OpenApiParameter("window", {"type": "integer", "minimum": 60, "maximum": MAX_WINDOW_SECONDS}),
            OpenApiParameter("buckets", {"type": "integer", "minimum": 1, "maximum": MAX_BUCKETS}),
        ],
        responses={200: MonitoringObject, **ERRORS},
    )
    def get(self, request: Request, pk: str) -> Response:
        deployment = (
            scope_to_tenant(Deployment.objects.all(), request_tenant(request))
            .select_related("model__job", "tenant")
            .filter(pk=pk)
            .first()
        )
        if deployment is None:
            raise NotFound(f"No deployment with id '{pk}' found.", param="id")
        window = _int_query(request, "window", 3600, 60, MAX_WINDOW_SECONDS)
        buckets = _int_query(request, "buckets", 12, 1, MAX_BUCKETS)
        health = monitoring.deployment_health(deployment, window, buckets).to_json()
        return Response({**health, "retraining": retraining.status(deployment)})


AlertRuleObject = inline_serializer(
    name="AlertRule",
    fields={
        "id": serializers.CharField(),
        "object": serializers.CharField(default="alert_rule"),
        "deployment": serializers.CharField(),
        "kind": serializers.ChoiceField(choices=AlertRule.Kind.choices),
        "threshold": serializers.FloatField(),
        "window_minutes": serializers.IntegerField(),
        "label": serializers.CharField(allow_null=True),
        "webhook_url": serializers.CharField(),
        "secret": serializers.CharField(required=False, help_text="Only in the answer that creates the rule."),
        "enabled": serializers.BooleanField(),
        "firing": serializers.BooleanField(),
        "last_value": serializers.FloatField(allow_null=True),
        "last_checked_at": serializers.IntegerField(allow_null=True),
        "created_at": serializers.IntegerField(),
    },
)
AlertRuleBody = inline_serializer(
    name="AlertRuleBody",
    fields={
        "deployment": serializers.CharField(),
        "kind": serializers.ChoiceField(choices=AlertRule.Kind.choices),
        "webhook_url": serializers.URLField(),
        "threshold": serializers.FloatField(required=False, help_text="Default: the pack's for this kind."),
        "window_minutes": serializers.IntegerField(required=False, min_value=1),
        "label": serializers.CharField(required=False, help_text="The label a negative_surge rule counts."),
    },
)
DeliveryObject = inline_serializer(
    name="WebhookDelivery",
    fields={
        "id": serializers.CharField(),
        "object": serializers.CharField(default="webhook_delivery"),
        "rule": serializers.CharField(),
        "url": serializers.CharField(),
        "payload": serializers.DictField(),
        "status": serializers.ChoiceField(choices=WebhookDelivery.Status.choices),
        "attempts": serializers.IntegerField(),
        "last_status_code": serializers.IntegerField(allow_null=True),
        "last_error": serializers.CharField(allow_null=True),
        "created_at": serializers.IntegerField(),
        "delivered_at": serializers.IntegerField(allow_null=True),
    },
)


def alert_rule_object(rule: AlertRule, with_secret: bool = False) -> dict[str, Any]:
    data = {
        "id": rule.id,
        "object": "alert_rule",
        "deployment": rule.deployment_id,
        "kind": rule.kind,
        "threshold": rule.threshold,
        "window_minutes": rule.window_minutes,
        "label": rule.label or None,
        "webhook_url": rule.webhook_url,
        "enabled": rule.enabled,
        "firing": rule.firing,
        "last_value": rule.last_value,
        "last_checked_at": unix_seconds(rule.last_checked_at),
        "created_at": unix_seconds(rule.created_at),
    }
    if with_secret:
        data["secret"] = rule.secret
    return data


def delivery_object(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "object": "webhook_delivery",
        "rule": delivery.rule_id,
        "url": delivery.url,
        "payload": delivery.payload,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error or None,
        "created_at": unix_seconds(delivery.created_at),
        "delivered_at": unix_seconds(delivery.delivered_at),
    }


class AlertRuleViewSet(TenantScopedViewSet):
    scoped_model = AlertRule
    object_name = "alert rule"

    def refine_queryset(self, queryset):
        return queryset.order_by("-created_at", "-id")

    @extend_schema(summary="List alert rules", responses={200: list_of("AlertRuleList", AlertRuleObject), **ERRORS})
    def list(self, request: Request) -> Response:
        return Response(
            {"object": "list", "data": [alert_rule_object(r) for r in self.get_queryset()], "has_more": False}
        )

    @extend_schema(
        summary="Create an alert rule (a signed webhook when it fires)",
        description=(
            "Kinds: handoff_rate (above threshold over window_minutes), drift (label PSI above threshold), "
            "accuracy_drop (live accuracy below the evaluation's by more than threshold), negative_surge "
            "(share of `label` at least threshold and higher than the window before). Omitted threshold, "
            "window and label take the pack's defaults (GET /v1/alert_rules/defaults). Each delivery is "
            "a JSON POST with the header Tunery-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "
            "'<t>.' + body, keyed with the rule's secret>, shown once in this answer. Webhook URLs on "
            "loopback or private addresses are refused unless the operator allows them."
        ),
        request=AlertRuleBody,
        responses={201: AlertRuleObject, **BODY_ERRORS},
    )
    def create(self, request: Request) -> Response:
        body = inputs.require_object(request_body(request))
        rule = services.create_alert_rule(tenant=self.tenant, body=body, actor=self.actor)
        return Response(alert_rule_object(rule, with_secret=True), status=status.HTTP_201_CREATED)

    @extend_schema(summary="Retrieve an alert rule", responses={200: AlertRuleObject, **ERRORS})
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(alert_rule_object(self.get_object()))

    @extend_schema(summary="Delete an alert rule", responses={200: AlertRuleObject, **ERRORS})
    def destroy(self, request: Request, pk: str) -> Response:
        rule = self.get_object()
        services.delete_alert_rule(rule=rule, actor=self.actor)
        return Response({"id": pk, "object": "alert_rule", "deleted": True})

    @extend_schema(
        summary="An alert rule's webhook deliveries (newest first)",
        responses={200: list_of("WebhookDeliveryList", DeliveryObject), **ERRORS},
    )
    def deliveries(self, request: Request, pk: str) -> Response:
        rule = self.get_object()
        data = [delivery_object(d) for d in rule.deliveries.order_by("-created_at", "-id")[:100]]
        return Response({"object": "list", "data": data, "has_more": False})


class AlertDefaultsView(APIView):
    @extend_schema(
        summary="The default alert rules of a vertical pack",
        parameters=[OpenApiParameter("vertical", str, description="A pack id; omitted: the rules of every pack.")],
        responses={
            200: list_of(
                "AlertRuleDefaults",
                inline_serializer(
                    name="AlertRuleDefault",
                    fields={
                        "kind": serializers.CharField(),
                        "threshold": serializers.FloatField(),
                        "window_minutes": serializers.IntegerField(),
                        "label": serializers.CharField(allow_null=True),
                    },
                ),
            ),
            **ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        request_tenant(request)
        rules = alerts.defaults_for(request.query_params.get("vertical", ""))
        data = [
            {"kind": r.kind, "threshold": r.threshold, "window_minutes": r.window_minutes, "label": r.label or None}
            for r in rules
        ]
        return Response({"object": "list", "data": data, "has_more": False})
