"""Serving endpoints: thin views that parse, call a service, serialize.

- ``/v1/deployments`` (native): deploy, list, retrieve, change (name, challenger in shadow or canary
  mode, gate), promote, roll back, history, undeploy;
- ``/v1/predictions`` (native): classification, tagging and ranking with the pack's post-processing;
- ``/v1/chat/completions`` and ``/v1/completions`` (OpenAI's shapes, streaming included) for
  fine-tuned causal LMs.

Like every API view they are limited per tenant by ``TenantRateThrottle`` (REST_FRAMEWORK's
DEFAULT_THROTTLE_CLASSES)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db.models import Q
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tunery.core.errors import NotFound, PayloadTooLarge
from tunery.core.schema import BODY_ERRORS, ERRORS, error_responses, list_of
from tunery.core.scoping import TenantScopedViewSet, request_tenant
from tunery.serving import conf, gate, inputs, routing, selectors, services, traffic
from tunery.serving.models import ChampionPeriod, Deployment
from tunery.serving.ratelimit import PREDICTIONS_SCOPE
from tunery.serving.schema import (
    ChatCompletionBody,
    CompletionBody,
    DeploymentBody,
    DeploymentChangeBody,
    PredictionBody,
)

#: One model's counters on a deployment (role: champion, challenger (canary) or shadow).
TrafficObject = inline_serializer(
    name="DeploymentTraffic",
    fields={
        "model": serializers.CharField(),
        "role": serializers.ChoiceField(choices=[routing.CHAMPION, routing.CHALLENGER, routing.SHADOW]),
        "requests": serializers.IntegerField(),
        "items": serializers.IntegerField(),
        "shadow_compared": serializers.IntegerField(),
        "agreement": serializers.FloatField(allow_null=True),
        "mean_confidence": serializers.FloatField(allow_null=True),
        "handoff_rate": serializers.FloatField(allow_null=True),
        "mean_latency_ms": serializers.FloatField(allow_null=True),
    },
)
DeploymentObject = inline_serializer(
    name="Deployment",
    fields={
        "id": serializers.CharField(),
        "object": serializers.CharField(default="deployment"),
        "model": serializers.CharField(),
        "status": serializers.ChoiceField(choices=Deployment.Status.choices),
        "kind": serializers.CharField(),
        "precision": serializers.CharField(),
        "error": serializers.CharField(allow_null=True),
        "name": serializers.CharField(allow_null=True),
        "champion": serializers.CharField(),
        "challenger": serializers.CharField(allow_null=True),
        "mode": serializers.ChoiceField(choices=Deployment.Mode.choices, allow_null=True),
        "canary_share": serializers.FloatField(),
        "evaluation_file": serializers.CharField(allow_null=True),
        "gate_margin": serializers.FloatField(),
        "traffic": serializers.ListField(child=TrafficObject),
        "created_at": serializers.IntegerField(),
        "updated_at": serializers.IntegerField(),
    },
)
ChampionPeriodObject = inline_serializer(
    name="ChampionPeriod",
    fields={
        "object": serializers.CharField(default="deployment.champion"),
        "model": serializers.CharField(),
        "action": serializers.ChoiceField(choices=ChampionPeriod.Action.choices),
        "actor": serializers.CharField(),
        "gate": serializers.DictField(allow_null=True),
        "started_at": serializers.IntegerField(),
        "ended_at": serializers.IntegerField(allow_null=True),
    },
)
#: Inference also answers 503 ``model_unavailable`` when a deployed model cannot be loaded.
INFERENCE_ERRORS = {**BODY_ERRORS, **error_responses(503)}
#: What a chat or text completion answers (streamed as server-sent events when the body asks for it).
GenerationObject = inline_serializer(
    name="Generation",
    fields={
        "id": serializers.CharField(),
        "object": serializers.CharField(),
        "created": serializers.IntegerField(),
        "model": serializers.CharField(),
        "choices": serializers.ListField(child=serializers.DictField()),
        "usage": serializers.DictField(),
    },
)
#: A completion, or with ``"stream": true`` its chunks as server-sent events (``data: {...}`` lines).
GENERATION_RESPONSES = {
    (200, "application/json"): GenerationObject,
    (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR),
    **INFERENCE_ERRORS,
}


def deployment_object(deployment: Deployment) -> dict[str, Any]:
    return {
        "id": deployment.id,
        "object": "deployment",
        "model": deployment.model_id,
        "status": deployment.status,
        "kind": deployment.kind,
        "precision": deployment.precision or conf.serving_precision(),
        "error": deployment.error or None,
        "name": deployment.name or None,
        "champion": deployment.model_id,
        "challenger": deployment.challenger_id,
        "mode": deployment.mode or None,
        "canary_share": deployment.canary_share,
        "evaluation_file": deployment.evaluation_file_id,
        "gate_margin": deployment.gate_margin,
        "traffic": traffic.stats(deployment.id),
        "created_by": deployment.created_by,
        "created_at": int(deployment.created_at.timestamp()),
        "updated_at": int(deployment.updated_at.timestamp()),
    }


def champion_period_object(period: ChampionPeriod) -> dict[str, Any]:
    return {
        "object": "deployment.champion",
        "model": period.model_id,
        "action": period.action,
        "actor": period.actor,
        "gate": period.gate,
        "started_at": int(period.started_at.timestamp()),
        "ended_at": int(period.ended_at.timestamp()) if period.ended_at is not None else None,
    }


def request_body(request: Request) -> Any:
    try:
        return request.data
    except RequestDataTooBig as exc:
        raise PayloadTooLarge("The request body is too large.", code="request_too_large") from exc


class DeploymentViewSet(TenantScopedViewSet):
    scoped_model = Deployment
    object_name = "deployment"

    def refine_queryset(self, queryset):
        return queryset.select_related("model").order_by("-created_at", "-id")

    def get_object(self) -> Deployment:
        """By id or by the deployment's stable name (within the tenant's deployments only)."""
        key = self.kwargs[self.lookup_url_kwarg]
        found = self.get_queryset().filter(Q(pk=key) | Q(name=key)).first() if key else None
        if found is None:
            raise NotFound(f"No deployment with id or name '{key}' found.", param="id")
        return found

    @extend_schema(
        summary="List deployments",
        responses={200: list_of("DeploymentList", DeploymentObject), **ERRORS},
    )
    def list(self, request: Request) -> Response:
        data = [deployment_object(d) for d in self.get_queryset()]
        return Response({"object": "list", "data": data, "has_more": False})

    @extend_schema(summary="Retrieve a deployment", responses={200: DeploymentObject, **ERRORS})
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(deployment_object(self.get_object()))

    @extend_schema(
        summary="Deploy a fine-tuned model",
        description=(
            "precision (optional): 'int8' serves a whole encoder model dynamically quantized on CPU, "
            "'bf16' under bf16 autocast on CPUs with bf16 units (fp32 elsewhere), 'fp32' in full "
            "precision; without it the server's TUNERY_SERVING_PRECISION applies."
        ),
        request=DeploymentBody,
        responses={201: DeploymentObject, 200: DeploymentObject, **BODY_ERRORS},
    )
    def create(self, request: Request) -> Response:
        body = inputs.require_object(request_body(request))
        precision = inputs.deployment_precision(body) if "precision" in body else None
        changes = inputs.deployment_changes(body)  # all checked before anything is loaded
        services.precheck(tenant=self.tenant, changes=changes)
        deployment, created = services.deploy(
            tenant=self.tenant, model_id=inputs.model_id(body), actor=self.actor, precision=precision
        )
        deployment = services.change(tenant=self.tenant, deployment=deployment, changes=changes, actor=self.actor)
        return Response(
            deployment_object(deployment), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

    @extend_schema(
        summary="Change a deployment: name, challenger, traffic mode, gate",
        description=(
            "challenger: a fine-tuned model of the champion's task (null removes it), with mode 'shadow' "
            "(it answers a copy of the traffic sent to the deployment; its answers are counted, never "
            "returned) or 'canary' (it answers canary_share of the requests addressed to the deployment's "
            "id or name). evaluation_file pins the test file the promotion gate evaluates on (null: no "
            "gate); gate_margin is how much worse on the pack's selection metric a challenger may be."
        ),
        request=DeploymentChangeBody,
        responses={200: DeploymentObject, **BODY_ERRORS},
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        deployment = self.get_object()
        changes = inputs.deployment_changes(inputs.require_object(request_body(request)))
        deployment = services.change(tenant=self.tenant, deployment=deployment, changes=changes, actor=self.actor)
        return Response(deployment_object(deployment))

    @extend_schema(
        summary="Promote the challenger to champion",
        description=(
            "Atomic: the challenger becomes the champion and the history records it. With an evaluation "
            "file pinned, both models are evaluated on it first, and a challenger worse than the champion "
            "on the pack's selection metric by more than gate_margin is refused (409 gate_refused, the "
            "comparison in error.comparison)."
        ),
        request=None,
        responses={200: DeploymentObject, **ERRORS},
    )
    def promote(self, request: Request, pk: str) -> Response:
        deployment = gate.promote(tenant=self.tenant, deployment=self.get_object(), actor=self.actor)
        return Response(deployment_object(deployment))

    @extend_schema(
        summary="Roll back to the previous champion",
        description="The model that served before the current champion serves again (no gate: it served before).",
        request=None,
        responses={200: DeploymentObject, **ERRORS},
    )
    def rollback(self, request: Request, pk: str) -> Response:
        deployment = services.rollback(tenant=self.tenant, deployment=self.get_object(), actor=self.actor)
        return Response(deployment_object(deployment))

    @extend_schema(
        summary="Which model served when",
        responses={200: list_of("ChampionHistory", ChampionPeriodObject), **ERRORS},
    )
    def history(self, request: Request, pk: str) -> Response:
        periods = selectors.deployment_history(self.get_object())
        return Response({"object": "list", "data": [champion_period_object(p) for p in periods], "has_more": False})

    @extend_schema(summary="Undeploy a model", responses={200: DeploymentObject, **ERRORS})
    def destroy(self, request: Request, pk: str) -> Response:
        deployment = self.get_object()
        services.undeploy(deployment=deployment, actor=self.actor)
        return Response({"id": pk, "object": "deployment", "model": deployment.model_id, "deleted": True})


class PredictionView(APIView):
    rate_limit_scope = PREDICTIONS_SCOPE

    @extend_schema(
        summary="Predict with a deployed classification, tagging or ranking model",
        description=(
            "Body: {model, inputs: [text | {field: text, ...}]} or, for ranking models, "
            "{model, user, items: [text | {text, id, ...}]}. Results carry the pack's post-processing. "
            "model: a deployed model's id ('ft:...', that model answers) or a deployment's id or name "
            "(its champion answers, or in canary mode sometimes its challenger: see served_by)."
        ),
        request=PredictionBody,
        responses={
            200: inline_serializer(
                name="Predictions",
                fields={
                    "object": serializers.CharField(),
                    "model": serializers.CharField(help_text="The model that answered."),
                    "deployment": serializers.CharField(allow_null=True),
                    "served_by": serializers.ChoiceField(
                        choices=[routing.CHAMPION, routing.CHALLENGER], help_text="Which of the deployment's models."
                    ),
                    "data": serializers.ListField(child=serializers.DictField()),
                },
            ),
            **INFERENCE_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        parsed = inputs.prediction_request(request_body(request))
        return Response(services.predict(tenant=request_tenant(request), request=parsed))


class _GenerationView(APIView):
    rate_limit_scope = PREDICTIONS_SCOPE
    chat = True

    def post(self, request: Request) -> Response | StreamingHttpResponse:
        body = inputs.require_object(request_body(request))
        result = services.generate(tenant=request_tenant(request), body=body, chat=self.chat)
        if isinstance(result, dict):
            return Response(result)
        response = StreamingHttpResponse(result, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass events through as they come
        return response


class ChatCompletionView(_GenerationView):
    chat = True

    @extend_schema(
        summary="Chat completion with a fine-tuned causal LM (OpenAI shape)",
        request=ChatCompletionBody,
        responses=GENERATION_RESPONSES,
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        return super().post(request)


class CompletionView(_GenerationView):
    chat = False

    @extend_schema(
        summary="Text completion with a fine-tuned causal LM (OpenAI shape)",
        request=CompletionBody,
        responses=GENERATION_RESPONSES,
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        return super().post(request)
