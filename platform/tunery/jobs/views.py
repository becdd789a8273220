from __future__ import annotations

from django.db.models.fields.json import KeyTransform
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework.request import Request
from rest_framework.response import Response

from tunery.core.pagination import cursor_page
from tunery.core.parsers import BoundedJSONParser
from tunery.core.schema import BODY_ERRORS, ERRORS, PAGE_PARAMETERS, list_of, page_parameters
from tunery.core.scoping import TenantScopedViewSet
from tunery.jobs import runner, services, tracking
from tunery.jobs.models import FineTuningJob
from tunery.jobs.serializers import (
    CheckpointSerializer,
    DryRunSerializer,
    EventSerializer,
    JobCreateSerializer,
    JobSerializer,
    checkpoint_object,
    event_object,
    job_object,
)

JOB_RESPONSES = {200: JobSerializer, **ERRORS}


#: What a page of jobs renders: the job's own columns and one or two of each joined row's (the
#: joined tables' other columns cost a third of the list's time to select and build).
LIST_COLUMNS = (
    *(field.name for field in FineTuningJob._meta.concrete_fields),
    "tenant__slug",
    "base_model__name",
    "fine_tuned_model__id",
    "fine_tuned_model__deleted_at",
)


@extend_schema_view(
    list=extend_schema(
        summary="List fine-tuning jobs",
        parameters=[
            *PAGE_PARAMETERS,
            OpenApiParameter(
                "metadata",
                OpenApiTypes.OBJECT,
                style="deepObject",
                explode=True,
                description="metadata[key]=value filter",
            ),
        ],
        responses={200: list_of("FineTuningJobList", JobSerializer), **ERRORS},
    ),
    create=extend_schema(
        summary="Create a fine-tuning job (or, with dry_run, check it and show what it would train with)",
        request=JobCreateSerializer,
        responses={
            200: PolymorphicProxySerializer(
                component_name="FineTuningJobOrDryRun",
                serializers=[JobSerializer, DryRunSerializer],
                resource_type_field_name=None,
            ),
            **BODY_ERRORS,
        },
    ),
    retrieve=extend_schema(summary="Retrieve a fine-tuning job", responses=JOB_RESPONSES),
)
class FineTuningJobViewSet(TenantScopedViewSet):
    scoped_model = FineTuningJob
    object_name = "fine-tuning job"
    serializer_class = JobSerializer
    parser_classes = [BoundedJSONParser]

    def refine_queryset(self, queryset):
        return queryset.select_related("base_model", "tenant", "fine_tuned_model", "parent_checkpoint")

    def list(self, request: Request) -> Response:
        jobs = self.get_queryset().only(*LIST_COLUMNS)
        for param, value in request.query_params.items():
            if param.startswith("metadata[") and param.endswith("]"):
                key = param[len("metadata[") : -1]
                annotation = f"_metadata_{len(jobs.query.annotations)}"
                jobs = jobs.annotate(**{annotation: KeyTransform(key, "metadata")}).filter(**{annotation: value})
        return Response(cursor_page(request, jobs, job_object))

    def create(self, request: Request) -> Response:
        checked = services.check_create_request(self.tenant, request.data)
        if checked.dry_run:
            return Response(services.dry_run(tenant=self.tenant, checked=checked))
        job = services.create_job(tenant=self.tenant, checked=checked, actor=self.actor)
        return Response(job_object(self.get_queryset().get(pk=job.pk)))

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(job_object(self.get_object()))

    @extend_schema(summary="Cancel a fine-tuning job", request=None, responses=JOB_RESPONSES)
    def cancel(self, request: Request, pk: str) -> Response:
        return Response(job_object(services.cancel_job(job=self.get_object(), actor=self.actor)))

    @extend_schema(summary="Pause a fine-tuning job", request=None, responses=JOB_RESPONSES)
    def pause(self, request: Request, pk: str) -> Response:
        return Response(job_object(services.pause_job(job=self.get_object(), actor=self.actor)))

    @extend_schema(summary="Resume a paused fine-tuning job", request=None, responses=JOB_RESPONSES)
    def resume(self, request: Request, pk: str) -> Response:
        return Response(job_object(services.resume_job(job=self.get_object(), actor=self.actor)))

    @extend_schema(
        summary="List a job's events (newest first)",
        parameters=PAGE_PARAMETERS,
        responses={200: list_of("FineTuningJobEventList", EventSerializer), **ERRORS},
    )
    def events(self, request: Request, pk: str) -> Response:
        job = self.get_object()
        return Response(cursor_page(request, job.events.all(), event_object))

    @extend_schema(
        summary="Download a job's TensorBoard event files (tar.gz; the tensorboard integration)",
        responses={(200, "application/gzip"): OpenApiResponse(OpenApiTypes.BINARY), **ERRORS},
    )
    def tensorboard(self, request: Request, pk: str) -> StreamingHttpResponse:
        job = self.get_object()
        response = StreamingHttpResponse(
            tracking.tensorboard_archive(job, runner.output_dir(job)), content_type="application/gzip"
        )
        response["Content-Disposition"] = f'attachment; filename="{job.pk}-tensorboard.tar.gz"'
        return response

    @extend_schema(
        summary="List a job's checkpoints",
        parameters=page_parameters(default_limit=10),
        responses={200: list_of("FineTuningJobCheckpointList", CheckpointSerializer), **ERRORS},
    )
    def checkpoints(self, request: Request, pk: str) -> Response:
        job = self.get_object()
        checkpoints = job.checkpoints.select_related("job__base_model", "job__tenant", "job__fine_tuned_model")
        return Response(cursor_page(request, checkpoints, checkpoint_object, default_limit=10))
