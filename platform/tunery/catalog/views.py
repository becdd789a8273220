from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tunery.catalog import export, imports, services
from tunery.catalog.models import BaseModel, FineTunedModel
from tunery.core.errors import InvalidRequest, NotFound, PermissionDenied
from tunery.core.permissions import IsTenantAdmin, IsTenantMember
from tunery.core.schema import BODY_ERRORS, ERRORS, list_of
from tunery.core.scoping import request_tenant
from tunery.files.serializers import UploadedFileField
from tunery.files.uploads import LimitedHashingUploadHandler, accept_chunked_body
from tunery.jobs import selectors
from tunery.tenants.models import Tenant

ModelObject = inline_serializer(
    name="Model",
    fields={
        "id": serializers.CharField(),
        "object": serializers.CharField(default="model"),
        "created": serializers.IntegerField(),
        "owned_by": serializers.CharField(),
        "kind": serializers.ChoiceField(choices=["base", "fine-tuned"]),
    },
)


def base_model_object(model: BaseModel, tenant: Tenant) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": tenant.slug if model.tenant_id else "tunery",
        "kind": "base",
        "architecture": model.architecture,
        "parameters": model.parameters,
        "tasks": model.tasks,
        "description": model.description,
    }


def fine_tuned_model_object(model: FineTunedModel, tenant: Tenant) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": tenant.slug,
        "kind": "fine-tuned",
        "base_model": model.base_model.name,
        "fine_tuning_job": model.source_job_id,
        "checkpoint": model.checkpoint_id,
        "parent_model": model.parent_id,
        "vertical": model.vertical,
        "task": model.task,
        "metrics": model.metrics,
    }


def find_model(tenant: Tenant, model_id: str) -> BaseModel | FineTunedModel:
    if model_id.startswith("ft:"):
        found = selectors.fine_tuned_models(tenant).select_related("base_model").filter(pk=model_id).first()
    else:
        found = selectors.base_model_by_name(tenant, model_id)
    if found is None:
        raise NotFound(f"The model '{model_id}' does not exist or you do not have access to it.", param="model")
    return found


def model_object(model: BaseModel | FineTunedModel, tenant: Tenant) -> dict[str, Any]:
    if isinstance(model, FineTunedModel):
        return fine_tuned_model_object(model, tenant)
    return base_model_object(model, tenant)


ImportModelRequest = inline_serializer(
    name="ImportModelRequest",
    fields={
        "file": UploadedFileField(help_text="A Hugging Face model folder as .tar.gz, .tgz, .tar or .zip."),
        "name": serializers.RegexField(
            imports.NAME_PATTERN.pattern, help_text="The id your jobs pass as `model` (lowercase, digits, . _ -)."
        ),
        "description": serializers.CharField(required=False),
    },
)


