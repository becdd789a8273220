"""The evaluation object: one render function, and serializers that document it (OpenAPI)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from tunery.core.timestamps import unix_seconds
from tunery.evaluations.models import EVALUATION_QUEUES, Evaluation, EvaluationStatus
from tunery.jobs.serializers import MetadataField


def evaluation_object(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "id": evaluation.id,
        "object": "evaluation",
        "model": evaluation.evaluated_name,
        "fine_tuned_model": evaluation.model_id,
        "checkpoint": evaluation.checkpoint_id,
        "checkpoint_step": evaluation.checkpoint_step,
        "file": evaluation.file_id,
        "status": evaluation.status,
        "vertical": evaluation.vertical,
        "task": evaluation.task,
        "kind": evaluation.kind,
        "selection_metric": evaluation.selection_metric,
        "greater_is_better": evaluation.greater_is_better,
        "handoff_threshold": evaluation.handoff_threshold,
        "generate": evaluation.generate,
        "rows_scored": evaluation.rows_scored,
        "metrics": evaluation.metrics,
        "report": evaluation.report,
        "row_errors": evaluation.row_errors or [],
        "error": evaluation.error,
        "queue": evaluation.queue,
        "metadata": evaluation.metadata or None,
        "created_at": unix_seconds(evaluation.created_at),
        "started_at": unix_seconds(evaluation.started_at),
        "finished_at": unix_seconds(evaluation.finished_at),
    }


class EvaluationErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class RowErrorSerializer(serializers.Serializer):
    row = serializers.IntegerField(help_text="Data row of the file, from 1.")
    code = serializers.CharField(allow_null=True)
    message = serializers.CharField()


class EvaluationObjectSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["evaluation"])
    model = serializers.CharField(help_text="The model scored: a fine-tuned model, or a checkpoint's model name.")
    fine_tuned_model = serializers.CharField(
        allow_null=True, help_text="The fine-tuned model (the checkpoint's job's model); null for a base model."
    )
    checkpoint = serializers.CharField(
        allow_null=True, help_text="The checkpoint scored ('ftckpt-...'); null for the model itself."
    )
    checkpoint_step = serializers.IntegerField(allow_null=True, help_text="The checkpoint's step.")
    file = serializers.CharField(help_text="The labelled file it was scored on.")
    status = serializers.ChoiceField(choices=EvaluationStatus.choices)
    vertical = serializers.CharField()
    task = serializers.CharField()
    kind = serializers.CharField(help_text="The model's task kind.")
    selection_metric = serializers.CharField(help_text="The pack's metric that decides between models.")
    greater_is_better = serializers.BooleanField()
    handoff_threshold = serializers.FloatField(
        allow_null=True, help_text="Top-probability cut below which a request is handed off (single-label)."
    )
    generate = serializers.BooleanField(help_text="Causal LM: answers were generated for the pack's text metrics.")
    rows_scored = serializers.IntegerField()
    metrics = serializers.DictField(
        child=serializers.FloatField(), allow_null=True, help_text="The pack's metrics; null until succeeded."
    )
    report = serializers.DictField(
        allow_null=True,
        help_text="per_label {labels: {name: {precision, recall, f1, support}}, averages}, confusion_matrix "
        "{labels, matrix[true][predicted]} (multi-label: per_label tp/fp/fn/tn), calibration "
        "{expected_calibration_error, bins [{lower, upper, count, confidence, accuracy}]}, handoff "
        "{threshold, coverage, accuracy, handed_off, curve [{threshold, coverage, accuracy}]}; null where "
        "the task kind has none.",
    )
    row_errors = RowErrorSerializer(many=True, help_text="Rows that could not be scored (left out of the metrics).")
    error = EvaluationErrorSerializer(allow_null=True)
    queue = serializers.ChoiceField(choices=EVALUATION_QUEUES)
    metadata = serializers.DictField(child=serializers.CharField(), allow_null=True)
    created_at = serializers.IntegerField(help_text="Unix seconds.")
    started_at = serializers.IntegerField(allow_null=True)
    finished_at = serializers.IntegerField(allow_null=True)


class EvaluationCreateSerializer(serializers.Serializer):
    """Request body of POST /v1/evaluations."""

    model = serializers.CharField(
        min_length=1,
        help_text="One of your fine-tuned models ('ft:...'), a checkpoint of one (its "
        "fine_tuned_model_checkpoint 'ft:...:ckpt-step-N' or id 'ftckpt-...'), or a base model for a "
        "causal-LM task (with vertical and task; scored by token loss).",
    )
    vertical = serializers.CharField(required=False, help_text="Base models only: the pack the task is in.")
    task = serializers.CharField(required=False, help_text="Base models only: the pack's causal-LM task.")
    file = serializers.CharField(
        min_length=1,
        help_text="A file uploaded with purpose 'fine-tune' in the model's task schema (text and label columns).",
    )
    handoff_threshold = serializers.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        help_text="Report coverage/accuracy at this cut (default: the tenant's pack setting, else 0.5).",
    )
    generate = serializers.BooleanField(
        required=False,
        help_text="Causal-LM models: also generate each row's answer (greedy) and score it with the pack's "
        "metrics of generated text (at most TUNERY_EVALUATION_MAX_GENERATIONS rows). Default false: "
        "mean token loss and perplexity of the reference answers only.",
    )
    queue = serializers.ChoiceField(choices=EVALUATION_QUEUES, required=False, help_text="'cpu' (default) or 'gpu'.")
    metadata = MetadataField(
        child=serializers.CharField(allow_blank=True, max_length=512), required=False, allow_null=True
    )


class MetricDifferenceSerializer(serializers.Serializer):
    a = serializers.FloatField()
    b = serializers.FloatField()
    difference = serializers.FloatField(help_text="b - a on the rows both scored.")
    ci_low = serializers.FloatField(help_text="Lower end of the paired bootstrap confidence interval of b - a.")
    ci_high = serializers.FloatField()


class EvaluationComparisonSerializer(serializers.Serializer):
    object = serializers.ChoiceField(choices=["evaluation.comparison"])
    a = serializers.CharField(help_text="This evaluation.")
    b = serializers.CharField(help_text="The evaluation named by `with`.")
    model_a = serializers.CharField()
    model_b = serializers.CharField()
    file = serializers.CharField()
    rows = serializers.IntegerField()
    selection_metric = serializers.CharField()
    greater_is_better = serializers.BooleanField()
    confidence = serializers.FloatField()
    resamples = serializers.IntegerField()
    metrics = serializers.DictField(child=MetricDifferenceSerializer())
