"""OpenAI's fine-tuning objects (job, event, checkpoint) plus Tunery's extra fields.

Serializer classes document the shapes for the OpenAPI schema; rendering goes through plain
functions so list pages stay cheap."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tunery.core.timestamps import unix_seconds
from tunery.jobs import selectors
from tunery.jobs.hyperparameters import GPU_RANGE, KNOBS, SEED_RANGE, TUNERY_KNOBS, openai_hyperparameters
from tunery.jobs.lineage import requested_model_name
from tunery.jobs.models import FineTuningJob, JobCheckpoint, JobEvent
from tunery.jobs.selectors import checkpoint_model_name
from tunery.jobs.services import MAX_METADATA_KEYS, SUFFIX
from tunery.verticals import registry
from tunery_contract.vocabulary import AUTO, Knob


def fine_tuned_model_id(job: FineTuningJob) -> str | None:
    model = getattr(job, "fine_tuned_model", None)  # reverse one-to-one: absent until the job succeeds
    if model is None or model.deleted_at is not None:
        return None
    return model.id


def _task_defaults(job: FineTuningJob) -> dict[str, Any]:
    pack = registry.get_pack(job.vertical)
    task = next((t for t in pack.tasks if t.id == job.task), None) if pack is not None else None
    return dict(task.default_hyperparameters) if task is not None else {}


def _method(job: FineTuningJob, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``method`` object: supervised, or dpo with its ``beta``."""
    requested, resolved = job.requested_hyperparameters or {}, job.resolved_config or {}
    if requested.get("training_method") != "dpo":
        return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    beta = resolved.get("dpo_beta", requested.get("dpo_beta", "auto"))
    return {"type": "dpo", "dpo": {"hyperparameters": {**hyperparameters, "beta": beta}}}


def job_object(job: FineTuningJob) -> dict[str, Any]:
    hyperparameters = openai_hyperparameters(
        job.requested_hyperparameters or {}, job.resolved_config or {}, _task_defaults(job)
    )
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": unix_seconds(job.created_at),
        "finished_at": unix_seconds(job.finished_at),
        "estimated_finish": unix_seconds(job.estimated_finish),
        "model": requested_model_name(job),
        "fine_tuned_model": fine_tuned_model_id(job),
        "organization_id": job.tenant.slug,
        "status": job.status,
        "training_file": job.training_file_id,
        "validation_file": job.validation_file_id,
        "hyperparameters": hyperparameters,
        "method": _method(job, hyperparameters),
        "result_files": list(job.result_files or []),
        "trained_tokens": job.trained_tokens,
        "error": job.error or None,
        "seed": job.seed,
        "metadata": job.metadata or None,
        "integrations": list(job.integrations or []),
        "user_provided_suffix": job.suffix or None,
        # Tunery's additions
        "vertical": job.vertical,
        "vertical_version": job.vertical_version,
        "task": job.task,
        "teacher_model": job.teacher_model or None,
        "parent_model": job.parent_model_id,
        "parent_checkpoint": requested_model_name(job) if job.parent_checkpoint_id else None,
        "replay_fraction": job.replay_fraction,
        "gpus": job.gpus,
        "requested_action": job.requested_action or None,
        "requested_hyperparameters": job.requested_hyperparameters,
        "resolved_config": job.resolved_config or None,
        "column_mapping": job.column_mapping or None,
        "data_profile": job.data_profile or None,
        "estimate": job.estimate or None,
        "progress": job.progress or None,
        "attempts": job.attempts,
    }


def event_object(event: JobEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "object": "fine_tuning.job.event",
        "created_at": unix_seconds(event.created_at),
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": event.data,
    }


