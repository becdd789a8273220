"""An evaluation: a model scored on a tenant's labelled file, with the pack's metrics and a report."""

from __future__ import annotations

from django.db import models

from tunery.core.ids import prefixed_id
from tunery.core.leases import LeasedWork
from tunery.jobs.queues import CPU_QUEUE, GPU_QUEUE

#: Where an evaluation runs (the body's optional ``queue``).
EVALUATION_QUEUES = (CPU_QUEUE, GPU_QUEUE)


def new_evaluation_id() -> str:
    return prefixed_id("eval")


class EvaluationStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


TERMINAL_EVALUATION_STATUSES = (EvaluationStatus.SUCCEEDED, EvaluationStatus.FAILED)


class Evaluation(LeasedWork):
    """Status changes go through tunery.evaluations.lifecycle only. A scoring worker holds a lease;
    an evaluation whose worker died is scored again from the start (it writes nothing until done)."""

    id = models.CharField(primary_key=True, max_length=40, default=new_evaluation_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="evaluations")
    #: The fine-tuned model scored (or whose checkpoint was); None for a base model.
    model = models.ForeignKey(
        "catalog.FineTunedModel", null=True, blank=True, on_delete=models.CASCADE, related_name="evaluations"
    )
    #: The base model scored (causal-LM tasks: token loss needs no trained head).
    base_model = models.ForeignKey(
        "catalog.BaseModel", null=True, blank=True, on_delete=models.CASCADE, related_name="evaluations"
    )
    #: The name evaluated: the model's id, or a checkpoint's ``ft:...:ckpt-step-N`` ("" before checkpoints).
    model_name = models.CharField(max_length=240, blank=True, default="", db_index=True)
    #: The checkpoint of ``model``'s job that was scored (None: the model itself).
    checkpoint = models.ForeignKey(
        "jobs.JobCheckpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="evaluations"
    )
    checkpoint_step = models.PositiveIntegerField(null=True, blank=True)
    file = models.ForeignKey("files.File", on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=20, choices=EvaluationStatus.choices, default=EvaluationStatus.QUEUED)
    queue = models.CharField(max_length=40, default=CPU_QUEUE)
    #: The pack's vertical and task (the model's), its task kind and its selection metric.
    vertical = models.CharField(max_length=63)
    task = models.CharField(max_length=63)
    kind = models.CharField(max_length=40)
    selection_metric = models.CharField(max_length=100)
    greater_is_better = models.BooleanField(default=True)
    #: Top-probability cut under which a request is handed off (single-label classifiers).
    handoff_threshold = models.FloatField(null=True, blank=True)
    #: Causal LM: also generate each row's answer (greedy) for the pack's metrics of generated text.
    generate = models.BooleanField(default=False)

    rows_scored = models.PositiveIntegerField(default=0)
    #: The pack's metrics of the scored rows.
    metrics = models.JSONField(null=True, blank=True)
    #: per_label, confusion_matrix, calibration, handoff (see tunery.evaluations.report).
    report = models.JSONField(null=True, blank=True)
    #: Rows that could not be scored: [{"line", "message"}] (left out of the metrics).
    row_errors = models.JSONField(default=list, blank=True)
    #: Per-row truth and prediction (what a paired comparison resamples); never listed.
    outputs = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)  # {"code", "message"} when failed
    metadata = models.JSONField(null=True, blank=True)

    created_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"]), models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"{self.id} ({self.evaluated_name}, {self.status})"

    @property
    def evaluated_name(self) -> str:
        return self.model_name or self.model_id or ""