class ModelListView(APIView):
    parser_classes = [MultiPartParser]  # POST is an upload; GET takes no body

    def get_permissions(self):
        if self.request.method == "POST":
            return [IsTenantAdmin()]
        return [IsTenantMember()]

    @extend_schema(
        summary="List base models you can fine-tune and your fine-tuned models",
        operation_id="list_models",
        responses={
            200: list_of("ModelList", ModelObject),
            **ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        tenant = request_tenant(request)
        by_name: dict[str, BaseModel] = {}
        for model in selectors.visible_base_models(tenant).order_by("name"):
            if model.name not in by_name or model.tenant_id is not None:  # a tenant's own model shadows
                by_name[model.name] = model
        data = [base_model_object(m, tenant) for m in by_name.values()]
        tuned = selectors.fine_tuned_models(tenant).select_related("base_model").order_by("-created_at")
        data += [fine_tuned_model_object(m, tenant) for m in tuned]
        return Response({"object": "list", "data": data, "has_more": False})

    @extend_schema(
        summary="Import a base model of your own (admin keys)",
        description=(
            "A Hugging Face model folder (config.json, safetensors weights, tokenizer files) as an archive. "
            "Pickle weights, remote code (.py files, auto_map) and architectures outside the allow-list are "
            "refused. Only your tenant sees the model and can fine-tune it."
        ),
        operation_id="import_model",
        request={"multipart/form-data": ImportModelRequest},
        responses={201: ModelObject, **BODY_ERRORS},
    )
    def post(self, request: Request) -> Response:
        tenant = request_tenant(request)
        limit = settings.TUNERY_MAX_MODEL_IMPORT_BYTES
        accept_chunked_body(request._request, limit)
        request._request.upload_handlers = [LimitedHashingUploadHandler(request._request, limit=limit)]
        uploaded = request.FILES.get("file")
        if uploaded is None:
            raise InvalidRequest("Send the model archive as the multipart field 'file'.", param="file", code="missing")
        model = imports.import_base_model(
            tenant=tenant,
            name=str(request.data.get("name") or ""),
            archive=Path(uploaded.temporary_file_path()),
            filename=uploaded.name or "",
            actor=request.user.actor,
            description=str(request.data.get("description") or ""),
        )
        return Response(base_model_object(model, tenant), status=201)


class ModelDetailView(APIView):
    def get_permissions(self):
        if self.request.method == "DELETE":
            return [IsTenantAdmin()]
        return [IsTenantMember()]

    @extend_schema(summary="Retrieve a model", operation_id="retrieve_model", responses={200: ModelObject, **ERRORS})
    def get(self, request: Request, model_id: str) -> Response:
        tenant = request_tenant(request)
        return Response(model_object(find_model(tenant, model_id), tenant))

    @extend_schema(
        summary="Delete a fine-tuned model or a base model you imported (admin keys)",
        operation_id="delete_model",
        responses={
            200: inline_serializer(
                name="ModelDeleted",
                fields={
                    "id": serializers.CharField(),
                    "object": serializers.CharField(),
                    "deleted": serializers.BooleanField(),
                },
            ),
            **ERRORS,
        },
    )
    def delete(self, request: Request, model_id: str) -> Response:
        tenant = request_tenant(request)
        model = find_model(tenant, model_id)
        if isinstance(model, BaseModel) and model.tenant_id == tenant.pk:  # the tenant's own upload
            imports.delete_base_model(model=model, actor=request.user.actor)
            return Response({"id": model_id, "object": "model", "deleted": True})
        if not isinstance(model, FineTunedModel):
            raise PermissionDenied(
                f"'{model_id}' is a base model; base models are managed by the platform operator.",
                param="model",
                code="base_model_not_deletable",
            )
        services.delete_fine_tuned_model(model=model, actor=request.user.actor)
        return Response({"id": model.id, "object": "model", "deleted": True})


class ModelContentView(APIView):
    @extend_schema(
        summary="Download a fine-tuned model (tar.gz in Hugging Face layout)",
        description=(
            "Safetensors weights (or the PEFT adapter plus the base model's reference), tokenizer, "
            "config with id2label/label2id, `tunery.json` (thresholds, calibration, target scale) and a "
            "model card README.md. Streamed; `merged=true` merges a LoRA adapter into its base first."
        ),
        operation_id="download_model",
        parameters=[OpenApiParameter("merged", bool, description="Merge a LoRA adapter into its base model.")],
        responses={(200, "application/gzip"): OpenApiResponse(OpenApiTypes.BINARY), **ERRORS},
    )
    def get(self, request: Request, model_id: str) -> StreamingHttpResponse:
        tenant = request_tenant(request)
        merged = parse_flag(request.query_params.get("merged"), "merged")
        if not model_id.startswith("ft:") and selectors.base_model_by_name(tenant, model_id) is not None:
            raise InvalidRequest(
                f"'{model_id}' is a base model; only fine-tuned models can be downloaded.",
                param="model",
                code="not_a_fine_tuned_model",
            )
        prepared = export.download(export.find_fine_tuned(tenant, model_id), merged=merged)
        response = StreamingHttpResponse(prepared.chunks, content_type="application/gzip")
        response["Content-Disposition"] = f'attachment; filename="{prepared.filename}"'
        return response


def parse_flag(value: str | None, param: str) -> bool:
    if value is None or value.lower() in ("false", "0", ""):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise InvalidRequest(f"{param} must be true or false, got {value!r}.", param=param, code="invalid_value")