def checkpoint_object(checkpoint: JobCheckpoint) -> dict[str, Any]:
    job = checkpoint.job
    model_id = fine_tuned_model_id(job) or selectors.fine_tuned_model_id(job)
    metrics = {"step": float(checkpoint.step_number), **(checkpoint.metrics or {})}
    return {
        "id": checkpoint.id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": unix_seconds(checkpoint.created_at),
        "fine_tuning_job_id": job.id,
        "fine_tuned_model_checkpoint": checkpoint_model_name(model_id, checkpoint.step_number),
        "step_number": checkpoint.step_number,
        "metrics": metrics,
        "is_best": checkpoint.is_best,
        "kind": checkpoint.kind,
    }


PROFILE_HELP = (
    "Profile of the training data: rows, classes and examples per class, text lengths in whitespace "
    "words, duplicates, conflicting labels, overlap with the validation file, and warnings [{code, message}]."
)


ESTIMATE_HELP = (
    "The expected run on the job's worker class (training queue): seconds, memory_bytes, "
    "fits_in_memory, cost and currency (the queue's hourly price), the tokens_per_second it assumes "
    "and whether that was measured on earlier jobs of this base model, queue and task kind or a "
    "conservative default, and the rows, epochs and tokens per row it counted; a few-shot job's "
    "contrastive_epochs and the cross_validation_folds of its floor are counted too (its epochs are 0 "
    "when the stage's model is the fine-tuned one)."
)


class KnobField(serializers.Field):
    """One training knob of the request: a value within the vocabulary's range or "auto".
    Its OpenAPI schema (type, bounds, choices) comes from the same knob (:class:`KnobFieldSchema`)."""

    def __init__(self, api_name: str, **kwargs: Any) -> None:
        self.api_name = api_name
        self.knob = KNOBS[api_name]
        rule = ' "auto": the task\'s default' + (f", else {self.knob.auto_rule}." if self.knob.auto_rule else ".")
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", self.knob.nullable)
        kwargs.setdefault("help_text", self.knob.help[:1].upper() + self.knob.help[1:] + "." + rule)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        problem = self.knob.problem(data, auto=True)
        if problem is not None:
            raise serializers.ValidationError(f"{self.api_name} {problem}.", code="invalid_hyperparameter")
        return self.knob.normalise(data)

    def to_representation(self, value: Any) -> Any:
        return value


class KnobFieldSchema(OpenApiSerializerFieldExtension):
    target_class = KnobField

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        return {**knob_schema(self.target.knob), "description": self.target.help_text}


def knob_schema(knob: Knob) -> dict[str, Any]:
    """OpenAPI 3.0 schema of a knob's values: its type with bounds or choices, or "auto"."""
    value: dict[str, Any]
    if knob.type == "choice":
        value = {"type": "string", "enum": list(knob.choices)}
    elif knob.type == "bool":
        value = {"type": "boolean"}
    elif knob.type == "label":
        value = {"type": "string", "minLength": 1, "nullable": True}
    elif knob.type == "names":
        value = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
    else:
        value = {"type": "integer" if knob.type == "int" else "number"}
        if knob.minimum is not None:
            value["minimum"] = knob.minimum
            if knob.minimum_open:
                value["exclusiveMinimum"] = True
        if knob.maximum is not None:
            value["maximum"] = knob.maximum
            if knob.maximum_open:
                value["exclusiveMaximum"] = True
    return {"oneOf": [value, {"type": "string", "enum": [AUTO]}]}


def _knob_fields(names: Any, prefix: str = "") -> dict[str, KnobField]:
    return {name.removeprefix(prefix): KnobField(name) for name in names if name.startswith(prefix)}


#: OpenAI's hyperparameters (the engine's names of Tunery's knobs are accepted there too).
HyperparametersSerializer = type(
    "HyperparametersSerializer",
    (serializers.Serializer,),
    _knob_fields(name for name, knob in KNOBS.items() if knob.openai),
)
LoraSerializer = type("LoraSerializer", (serializers.Serializer,), _knob_fields(KNOBS, prefix="lora."))
SearchSerializer = type("SearchSerializer", (serializers.Serializer,), _knob_fields(KNOBS, prefix="search."))


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": 512},
        "maxProperties": MAX_METADATA_KEYS,
        "nullable": True,
    }
)
class MetadataField(serializers.DictField):
    """A job's metadata: string values, a bounded number of keys (``services.checked_metadata`` checks it)."""


