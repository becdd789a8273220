"""Serving endpoints: thin views that parse, call a service, serialize.

- ``/v1/deployments`` (native): deploy, list, retrieve, undeploy fine-tuned models;
- ``/v1/predictions`` (native): classification, tagging and ranking with the pack's post-processing;
- ``/v1/chat/completions`` and ``/v1/completions`` (OpenAI's shapes, streaming included) for
  fine-tuned causal LMs.

Like every API view they are limited per tenant by ``TenantRateThrottle`` (REST_FRAMEWORK's
DEFAULT_THROTTLE_CLASSES)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tunery.core.errors import PayloadTooLarge
from tunery.core.schema import BODY_ERRORS, ERRORS, error_responses, list_of
from tunery.core.scoping import TenantScopedViewSet, request_tenant
from tunery.serving import conf, inputs, services
from tunery.serving.models import Deployment
from tunery.serving.ratelimit import PREDICTIONS_SCOPE
from tunery.serving.schema import ChatCompletionBody, CompletionBody, DeploymentBody, PredictionBody

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
        "created_at": serializers.IntegerField(),
        "updated_at": serializers.IntegerField(),
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
        "created_by": deployment.created_by,
        "created_at": int(deployment.created_at.timestamp()),
        "updated_at": int(deployment.updated_at.timestamp()),
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
        deployment, created = services.deploy(
            tenant=self.tenant, model_id=inputs.model_id(body), actor=self.actor, precision=precision
        )
        return Response(
            deployment_object(deployment), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

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
            "{model, user, items: [text | {text, id, ...}]}. Results carry the pack's post-processing."
        ),
        request=PredictionBody,
        responses={
            200: inline_serializer(
                name="Predictions",
                fields={
                    "object": serializers.CharField(),
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
