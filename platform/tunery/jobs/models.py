"""Fine-tuning jobs. The lifecycle lives here, not in the broker: the row holds the state, the
attempt count, the lease and the current checkpoint; a Celery message only wakes a worker."""

from __future__ import annotations

from django.db import models

from tunery.core.ids import prefixed_id


def new_job_id() -> str:
    return prefixed_id("ftjob")


def new_event_id() -> str:
    return prefixed_id("ftevent")


def new_checkpoint_id() -> str:
    return prefixed_id("ftckpt")


class JobStatus(models.TextChoices):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
ACTIVE_STATUSES = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING)


class FineTuningJob(models.Model):
    id = models.CharField(primary_key=True, max_length=40, default=new_job_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="jobs")
    created_by = models.CharField(max_length=200, blank=True, help_text="api key prefix or user")
    base_model = models.ForeignKey("catalog.BaseModel", on_delete=models.PROTECT, related_name="jobs")
    training_file = models.ForeignKey("files.File", on_delete=models.PROTECT, related_name="+")
    validation_file = models.ForeignKey("files.File", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    vertical = models.CharField(max_length=63)
    vertical_version = models.CharField(max_length=40, blank=True)
    task = models.CharField(max_length=63)
    suffix = models.CharField(max_length=64, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    #: What the client asked for (values may be "auto").
    requested_hyperparameters = models.JSONField(default=dict, blank=True)
    #: The exact configuration the engine ran with (every "auto" resolved).
    resolved_config = models.JSONField(default=dict, blank=True)
    #: The files' columns renamed to the task's (file column -> schema column); {} = none.
    column_mapping = models.JSONField(default=dict, blank=True)
    #: Profile of the training data (and its overlap with the validation file), set at file validation.
    data_profile = models.JSONField(default=dict, blank=True)
    #: OpenAI's ``integrations`` as parsed by ``tracking.parse_integrations`` (wandb, mlflow, tensorboard)
    integrations = models.JSONField(default=list, blank=True)
    teacher_model = models.CharField(max_length=200, blank=True, help_text="Distillation teacher model id.")
    #: A continued fine-tune: the tenant's model it starts from (and the checkpoint, when it starts
    #: from one of that model's job's checkpoints); the base model is the parent's.
    parent_model = models.ForeignKey(
        "catalog.FineTunedModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="continued_jobs"
    )
    parent_checkpoint = models.ForeignKey(
        "jobs.JobCheckpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="continued_jobs"
    )
    replay_fraction = models.FloatField(
        default=0.0, help_text="Share of the parent's training rows mixed into this job's training data."
    )
    gpus = models.PositiveSmallIntegerField(default=0)
    queue = models.CharField(max_length=50, default="gpu")

    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.VALIDATING_FILES)
    #: Set when a client asked to pause/cancel; the engine checks it between steps.
    requested_action = models.CharField(max_length=10, blank=True)
    error = models.JSONField(null=True, blank=True)  # {"code", "message", "param"}
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    #: When a message last asked a worker for this job; the reconciler re-sends stale ones.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    current_checkpoint = models.CharField(max_length=500, blank=True)
    progress = models.JSONField(default=dict, blank=True)  # step, total_steps, loss, lr, throughput, eta
    trained_tokens = models.BigIntegerField(null=True, blank=True)
    training_seconds = models.FloatField(default=0)
    result_files = models.JSONField(default=list, blank=True)
    #: Time, memory and cost expected before the run (``tunery.jobs.estimates``), set when queued.
    estimate = models.JSONField(default=dict, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    estimated_finish = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "-created_at"]),
            models.Index(fields=["status", "created_at"]),
        ]

    def __str__(self) -> str:
        return self.id


class JobEvent(models.Model):
    class Level(models.TextChoices):
        INFO = "info"
        WARN = "warn"
        ERROR = "error"

    id = models.CharField(primary_key=True, max_length=40, default=new_event_id, editable=False)
    job = models.ForeignKey(FineTuningJob, on_delete=models.CASCADE, related_name="events")
    level = models.CharField(max_length=5, choices=Level.choices, default=Level.INFO)
    message = models.TextField()
    type = models.CharField(max_length=10, default="message")  # message | metrics
    data = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    #: Makes event writes idempotent across attempts (e.g. "metrics:step:120").
    dedupe_key = models.CharField(max_length=100, null=True, blank=True)  # noqa: DJ001 (NULLs never collide)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["job", "dedupe_key"], name="unique_job_event_dedupe_key"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} {self.level}: {self.message[:60]}"


class JobCheckpoint(models.Model):
    class Kind(models.TextChoices):
        #: a resume point of the run (the trained tensors and the run state)
        TRAINING = "training"
        #: the early linear probe (step 0): a servable artifact, deployable while the job runs
        LINEAR_PROBE = "linear_probe"

    id = models.CharField(primary_key=True, max_length=40, default=new_checkpoint_id, editable=False)
    job = models.ForeignKey(FineTuningJob, on_delete=models.CASCADE, related_name="checkpoints")
    step_number = models.PositiveIntegerField()
    #: the folder on the worker's host (with object storage, its copy is under the job's prefix)
    path = models.CharField(max_length=500)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.TRAINING)
    metrics = models.JSONField(default=dict, blank=True)
    is_best = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-step_number"]
        constraints = [models.UniqueConstraint(fields=["job", "step_number"], name="one_checkpoint_per_step")]

    def __str__(self) -> str:
        return f"{self.job_id} step {self.step_number}"


class UsageRecord(models.Model):
    """Billing/quota facts. One per job (training hours), written once."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="usage")
    job = models.OneToOneField(FineTuningJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage")
    kind = models.CharField(max_length=30, default="training")
    training_seconds = models.FloatField(default=0)
    trained_tokens = models.BigIntegerField(default=0)
    gpu_count = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.kind} {self.training_seconds:.0f}s"


class WorkerClass(models.Model):
    """What the operator says about the hosts behind one training queue: their device, memory and
    hourly price. Estimates use it; a queue without a row is estimated as a CPU host, unpriced."""

    class Device(models.TextChoices):
        CPU = "cpu"
        CUDA = "cuda"

    queue = models.CharField(max_length=50, unique=True, help_text="A training queue, e.g. 'gpu' or 'gpu.h100.x2'.")
    device = models.CharField(max_length=10, choices=Device.choices, default=Device.CPU)
    memory_bytes = models.BigIntegerField(
        null=True, blank=True, help_text="Memory a job may use on one device (GPU memory, or host RAM on CPU)."
    )
    hourly_price = models.DecimalField(
        max_digits=12, decimal_places=4, null=True, blank=True, help_text="Price of one host-hour; empty: no cost."
    )
    currency = models.CharField(max_length=3, default="USD")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.queue} ({self.device})"


class MeasuredThroughput(models.Model):
    """Training speed seen on finished jobs, per base model, training queue and task kind (a moving
    average), so the next estimate for the same combination starts from what the hosts did."""

    base_model = models.CharField(max_length=100)
    queue = models.CharField(max_length=50)
    task_kind = models.CharField(max_length=40)
    tokens_per_second = models.FloatField()
    samples_per_second = models.FloatField()
    jobs = models.PositiveIntegerField(default=0, help_text="Finished jobs averaged in.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["base_model", "queue", "task_kind"], name="one_throughput_per_combination")
        ]

    def __str__(self) -> str:
        return f"{self.base_model} on {self.queue} ({self.task_kind}): {self.tokens_per_second:.0f} tokens/s"