class JobCreateSerializer(serializers.Serializer):
    """Request body of POST /v1/fine_tuning/jobs. Fields after ``method`` are Tunery's extra
    body fields (``extra_body`` in the openai client). Every knob accepts "auto"; the knobs and
    their ranges come from the contract's vocabulary."""

    model = serializers.CharField(
        min_length=1,
        help_text="A base model id from GET /v1/models, or one of your fine-tuned models (ft:...) or its "
        "checkpoints (ft:...:ckpt-step-N) to continue fine-tuning it: the job keeps its base model, vertical, "
        "task and training type, its labels keep their index and new labels are appended.",
    )
    training_file = serializers.CharField(min_length=1)
    validation_file = serializers.CharField(required=False, allow_null=True)
    hyperparameters = HyperparametersSerializer(required=False)
    suffix = serializers.RegexField(SUFFIX.pattern, required=False, allow_blank=True, allow_null=True, max_length=64)
    seed = serializers.IntegerField(required=False, allow_null=True, min_value=SEED_RANGE[0], max_value=SEED_RANGE[1])
    metadata = MetadataField(
        child=serializers.CharField(allow_blank=True, max_length=512),
        required=False,
        allow_null=True,
        help_text=f"At most {MAX_METADATA_KEYS} keys of at most 64 characters.",
    )
    method = serializers.JSONField(
        required=False,
        help_text='{"type": "supervised", "supervised": {"hyperparameters": {...}}} or, on causal-LM (chat) tasks '
        'with LoRA, {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": ..., "batch_size": ..., '
        '"learning_rate_multiplier": ...}}} with a preference file (lines of input, preferred_output, '
        "non_preferred_output)",
    )
    vertical = serializers.CharField(required=False, help_text="Pack id from GET /v1/verticals.")
    task = serializers.CharField(required=False)
    lora = LoraSerializer(required=False)
    search = SearchSerializer(
        required=False,
        help_text="Budgeted hyperparameter search (also accepted under hyperparameters.search); every trial "
        "is a job event.",
    )
    teacher_model = serializers.CharField(required=False, help_text="Distillation teacher: base or ft: model id.")
    replay_fraction = serializers.FloatField(
        required=False,
        min_value=0.0,
        max_value=1.0,
        help_text="Continued fine-tuning (model ft:...): the share of the parent's training rows mixed into the "
        "training data, so the model does not forget them (default 0). The job's events say how many were replayed.",
    )
    gpus = serializers.JSONField(required=False, help_text=f'GPUs ({GPU_RANGE[0]}-{GPU_RANGE[1]}) or "auto".')
    column_mapping = serializers.DictField(
        child=serializers.CharField(),
        required=False,
        help_text='Your files\' columns renamed to the task\'s: {"<file column>": "<task column>"}, e.g. '
        '{"label": "sentiment"} for a file whose column "label" holds what the task calls "sentiment". '
        "Validation and training read the files through it.",
    )
    dry_run = serializers.BooleanField(
        required=False,
        help_text="Validate the request and its files and answer with a fine_tuning.job.dry_run object "
        "(resolved hyperparameters, data profile, warnings); no job is created.",
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        found = super().get_fields()
        found.update(_knob_fields(name for name in TUNERY_KNOBS if "." not in name))
        return found


class JobSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="fine_tuning.job")
    created_at = serializers.IntegerField()
    finished_at = serializers.IntegerField(allow_null=True)
    estimated_finish = serializers.IntegerField(allow_null=True)
    model = serializers.CharField()
    fine_tuned_model = serializers.CharField(allow_null=True)
    organization_id = serializers.CharField()
    status = serializers.CharField()
    training_file = serializers.CharField()
    validation_file = serializers.CharField(allow_null=True)
    hyperparameters = HyperparametersSerializer()
    method = serializers.JSONField()
    result_files = serializers.ListField(child=serializers.CharField())
    trained_tokens = serializers.IntegerField(allow_null=True)
    error = serializers.JSONField(allow_null=True)
    seed = serializers.IntegerField()
    metadata = serializers.DictField(allow_null=True)
    vertical = serializers.CharField()
    vertical_version = serializers.CharField()
    task = serializers.CharField()
    teacher_model = serializers.CharField(allow_null=True)
    parent_model = serializers.CharField(
        allow_null=True, help_text="Continued fine-tuning: the fine-tuned model this job started from."
    )
    parent_checkpoint = serializers.CharField(
        allow_null=True, help_text="Continued fine-tuning from a checkpoint: its name (ft:...:ckpt-step-N)."
    )
    replay_fraction = serializers.FloatField(help_text="Share of the parent's training rows replayed.")
    gpus = serializers.IntegerField()
    requested_action = serializers.CharField(allow_null=True)
    requested_hyperparameters = serializers.DictField()
    resolved_config = serializers.DictField(allow_null=True)
    column_mapping = serializers.DictField(child=serializers.CharField(), allow_null=True)
    data_profile = serializers.DictField(allow_null=True, help_text=PROFILE_HELP)
    estimate = serializers.DictField(allow_null=True, help_text=ESTIMATE_HELP)
    progress = serializers.DictField(allow_null=True)
    attempts = serializers.IntegerField()


