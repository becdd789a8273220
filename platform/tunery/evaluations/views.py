"""/v1/evaluations: create, list (by model), retrieve and compare evaluations."""

from __future__ import annotations

from django.db.models import Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework.request import Request
from rest_framework.response import Response

from tunery.core.errors import InvalidRequest
from tunery.core.pagination import cursor_page
from tunery.core.schema import BODY_ERRORS, ERRORS, list_of, page_parameters
from tunery.core.scoping import TenantScopedViewSet
from tunery.evaluations import selectors, services
from tunery.evaluations.models import Evaluation
from tunery.evaluations.serializers import (
    EvaluationComparisonSerializer,
    EvaluationCreateSerializer,
    EvaluationObjectSerializer,
    evaluation_object,
)
from tunery.serving.inputs import require_object
from tunery.serving.views import request_body

MODEL_FILTER = OpenApiParameter("model", OpenApiTypes.STR, description="Only evaluations of this model.")
WITH = OpenApiParameter("with", OpenApiTypes.STR, required=True, description="The evaluation to compare with (b).")


@extend_schema_view(
    list=extend_schema(
        summary="List evaluations",
        parameters=[*page_parameters(), MODEL_FILTER],
        responses={200: list_of("EvaluationList", EvaluationObjectSerializer), **ERRORS},
    ),
    create=extend_schema(
        summary="Evaluate a fine-tuned model on a labelled file",
        request=EvaluationCreateSerializer,
        responses={200: EvaluationObjectSerializer, **BODY_ERRORS},
    ),
    retrieve=extend_schema(summary="Retrieve an evaluation", responses={200: EvaluationObjectSerializer, **ERRORS}),
)
class EvaluationViewSet(TenantScopedViewSet):
    scoped_model = Evaluation
    object_name = "evaluation"

    def refine_queryset(self, queryset):
        return queryset.defer("outputs")

    def list(self, request: Request) -> Response:
        queryset = self.get_queryset()
        model = request.query_params.get("model")
        if model:
            queryset = queryset.filter(Q(model_name=model) | Q(model_name="", model_id=model))
        return Response(cursor_page(request, queryset, evaluation_object))

    def create(self, request: Request) -> Response:
        body = require_object(request_body(request))
        evaluation = services.create_evaluation(tenant=self.tenant, body=body, actor=self.actor)
        return Response(evaluation_object(evaluation))

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(evaluation_object(self.get_object()))

    @extend_schema(
        summary="Compare two evaluations of the same file (paired bootstrap)",
        parameters=[WITH],
        responses={200: EvaluationComparisonSerializer, **ERRORS},
    )
    def compare(self, request: Request, pk: str) -> Response:
        other = request.query_params.get("with")
        if not other:
            raise InvalidRequest("with is required: the id of the evaluation to compare with.", param="with")
        a = selectors.tenant_evaluation(self.tenant, pk)
        b = selectors.tenant_evaluation(self.tenant, other, param="with")
        return Response(services.compare(a, b))