class DryRunSerializer(serializers.Serializer):
    """Answer of POST /v1/fine_tuning/jobs with ``dry_run: true``."""

    object = serializers.CharField(default="fine_tuning.job.dry_run")
    model = serializers.CharField()
    training_file = serializers.CharField()
    validation_file = serializers.CharField(allow_null=True)
    vertical = serializers.CharField()
    task = serializers.CharField()
    resolved_hyperparameters = serializers.DictField(
        help_text='The engine\'s configuration with every "auto" the control plane can settle resolved '
        "(precision and compile stay as asked: the training worker's device decides them; so does the pooling "
        'of a base model this host cannot read, left "auto"), by the engine\'s rules on this data profile and '
        "base model."
    )
    auto_reasons = serializers.DictField(
        child=serializers.CharField(),
        help_text='For each knob the rules settled from "auto": its value and the rule that chose it '
        '("16: few-shot: smaller batches, more optimizer steps"); the job\'s train_begin event carries the '
        "engine's own.",
    )
    data_profile = serializers.DictField(help_text=PROFILE_HELP)
    warnings = serializers.ListField(
        child=serializers.DictField(),
        help_text="[{code, message}]: the profile's, then what the tenant's quotas would do to the job "
        "(queued_jobs_quota_exceeded, training_hours_quota_exceeded, training_hours_may_run_out); a dry run "
        "consumes no quota.",
    )
    estimate = serializers.DictField(help_text=ESTIMATE_HELP)


class EventSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="fine_tuning.job.event")
    created_at = serializers.IntegerField()
    level = serializers.ChoiceField(choices=JobEvent.Level.choices)
    message = serializers.CharField()
    type = serializers.ChoiceField(choices=["message", "metrics"])
    data = serializers.JSONField(allow_null=True)


class CheckpointSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="fine_tuning.job.checkpoint")
    created_at = serializers.IntegerField()
    fine_tuning_job_id = serializers.CharField()
    fine_tuned_model_checkpoint = serializers.CharField()
    step_number = serializers.IntegerField()
    metrics = serializers.DictField()
    is_best = serializers.BooleanField()
    kind = serializers.ChoiceField(
        choices=JobCheckpoint.Kind.choices,
        help_text="'training': a resume point of the run (evaluate it once the job has succeeded); "
        "'linear_probe': the job's early probe (step 0), a calibrated model with its own hand-off threshold "
        "that can be deployed (POST /v1/deployments with its fine_tuned_model_checkpoint) while the job runs.",
    )
