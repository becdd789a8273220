"""The training recipe: :func:`train` runs one job from a :class:`JobSpec` to an artifact through
:class:`FineTuneRecipe`'s named steps.

Speed levers (CPU and GPU): length-grouped batches with dynamic padding, tokenization cached on
disk, one host sync per optimizer step (for the non-finite check), progress only every N steps,
foreach/fused AdamW, ``torch.inference_mode`` and length-sorted evaluation, ``torch.compile`` with
dynamic shapes on CUDA.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunery_contract import TaskKind
from tunery_contract.preferences import preferred_conversations
from tunery_contract.profile import profile_rows
from tunery_contract.protocol import LINEAR_PROBE
from tunery_contract.vocabulary import AUTO
from tunery_engine import auto, continued
from tunery_engine import checkpoint as ckpt
from tunery_engine import contrastive as ct
from tunery_engine import crossval as cv
from tunery_engine import out_of_scope as oos
from tunery_engine import probe as lp
from tunery_engine.artifact import read_artifact, write_artifact
from tunery_engine.auto import CROSS_VALIDATE_BELOW, MAX_FOLDS, MIN_FOLDS, ROW_FOLD_BUDGET
from tunery_engine.callbacks import Cancelled, EarlyStopping, Paused, ProgressEvent, TrainingCallback, TrainState
from tunery_engine.config import JobSpec, TrainConfig, resolve, steps_per_epoch
from tunery_engine.data import (
    data_fingerprint,
    encode_cached,
    epoch_batches,
    eval_batches,
    load_preference_rows,
    load_rows,
    split_validation,
)
from tunery_engine.errors import ArtifactError, ConfigError, LabelError, ModelLoadError, NonFiniteLoss
from tunery_engine.heads import DecodedBatch, Encoded, TaskHead, head_for
from tunery_engine.heads.preference import PreferenceHead
from tunery_engine.modeling import (
    apply_lora,
    bernoulli_is_vectorised,
    count_parameters,
    cpu_has_bf16_units,
    load_tokenizer,
    read_model_config,
    resolve_pooling,
    use_cpu_dropout,
)

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 10.0
PROBE_FOLDS = 10


@dataclass
class TrainResult:
    metrics: dict[str, float]
    best_step: int | None
    artifact_dir: Path
    resolved_config: TrainConfig
    trained_tokens: int
    seconds: float
    label_names: tuple[str, ...] = ()
    steps: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "artifact_dir": str(self.artifact_dir),
            "metrics": self.metrics,
            "best_step": self.best_step,
            "resolved_config": self.resolved_config.to_dict(),
            "trained_tokens": self.trained_tokens,
            "seconds": round(self.seconds, 3),
            "label_names": list(self.label_names),
            "steps": self.steps,
            "warnings": self.warnings,
        }


class _Distributed:
    """torchrun's environment; a single process when WORLD_SIZE is unset."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> None:
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)

    def broadcast_int(self, value: int) -> int:
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.long)
        torch.distributed.broadcast(tensor, src=0)
        return int(tensor.item())

    def all_ok(self, ok: bool) -> bool:
        if not self.enabled:
            return ok
        tensor = torch.tensor([1 if ok else 0], dtype=torch.long)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
        return bool(tensor.item())

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def _device(dist: _Distributed) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def _schedule(config: TrainConfig, total_steps: int) -> Any:
    warmup = round(float(config.warmup_ratio) * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return factor


def _optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(config.weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused on CPU too (torch >= 2.4): 4-6x faster than foreach on MiniLM's 22.7M params, and what
    # transformers.Trainer uses by default since torch 2.8 ("adamw_torch_fused")
    return torch.optim.AdamW(groups, lr=float(config.learning_rate), fused=True)


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}


def _load_teacher(
    path: Path, head: TaskHead, label_names: tuple[str, ...], device: torch.device, pad_token_id: int
) -> torch.nn.Module:
    """A teacher is an earlier Tunery artifact or a base-model directory whose head has the same labels."""
    from tunery_engine.artifact import load_artifact

    if (path / "tunery_artifact.json").is_file():
        info = read_artifact(path)
        if info.label_names != label_names:
            raise LabelError(
                f"the teacher {path.name} knows labels {list(info.label_names)[:10]}, "
                f"the job has {list(label_names)[:10]}"
            )
        teacher: Any
        teacher, _, _ = load_artifact(path)
    else:
        config = read_model_config(path)
        known = config.get("id2label") or {}
        teacher_labels = tuple(known[k] for k in sorted(known, key=int)) if known else ()
        if head.has_label_names and teacher_labels != label_names:
            raise LabelError(
                f"the teacher {path.name} has a head for {list(teacher_labels)[:10]}, "
                f"the job has {list(label_names)[:10]}"
            )
        teacher = head.build_model(path, label_names)
    if getattr(teacher.config, "pad_token_id", None) is None:
        teacher.config.pad_token_id = pad_token_id
    teacher.eval().requires_grad_(False)
    return teacher.to(device)


class _Callbacks:
    def __init__(self, callbacks: Sequence[TrainingCallback]) -> None:
        self.items = list(callbacks)

    def __getattr__(self, hook: str) -> Any:
        def call(*args: Any) -> None:
            for cb in self.items:
                getattr(cb, hook)(*args)

        return call

    def control(self) -> str | None:
        for cb in self.items:
            request = cb.control()
            if request in ("pause", "cancel"):
                return request
        return None


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    if device.type == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _improved(value: float, loss: float | None, best: float | None, best_loss: float | None, greater: bool) -> bool:
    """A better selection metric wins; on a tie (common when macro-F1 plateaus on small sets) the
    lower validation loss does."""
    if best is None:
        return True
    if value != best:
        return value > best if greater else value < best
    return loss is not None and best_loss is not None and math.isfinite(loss) and loss < best_loss


class _ProgressWindow:
    """Loss, rows and tokens since the last progress event, and the run's pace for the ETA."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.loss = torch.zeros((), device=device)
        #: the head's step metrics (``TaskHead.step_metrics``), summed over the window's steps
        self.metrics: dict[str, torch.Tensor] = {}
        self.steps, self.rows, self.tokens = 0, 0, 0
        self.started = self.run_started = time.monotonic()
        self.run_started_step = step

    def event(self, state: TrainState, world_size: int) -> ProgressEvent:
        """The progress event of the window; starts the next one."""
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-9)
        rate = (state.step - self.run_started_step) / max(now - self.run_started, 1e-9)
        event = ProgressEvent(
            step=state.step,
            total_steps=state.total_steps,
            epoch=round(state.epoch, 4),
            loss=float(self.loss) / max(1, self.steps),
            learning_rate=state.learning_rate,
            samples_per_second=self.rows * world_size / elapsed,
            tokens_per_second=self.tokens * world_size / elapsed,
            eta_seconds=(state.total_steps - state.step) / rate if rate > 0 else float("nan"),
            metrics={name: float(total) / max(1, self.steps) for name, total in self.metrics.items()},
        )
        self.loss.zero_()
        self.metrics = {}
        self.steps, self.rows, self.tokens = 0, 0, 0
        self.started = now
        return event


@dataclass
class ProbeResult:
    """A fitted linear probe: the head's weights and its validation metrics."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    metrics: dict[str, float]
    seconds: float = 0.0

    def save(self, folder: Path, key: Mapping[str, Any]) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": self.weight.contiguous()}
        if self.bias is not None:
            tensors["bias"] = self.bias.contiguous()
        save_file(tensors, str(folder / "head.safetensors"))
        saved = {"metrics": self.metrics, "seconds": self.seconds, "key": dict(key)}
        (folder / "probe.json").write_text(json.dumps(saved))

    def manifest(self) -> dict[str, Any]:
        """The artifact manifest's ``linear_probe``."""
        return {"metrics": self.metrics, "seconds": round(self.seconds, 3)}

    @classmethod
    def load(cls, folder: Path, key: Mapping[str, Any]) -> ProbeResult | None:
        """The probe an earlier attempt of this run saved for the same data, labels and length, or None."""
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(folder / "head.safetensors"))
            saved = json.loads((folder / "probe.json").read_text())
        except (OSError, ValueError):
            return None
        if saved.get("key") != json.loads(json.dumps(dict(key))):
            return None
        return cls(tensors["weight"], tensors.get("bias"), dict(saved["metrics"]), float(saved.get("seconds", 0.0)))


class FineTuneRecipe:
    """One fine-tuning job as named steps: :meth:`setup` (device, data, model, LoRA, optimizer,
    scheduler, teacher, :meth:`restore`), :meth:`train` (:meth:`train_step` per optimizer step,
    :meth:`run_evaluation`, :meth:`save_checkpoint`, pause/cancel), then :meth:`select_best`,
    :meth:`fit_thresholds` and :meth:`save_artifact`.

    ``run`` (a :class:`~tunery_engine.checkpoint.RunState`) is everything a resume needs besides
    tensors: checkpoints save it whole and :meth:`restore` takes it back whole.
    """

    # set by setup()'s steps
    device: torch.device
    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]
    label_names: tuple[str, ...]
    base_model: Path
    model_config: dict[str, Any]
    tokenizer: Any
    pad_id: int
    pooling: str
    #: the plain module (saved, evaluated); ``train_model`` is it compiled and/or DDP-wrapped
    model: Any
    train_model: torch.nn.Module
    config: TrainConfig
    train_data: Encoded
    train_lengths: np.ndarray
    val_data: Encoded
    has_validation: bool
    teacher: torch.nn.Module | None
    batch_size: int
    accumulation: int
    steps_per_epoch: int
    total_steps: int
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    run: ckpt.RunState
    state: TrainState
    hooks: _Callbacks
    # set by train()
    window: _ProgressWindow

    def __init__(self, spec: JobSpec, callbacks: Sequence[TrainingCallback] = ()) -> None:
        self.started = time.monotonic()
        self.spec = spec
        self.task = spec.task
        self.head: TaskHead = (
            PreferenceHead(spec.task, float(spec.config.dpo_beta))
            if spec.config.training_method == "dpo"
            else head_for(spec.task)
        )
        #: the head's step metrics of the optimizer step in progress (summed over its micro-batches)
        self.step_metrics: dict[str, torch.Tensor] = {}
        self.callbacks = list(callbacks)
        # the few-shot stage runs before setup_callbacks (which adds early stopping) and obeys these
        self.hooks = _Callbacks(self.callbacks)
        self.dist = _Distributed()
        self.output_dir = Path(spec.output_dir)
        self.checkpoint_root = self.output_dir / "checkpoints"
        self.warnings: list[str] = []
        self.last_checkpoint: Path | None = None
        self.last_heartbeat = time.monotonic()
        self.last_eval_step = -1
        self.auto_reasons: dict[str, str] = {}
        self.few_shot = False
        self.sentence_encoder = False
        self.probe: ProbeResult | None = None
        #: the probe was read from ``output_dir/probe`` (an earlier attempt of this run fitted it)
        self.probe_cached = False
        #: the early probe's servable artifact and its metrics (``save_probe_model``), reported at train begin
        self.probe_model: tuple[Path, dict[str, float]] | None = None
        self.contrastive: ct.ContrastiveResult | None = None
        #: what the artifact holds: "fine_tuned", or "linear_probe" when fine-tuning did not beat it
        self.shipped = "fine_tuned"
        self.calibration: dict[str, Any] | None = None
        self.handoff: lp.Handoff | None = None
        #: the head refitted on training + validation (``refit_head``), recorded in the manifest
        self.refit: dict[str, Any] | None = None
        #: the refitted head's (weight, bias), fitted once: calibration measures its sharpness
        self.refit_weights: tuple[torch.Tensor, torch.Tensor | None] | None = None
        #: the few-shot floor's cross-validated evidence (``cross_validate_floor``)
        self.floor_cv: cv.CrossValidation | None = None
        # the best evaluation's trainable weights, kept in host memory (not the GPU's) so the end of
        # the run needs no disk read
        self.best_weights: dict[str, torch.Tensor] | None = None
        # a continued fine-tune (``spec.parent``): its parent, (rows replayed, rows they came from),
        # and the parent's metrics on this job's validation split
        self.parent: continued.Parent | None = None
        self.replayed = (0, 0)
        self.parent_metrics: dict[str, float] | None = None
        # the out-of-scope label's index and its validation numbers (``out_of_scope.py``)
        self.out_of_scope_index: int | None = None
        self.out_of_scope: dict[str, Any] | None = None

    # ---- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        self.setup_device()
        self.load_data()
        self.build_model()
        self.resolve_config()
        self.settle_out_of_scope()
        self.encode_data()
        self.fit_probe()  # on the plain model, before LoRA wraps it: the probe is the head fine-tuning starts from
        self.prepare_model()
        self.save_probe_model()  # before the contrastive stage changes the encoder
        if int(self.config.contrastive_epochs) > 0:
            self.tune_contrastive()  # after prepare_model: the CPU's bulk dropout masks are several times faster
        self.teacher = None
        if self.spec.teacher_model is not None:
            self.teacher = _load_teacher(
                Path(self.spec.teacher_model), self.head, self.label_names, self.device, self.pad_id
            )
        self.setup_optimizer()
        if self.parent is not None and self.has_validation:  # the baseline this job has to beat
            self.parent_metrics = self.evaluate()
        self.run = ckpt.RunState(label_names=list(self.label_names), fingerprint=self.fingerprint())
        resumed_from = self.restore()
        self.state = TrainState(
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            run=self.run,
            selection_metric=self.task.selection_metric,
            greater_is_better=self.task.greater_is_better,
            model=self.model,
            learning_rate=float(self.scheduler.get_last_lr()[0]),
            resumed_from=resumed_from,
            config=self.config,
            auto_reasons=self.auto_reasons,
        )
        self.wrap_model()
        self.setup_callbacks()

    def settle_out_of_scope(self) -> None:
        """The out-of-scope knob checked against the labels (``out_of_scope.py``)."""
        self.config, self.out_of_scope_index, reason = oos.settle(self.config, self.task.kind, self.label_names)
        if reason is not None:
            self.auto_reasons["out_of_scope_label"] = reason

    def setup_device(self) -> None:
        self.device = _device(self.dist)
        self.dist.setup(self.device)
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # tiny late-training gradients otherwise crawl through denormal math
            if self.dist.enabled:
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.dist.world_size))
        else:
            torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 leftovers under autocast
            torch.backends.cudnn.allow_tf32 = True

    def load_data(self) -> None:
        spec, task = self.spec, self.task
        if isinstance(self.head, PreferenceHead):
            if task.kind is not TaskKind.CAUSAL_LM:
                raise ConfigError(f"dpo trains causal-LM tasks; {task.id!r} is a {task.kind.value} task")
            if spec.teacher_model is not None:
                raise ConfigError("dpo does not combine with distillation (teacher_model)")

            def load(path: Path) -> list[dict[str, Any]]:
                return load_preference_rows(path, task, spec.tenant_config)
        else:

            def load(path: Path) -> list[dict[str, Any]]:
                return load_rows(path, task, spec.tenant_config, spec.column_mapping)

        self.train_rows = load(Path(spec.train_file))
        if spec.validation_file is not None:
            self.val_rows = load(Path(spec.validation_file))
        else:
            self.train_rows, self.val_rows = split_validation(
                self.train_rows, task, spec.config.validation_split, spec.config.seed
            )
        if spec.parent is not None:
            self.load_parent()
        else:
            self.label_names = self.head.label_names(self.train_rows + self.val_rows)

    def load_parent(self) -> None:
        """A continued fine-tune (``tunery_engine.continued``): the parent, its way of training, the
        replayed rows (training only) and the label set that extends the parent's."""
        spec = self.spec
        assert spec.parent is not None
        self.parent = continued.read_parent(spec.parent, Path(spec.base_model), self.task)
        self.spec = replace(spec, config=continued.inherited_config(spec.config, self.parent))
        new_rows = self.train_rows + self.val_rows
        replay, source_rows = continued.replay_rows(
            self.parent, self.task, spec.tenant_config, spec.config.seed, new_rows
        )
        self.train_rows = self.train_rows + replay
        self.replayed = (len(replay), source_rows)
        self.label_names = continued.continued_label_names(self.head, self.parent, self.train_rows + self.val_rows)

    def build_model(self) -> None:
        """Tokenizer and base model with the task's head (seeded: the head's initialisation is random)."""
        config = self.spec.config
        self.base_model = Path(self.spec.base_model)
        self.model_config = read_model_config(self.base_model)
        self.tokenizer = load_tokenizer(self.base_model)
        self.head.prepare_tokenizer(self.tokenizer)
        self.pad_id = int(self.tokenizer.pad_token_id)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        self.pooling = resolve_pooling(config.pooling, self.base_model, self.head.lora_task_type == "SEQ_CLS")
        if self.parent is not None:
            self.model = continued.build_model(
                self.head, self.base_model, self.parent, self.label_names, self.pooling, config
            )
        else:
            self.model = self.head.build_model(self.base_model, self.label_names, pooling=self.pooling)
        if getattr(self.model.config, "pad_token_id", None) is None:  # decoder heads find the last real token by it
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def resolve_config(self) -> None:
        """The job's settings with every "auto" decided for this data, model and device."""
        if self.device.type == "cuda":
            bf16 = bf16_native = torch.cuda.is_bf16_supported()
        else:
            bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
            bf16_native = bf16 and cpu_has_bf16_units()
        max_positions = self.model_config.get("max_position_embeddings") or getattr(
            self.tokenizer, "model_max_length", None
        )
        if max_positions and max_positions > 1_000_000:
            max_positions = None
        parameters = count_parameters(self.model)
        model_info = auto.ModelInfo(
            parameters=parameters,
            max_length=max_positions,
            causal_lm=self.task.kind is TaskKind.CAUSAL_LM,
            sentence_encoder=self.pooling == "mean",
            task_kind=self.task.kind,
        )
        profiled = self.train_rows
        if isinstance(self.head, PreferenceHead):  # profiled as the conversations of the preferred answers
            profiled = preferred_conversations(self.train_rows, self.task.role_column("messages"))
        profile = profile_rows(self.task, profiled)
        self.few_shot = auto.is_few_shot(auto.DataShape.from_profile(profile), model_info)
        self.sentence_encoder = model_info.sentence_encoder
        requested, self.auto_reasons = auto.resolve(
            replace(self.spec.config, pooling=self.pooling), profile, model_info
        )
        self.config = resolve(
            requested,
            len(self.train_rows),
            parameters,
            model_max_length=max_positions,
            causal_lm=self.task.kind is TaskKind.CAUSAL_LM,
            device_type=self.device.type,
            bf16_supported=bf16,
            bf16_native=bf16_native,
            world_size=self.dist.world_size,
        )
        if max_positions and int(self.config.max_length) > max_positions:
            raise ConfigError(f"max_length {self.config.max_length} exceeds what the model allows ({max_positions})")
        if isinstance(self.head, PreferenceHead) and self.config.training_type != "lora":
            raise ConfigError(
                "dpo trains a LoRA adapter (its reference model is the base with the adapter disabled); "
                "set training_type to lora"
            )

    def prepare_model(self) -> None:
        """LoRA, gradient checkpointing, the device, and bulk dropout masks on CPU."""
        config = self.config
        if config.training_type == "lora" and self.parent is None:  # a LoRA parent's adapter trains on
            self.model = apply_lora(self.model, config, self.head.lora_task_type)
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if config.training_type == "lora" and hasattr(self.model, "enable_input_require_grads"):
                self.model.enable_input_require_grads()
        self.model.to(self.device)
        if self.device.type == "cpu" and not bernoulli_is_vectorised():
            use_cpu_dropout(self.model)

    def encode_data(self) -> None:
        cache_dir = self.output_dir / "cache"
        max_length = int(self.config.max_length)
        args = (self.tokenizer, self.label_names, max_length, self.config, cache_dir)
        self.train_data = encode_cached(self.head, self.train_rows, *args)
        self.val_data = encode_cached(self.head, self.val_rows, *args)
        if self.train_data.truncated:
            self.warnings.append(
                f"{self.train_data.truncated} training rows are longer than max_length {max_length} and were truncated"
            )
            log.warning(self.warnings[-1])
        if not self.train_data.features:
            raise LabelError("no training rows are left after the validation split")
        self.config = self.head.fit_loss(self.config, self.train_data, self.label_names)
        self.train_lengths = self.train_data.lengths
        self.has_validation = len(self.val_data.features) > 0

    def fit_probe(self) -> None:
        """The linear-probe floor: a logistic regression on the frozen base's features, written into
        the head (fine-tuning starts from it) and evaluated on validation (reported first). Fitted
        once; a resumed run reads it from ``output_dir/probe``."""
        layer = lp.linear_head(self.model)
        eligible = self.task.kind is TaskKind.SEQUENCE_CLASSIFICATION and self.has_validation and layer is not None
        wanted = eligible if self.config.linear_probe == AUTO else bool(self.config.linear_probe)
        if wanted and not eligible:
            self.warnings.append(
                "linear_probe needs single-label classification, a validation split and a one-layer head: skipped"
            )
            wanted = False
        self.config = replace(self.config, linear_probe=wanted)
        if not wanted or layer is None:
            if int(self.config.contrastive_epochs) > 0:  # its head is fitted as the probe is
                self.warnings.append("contrastive_epochs needs the linear probe's conditions: skipped")
                self.config = replace(self.config, contrastive_epochs=0)
            return
        self.model.to(self.device)
        self.batch_size = int(self.config.batch_size)
        initial = (layer.weight.detach().clone(), layer.bias.detach().clone() if layer.bias is not None else None)
        key = {
            "data": data_fingerprint(self.train_rows),
            "labels": list(self.label_names),
            "max_length": self.config.max_length,
        }
        self.probe = ProbeResult.load(self.output_dir / "probe", key)
        self.probe_cached = self.probe is not None
        if self.probe is None:
            started = time.monotonic()
            features = lp.forward_rows(
                self.model, self.train_data, self.head.collate, self.head.forward, self.device, 64, self.pad_id, layer
            )
            labels = torch.as_tensor(np.asarray([int(f["labels"]) for f in self.train_data.features]))
            weight, bias = lp.fit_logistic_regression(
                features, labels, len(self.label_names), bias=layer.bias is not None
            )
            lp.set_linear(layer, weight, bias)
            self.probe = ProbeResult(weight, bias, self.evaluate(), time.monotonic() - started)
            if self.dist.is_main:
                self.probe.save(self.output_dir / "probe", key)
        log.info("linear probe: %s", self.probe.metrics)
        # LP-FT: from the probe's head, fine-tuning keeps what the base knows. With many examples only
        # for a sentence encoder (features made for a linear head) and not for a continued fine-tune,
        # which trains on from its parent's head; from weak features the fitted head stalled learning.
        if self.few_shot or (self.sentence_encoder and self.parent is None):
            lp.set_linear(layer, self.probe.weight, self.probe.bias)
            why = "few-shot" if self.few_shot else "a sentence encoder"
            self.auto_reasons["initial_head"] = f"linear probe: {why} (fine-tuning starts from the probe's head, LP-FT)"
        else:
            lp.set_linear(layer, *initial)

    def save_probe_model(self) -> None:
        """The early probe as a servable artifact in ``output_dir/probe/model`` (rank 0): the job's
        starting model (the base, or a continued job's parent) with the probe's head, calibrated like
        a finished model (a temperature fitted on validation, folded into the head; the hand-off
        threshold chosen on validation for the job's target; the out-of-scope numbers at it). A LoRA
        job writes a LoRA artifact whose adapter is the untrained one (``lora_B`` at zero: it adds
        nothing) with the probe's head, referencing the base model instead of copying its weights.
        Costs one forward pass over the validation split; a resumed run keeps the artifact its probe
        came with. Reported to the callbacks as the step-0 checkpoint with ``model`` set."""
        layer = lp.linear_head(self.model)
        if self.probe is None or layer is None or not self.has_validation or not self.dist.is_main:
            return
        folder = self.output_dir / "probe" / "model"
        if self.probe_cached:
            try:
                self.probe_model = (folder, dict(read_artifact(folder).metrics))
                return
            except ArtifactError:
                pass  # the attempt that fitted the probe stopped before writing it
        started = time.monotonic()
        current = (layer.weight.detach().clone(), layer.bias.detach().clone() if layer.bias is not None else None)
        try:
            lp.set_linear(layer, self.probe.weight, self.probe.bias)
            logits = lp.forward_rows(
                self.model, self.val_data, self.head.collate, self.head.forward, self.device, 64, self.pad_id
            )
            labels = torch.as_tensor(np.asarray([int(f["labels"]) for f in self.val_data.features]))
            metrics, fields = self.calibrate_probe(layer, logits, labels)
            self.write_model(folder, metrics, 0, fields, distilled=False)
        finally:
            lp.set_linear(layer, *current)
        self.probe_model = (folder, metrics)
        log.info("linear-probe model written to %s in %.1f s", folder, time.monotonic() - started)

    def calibrate_probe(
        self, layer: torch.nn.Linear, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """The early probe's calibration on its validation ``logits``, folded into ``layer`` (which
        holds the probe's head): (its metrics, its manifest fields). As :meth:`calibrate` does for the
        shipped model, on the validation split only (the probe model is written before any decision)."""
        assert self.probe is not None
        fields: dict[str, Any] = {"shipped": LINEAR_PROBE, "early_probe": True, "linear_probe": self.probe.manifest()}
        metrics = dict(self.probe.metrics)
        method = str(self.config.calibration)
        temperature = lp.fit_temperature(logits, labels) if method in (AUTO, "temperature") else None
        if temperature is not None:
            fields["calibration"] = {
                **lp.temperature_record(logits, labels, temperature),
                "fitted_on": {"scores": "validation", "validation_rows": len(labels)},
            }
            logits = logits / temperature
            lp.fold_temperature(layer, temperature)
        probabilities = logits.softmax(-1)
        coverage, precision = self.config.handoff_coverage, self.config.handoff_precision
        handoff = oos.choose_handoff(probabilities, labels, coverage, precision, self.out_of_scope_index)
        if handoff is not None:
            fields["handoff"] = handoff.manifest()
            metrics.update(handoff.metrics())
        if self.out_of_scope_index is not None:
            threshold = handoff.threshold if handoff is not None else 0.0
            section, scores, _ = oos.validation_report(
                self.label_names, self.out_of_scope_index, labels.tolist(), probabilities, threshold
            )
            fields["out_of_scope"] = section
            metrics.update(scores)
        return metrics, fields

    def tune_contrastive(self) -> None:
        """The few-shot stage (``contrastive.py``): supervised contrastive tuning of the embeddings the
        head reads, then a logistic regression on the tuned embeddings as the head. Its model is the
        first fine-tuned candidate (evaluated at step 0); with n_epochs "auto" it is the only one."""
        config = self.config
        layer = lp.linear_head(self.model)
        if config.training_type != "full" or self.pooling != "mean" or layer is None:
            self.warnings.append("contrastive_epochs needs full fine-tuning of a mean-pooled sentence encoder: skipped")
            self.config = replace(config, contrastive_epochs=0)
            return
        result = ct.tune_embeddings(
            self.model,
            layer,
            self.train_data,
            self.head.collate,
            self.head.forward,
            device=self.device,
            pad_id=self.pad_id,
            epochs=int(config.contrastive_epochs),
            learning_rate=ct.LEARNING_RATE,
            temperature=ct.TEMPERATURE,
            batch_size=ct.BATCH_SIZE,
            seed=int(config.seed),
            weight_decay=float(config.weight_decay),
            on_step=self.between_stage_steps,
        )
        features = lp.forward_rows(
            self.model, self.train_data, self.head.collate, self.head.forward, self.device, 64, self.pad_id, layer
        )
        labels = torch.as_tensor(np.asarray([int(f["labels"]) for f in self.train_data.features]))
        weight, bias = lp.fit_logistic_regression(features, labels, len(self.label_names), bias=layer.bias is not None)
        lp.set_linear(layer, weight, bias)
        self.contrastive = result
        self.auto_reasons["contrastive_stage"] = (
            f"learning rate {ct.LEARNING_RATE:g}, temperature {ct.TEMPERATURE:g}, batches of {ct.BATCH_SIZE} "
            f"({ct.EXAMPLES_PER_CLASS_IN_BATCH} per class): {result.steps} steps in {result.seconds:.0f} s"
        )
        self.auto_reasons["initial_head"] = "logistic regression on the contrastively tuned embeddings"
        log.info("contrastive stage: %s", result.manifest())

    def setup_optimizer(self) -> None:
        """Step counts, AdamW, the learning-rate schedule and (fp16 on CUDA) the gradient scaler."""
        config = self.config
        self.batch_size = int(config.batch_size)
        self.accumulation = int(config.gradient_accumulation_steps)
        n_train = len(self.train_data.features)
        self.steps_per_epoch = steps_per_epoch(n_train, self.batch_size, self.accumulation, self.dist.world_size)
        self.total_steps = math.ceil(float(config.n_epochs) * self.steps_per_epoch)
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, int(config.max_steps))
        if self.contrastive is not None and not auto.classification_epochs_follow_stage(self.spec.config):
            self.total_steps = 0
            self.auto_reasons["n_epochs"] = (
                "no classification epochs: few-shot contrastive recipe (the tuned encoder with its "
                "logistic-regression head is the fine-tuned model)"
            )
        self.optimizer = _optimizer(self.model, config, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _schedule(config, self.total_steps))
        use_scaler = self.device.type == "cuda" and config.precision == "fp16"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def fingerprint(self) -> dict[str, Any]:
        """What the run trains on and with; a checkpoint is resumed only under the same fingerprint."""
        # settings that change what is trained; logging and retention may differ on resume
        settings = {k: v for k, v in self.config.to_dict().items() if k not in ("log_every_steps", "keep_checkpoints")}
        return {
            "data": data_fingerprint(self.train_rows),
            "validation": data_fingerprint(self.val_rows),
            "config": settings,
            "label_names": list(self.label_names),
            "world_size": self.dist.world_size,
        }

    def restore(self) -> Path | None:
        """Resume from the latest complete checkpoint, if any: weights, optimizer, scheduler, scaler,
        RNG states and the run state. Returns the checkpoint's folder."""
        loaded = ckpt.latest_valid_checkpoint(self.checkpoint_root)
        if loaded is None:
            return None
        saved = loaded.state
        if saved.label_names != self.run.label_names:
            raise LabelError(
                f"checkpoint {loaded.path.name} has a head for {saved.label_names[:10]}, "
                f"the data has {self.run.label_names[:10]}"
            )
        if saved.fingerprint != self.run.fingerprint:
            raise ConfigError(
                f"checkpoint {loaded.path.name} was written for other data or hyperparameters; "
                "use a new output directory to start over",
            )
        ckpt.load_trainable_state(self.model, loaded.weights)
        self.optimizer.load_state_dict(loaded.optimizer)
        self.scheduler.load_state_dict(loaded.scheduler)
        if self.scaler is not None and loaded.scaler is not None:
            self.scaler.load_state_dict(loaded.scaler)
        ckpt.restore_rng(loaded.rng)
        self.run = saved
        self.last_checkpoint = loaded.path
        log.info("resumed from %s (step %d)", loaded.path, saved.step)
        return loaded.path

    def wrap_model(self) -> None:
        """``torch.compile`` and DDP wrap the module that trains; ``model`` stays the plain one."""
        self.train_model = self.model
        if self.config.compile:
            self.train_model = torch.compile(self.model, dynamic=True)  # type: ignore[assignment]
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.train_model, device_ids=device_ids)

    def setup_callbacks(self) -> None:
        patience = int(self.config.early_stopping_patience or 0)
        items = self.callbacks + ([EarlyStopping(patience)] if patience else [])
        if not self.dist.is_main:  # events come from rank 0; every rank must stop early together
            items = [cb for cb in items if isinstance(cb, EarlyStopping)]
        self.hooks = _Callbacks(items)
        self.hooks.on_train_begin(self.state)
        if self.probe is not None and self.dist.is_main:
            self.hooks.on_probe(self.probe.metrics)
        if self.probe_model is not None and self.dist.is_main:
            path, metrics = self.probe_model
            self.hooks.on_checkpoint(0, path, metrics, False, LINEAR_PROBE)
        if self.parent is not None and self.dist.is_main:
            added = list(self.label_names[len(self.parent.label_names) :])
            self.hooks.on_continued(self.parent.description, self.parent_metrics, added, self.replayed)

    # ---- the loop ------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Train to the last step (or an early stop), then select, fit and save the artifact.

        Raises :class:`Paused` / :class:`Cancelled` when a callback asks for it.
        """
        if self.contrastive is not None and self.run.step == 0 and self.has_validation:
            self.run_evaluation()  # the stage's model is the first fine-tuned candidate
        self.model.train()
        self.window = _ProgressWindow(self.device, self.run.step)
        self.last_heartbeat = time.monotonic()
        while self.running():
            epoch, batches = self.run.epoch, self.epoch_batches()
            # each epoch its own order, as a resumed run (which starts from epoch_batches) sees it
            while self.run.epoch == epoch and self.running():
                group = batches[self.run.batch_position : self.run.batch_position + self.accumulation]
                tokens = self.train_step(group)
                self.advance(len(group), len(batches), tokens)
                self.after_step()
        self.select_best()
        self.cross_validate_floor()
        self.keep_floor()
        refit = self.refit_features()  # before calibrate: its temperature is folded into the head
        self.calibrate(refit)
        if refit is not None:
            self.refit_head(*refit)
        self.fit_thresholds()
        self.hooks.on_train_end(self.state)
        return self.save_artifact()

    def running(self) -> bool:
        return self.run.step < self.total_steps and not self.state.should_stop

    def epoch_batches(self) -> list[np.ndarray]:
        """The current epoch's batches of row indices (this rank's share under DDP)."""
        config, dist = self.config, self.dist
        batches = epoch_batches(
            self.train_lengths, self.batch_size, config.seed, self.run.epoch, bool(config.group_by_length)
        )
        if dist.enabled:  # same number of batches on every rank: wrap around
            per_rank = math.ceil(len(batches) / dist.world_size)
            batches = (batches * 2)[: per_rank * dist.world_size][dist.rank :: dist.world_size]
        return batches

    def train_step(self, group: Sequence[np.ndarray]) -> int:
        """One optimizer step over ``group``'s micro-batches (gradients accumulate); a step with a
        non-finite loss or gradient is skipped. Returns the tokens trained on."""
        step_loss = torch.zeros((), device=self.device)
        self.step_metrics = {}
        tokens = 0
        for i, indices in enumerate(group):
            step_loss += self.backward(indices, len(group), last=i == len(group) - 1)
            self.window.rows += len(indices)
            tokens += int(self.train_lengths[indices].sum())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, float(self.config.max_grad_norm) or float("inf"))
        finite = torch.isfinite(step_loss)
        if self.scaler is None:  # the scaler skips steps with non-finite gradients itself
            finite = finite & torch.isfinite(grad_norm)
        if self.dist.all_ok(bool(finite)):  # the one host sync of the step
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.window.loss += step_loss
            for name, value in self.step_metrics.items():
                self.window.metrics[name] = self.window.metrics.get(name, 0.0) + value
            self.window.steps += 1
        else:
            self.skip_non_finite_step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return tokens

    def backward(self, indices: np.ndarray, micro_batches: int, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its share of the step's loss."""
        batch = _to_device(self.head.collate([self.train_data.features[j] for j in indices], self.pad_id), self.device)
        # DDP all-reduces gradients on the step's last micro-batch only
        no_sync = self.dist.enabled and not last
        sync = self.train_model.no_sync() if no_sync else nullcontext()  # type: ignore[operator]
        with sync, _autocast(self.device, str(self.config.precision)):
            logits = self.head.forward(self.train_model, batch)
            loss = self.head.loss(logits, batch)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.head.forward(self.teacher, batch)
                temperature = float(self.config.distillation_temperature)
                kd = self.head.distillation_loss(logits, teacher_logits, batch, temperature)
                alpha = float(self.config.distillation_alpha)
                loss = alpha * kd + (1.0 - alpha) * loss
            for name, value in self.head.step_metrics(logits, batch).items():
                self.step_metrics[name] = self.step_metrics.get(name, 0.0) + value.detach() / micro_batches
            scaled = loss / micro_batches
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
        return scaled.detach()

    def skip_non_finite_step(self) -> None:
        self.run.non_finite += 1
        if self.run.non_finite > self.config.non_finite_retries:
            raise NonFiniteLoss(
                f"the loss was not finite {self.run.non_finite} times (last at step {self.run.step + 1}); "
                "lower the learning rate or check the data"
            )
        self.scheduler.base_lrs = [lr * 0.5 for lr in self.scheduler.base_lrs]
        log.warning("non-finite loss at step %d: step skipped, learning rate halved", self.run.step + 1)

    def advance(self, micro_batches: int, epoch_length: int, tokens: int) -> None:
        """Count the step: step, data position, epoch, tokens, learning rate."""
        run = self.run
        run.step += 1
        self.state.learning_rate = float(self.scheduler.get_last_lr()[0])
        run.batch_position += micro_batches
        if run.batch_position >= epoch_length:
            run.epoch, run.batch_position = run.epoch + 1, 0
        self.state.epoch = run.epoch + run.batch_position / max(1, epoch_length)
        run.trained_tokens += tokens * self.dist.world_size
        self.window.tokens += tokens

    def after_step(self) -> None:
        """Progress, evaluation, checkpoint, heartbeat and pause/cancel between optimizer steps."""
        step, config = self.run.step, self.config
        if self.dist.is_main and (step % int(config.log_every_steps) == 0 or step == self.total_steps):
            self.hooks.on_progress(self.window.event(self.state, self.dist.world_size))
        metrics, improved = None, False
        if self.has_validation and (step % int(config.eval_every_steps) == 0 or step == self.total_steps):
            metrics, improved = self.run_evaluation()
            self.model.train()
        # no resume checkpoint at the step that ends the run: the artifact follows at once, and the
        # best weights are in memory
        if self.running() and (step % int(config.checkpoint_every_steps) == 0 or improved):
            self.save_checkpoint(metrics, improved)
        self.heartbeat()
        self.obey_control(metrics)

    def heartbeat(self) -> None:
        if time.monotonic() - self.last_heartbeat > HEARTBEAT_SECONDS:
            if self.dist.is_main:
                self.hooks.on_heartbeat()
            self.last_heartbeat = time.monotonic()

    def between_stage_steps(self, *_: Any) -> None:
        """Each step of the few-shot stage and of its cross-validation: a heartbeat, and a cancel or a
        pause stops them at once (they took 1-3 minutes to notice one). Both run before any
        classification step and keep no checkpoint: a paused job's next attempt redoes them (the
        probe and its early model are cached in ``output_dir/probe``), which costs what waiting for
        their end would have."""
        self.heartbeat()
        request = self.hooks.control() if not self.dist.enabled else None
        if request == "cancel":
            raise Cancelled(0, self.last_checkpoint)
        if request == "pause":
            raise Paused(0, None)

    def obey_control(self, metrics: Mapping[str, float] | None) -> None:
        """Pause (checkpoint, then :class:`Paused`) or cancel when rank 0's callbacks ask for it."""
        request = self.hooks.control() if self.dist.is_main else None
        code = self.dist.broadcast_int({"pause": 1, "cancel": 2}.get(request or "", 0))
        if code == 1:
            path = self.last_checkpoint
            if path != ckpt.checkpoint_dir(self.checkpoint_root, self.run.step):  # not written at this step yet
                path = self.save_checkpoint(metrics, False)
            raise Paused(self.run.step, path)
        if code == 2:
            raise Cancelled(self.run.step, self.last_checkpoint)

    # ---- evaluation and checkpoints ------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        # On CPU the runtime serves fp32: evaluate so, so that the recorded metrics, the selected
        # checkpoint and the fitted thresholds are those of the served model (bf16 training or not).
        precision = str(self.config.precision) if self.device.type == "cuda" else "fp32"
        return _evaluate(
            self.model,
            self.head,
            self.val_data,
            self.val_rows,
            self.label_names,
            self.device,
            precision,
            self.batch_size * 2,
            self.task,
            self.pad_id,
            self.dist,
        )

    def run_evaluation(self) -> tuple[dict[str, float], bool]:
        """Evaluate, and keep the weights when the selection metric improved; returns (metrics, improved)."""
        run, task = self.run, self.task
        metrics = self.evaluate()
        self.last_eval_step = run.step
        if task.selection_metric not in metrics:
            raise ConfigError(
                f"the task's metrics do not include its selection metric {task.selection_metric!r} "
                f"(they have {sorted(metrics)})"
            )
        value = float(metrics[task.selection_metric])
        improved = math.isfinite(value) and _improved(
            value, metrics.get("eval_loss"), run.best_metric, run.best_metrics.get("eval_loss"), task.greater_is_better
        )
        if improved:
            run.best_metric, run.best_step = value, run.step
            run.evaluations_without_improvement = 0
            run.best_metrics = dict(metrics)
            self.best_weights = {name: p.to("cpu", copy=True) for name, p in ckpt.trainable_state(self.model).items()}
        else:
            run.evaluations_without_improvement += 1
        self.hooks.on_evaluate(run.step, metrics)
        return metrics, improved

    def best_checkpoint(self) -> Path | None:
        name = self.run.best_checkpoint
        return self.checkpoint_root / name if name else None

    def save_checkpoint(self, metrics: Mapping[str, float] | None, is_best: bool) -> Path:
        """Checkpoint the current step (rank 0 writes; every rank waits) and prune old ones."""
        path = ckpt.checkpoint_dir(self.checkpoint_root, self.run.step)
        if is_best:
            self.run.best_checkpoint = path.name
        if self.dist.is_main:
            ckpt.save_checkpoint(
                self.checkpoint_root, self.run, self.model, self.optimizer, self.scheduler, self.scaler
            )
            ckpt.prune_checkpoints(self.checkpoint_root, self.config.keep_checkpoints, self.best_checkpoint())
            self.hooks.on_checkpoint(self.run.step, path, metrics, is_best)
        self.dist.barrier()
        self.last_checkpoint = path
        return path

    # ---- the end of the run --------------------------------------------------------------------
    def select_best(self) -> None:
        """Evaluate the last step if it was not, then put the best evaluation's weights in the model."""
        run = self.run
        if self.has_validation and self.last_eval_step != run.step:
            self.run_evaluation()
        if self.has_validation and run.best_step is not None and run.best_step != run.step:
            weights = self.best_weights
            if weights is None:  # the best evaluation was before a resume: it is on disk
                best = self.best_checkpoint()
                if best is None or not best.is_dir():
                    raise ModelLoadError(f"the best checkpoint (step {run.best_step}) is missing")
                weights = ckpt.load_checkpoint(best).weights
            ckpt.load_trainable_state(self.model, weights)
        self.best_weights = None

    def cross_validate_floor(self) -> None:
        """Few-shot floor on more evidence (``crossval.py``): when the contrastive stage's model is the
        only fine-tuned candidate and validation has under ``CROSS_VALIDATE_BELOW`` rows, score it
        and the probe out-of-fold over every labelled row (the stage retrained per fold). Its scores
        then decide :meth:`keep_floor` and calibrate a shipped stage (:meth:`calibrate`)."""
        if (
            self.probe is None
            or self.contrastive is None
            or self.run.step != 0  # classification epochs followed the stage
            or self.run.best_step != 0
            or self.dist.enabled
        ):
            return
        data = Encoded(features=[*self.train_data.features, *self.val_data.features])
        folds = auto.floor_folds(len(self.train_data.features), len(self.val_data.features))
        if folds is None:
            return
        rows = [*self.train_rows, *self.val_rows]
        labels = torch.as_tensor(np.asarray([int(f["labels"]) for f in data.features]))

        def build(_fold: int) -> torch.nn.Module:
            model: torch.nn.Module = self.head.build_model(self.base_model, self.label_names, pooling=self.pooling)
            model.to(self.device)
            if self.device.type == "cpu" and not bernoulli_is_vectorised():
                use_cpu_dropout(model)
            return model

        def score(logits: torch.Tensor, index: torch.Tensor) -> dict[str, float]:
            decoded = self.head.decode(logits, {"labels": labels[index]}, self.label_names)
            output = self.head.eval_output(decoded, self.label_names, 0.0, [rows[i] for i in index.tolist()])
            return self.head.metrics(output)

        layer = lp.linear_head(self.model)
        self.floor_cv = cv.cross_validate(
            build,
            data,
            len(self.label_names),
            folds,
            int(self.config.seed),
            score,
            self.task.selection_metric,
            self.task.greater_is_better,
            collate=self.head.collate,
            forward=self.head.forward,
            device=self.device,
            pad_id=self.pad_id,
            epochs=int(self.config.contrastive_epochs),
            weight_decay=float(self.config.weight_decay),
            bias=layer is not None and layer.bias is not None,
            on_step=self.between_stage_steps,
        )
        log.info("few-shot floor: %s", self.floor_cv.manifest())

    def keep_floor(self) -> None:
        """Ship the linear probe instead of the fine-tuned weights unless fine-tuning beat it on
        validation by the task's selection metric (or, when :meth:`cross_validate_floor` ran, on
        the cross-validated scores of every labelled row)."""
        if self.probe is None:
            return
        metric, greater = self.task.selection_metric, self.task.greater_is_better
        tuned, floor = self.run.best_metric, float(self.probe.metrics[metric])
        if self.floor_cv is not None:
            self.warnings.append(self.floor_cv.describe())
            log.warning(self.warnings[-1])
            if self.floor_cv.stage_wins:
                return
        elif tuned is not None and ((tuned > floor) if greater else (tuned < floor)):
            return
        self.shipped = "linear_probe"
        fresh = self.head.build_model(self.base_model, self.label_names, pooling=self.pooling)
        originals = dict(fresh.named_parameters())
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if "lora_B" in name:  # LoRA's B at zero: the adapter adds nothing to the base
                    param.zero_()
                elif self.config.training_type == "full" and name in originals:
                    param.copy_(originals[name].to(param.device))
        layer = lp.linear_head(self.model)
        assert layer is not None  # the probe was fitted on it
        lp.set_linear(layer, self.probe.weight, self.probe.bias)
        self.run.best_metrics, self.run.best_step, self.run.best_metric = dict(self.probe.metrics), 0, floor
        if self.floor_cv is not None:
            return
        shown = "no evaluation" if tuned is None else f"{metric} {tuned:.4f}"
        self.warnings.append(
            f"the fine-tuned model ({shown}) did not beat the linear probe ({metric} {floor:.4f}) on the validation "
            "split: the artifact holds the linear probe (the base model, frozen, with a logistic-regression head)"
        )
        log.warning(self.warnings[-1])

    def refit_features(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The features and labels of every labelled row (training, then validation) that the shipped
        head reads, when that head is a logistic regression to refit on them (:meth:`refit_head`):
        single-label classification, a validation split under ``CROSS_VALIDATE_BELOW`` rows, and the
        shipped model is the linear probe or the contrastive stage's model (no classification epochs
        after it: its head is the logistic regression on the tuned embeddings). None otherwise."""
        layer = lp.linear_head(self.model)
        if (
            self.probe is None
            or layer is None
            or not self.has_validation
            or len(self.val_data.features) >= CROSS_VALIDATE_BELOW
        ):
            return None
        stage_model = self.contrastive is not None and self.run.best_step == 0
        if self.shipped != "linear_probe" and not stage_model:
            return None
        features = [
            lp.forward_rows(self.model, data, self.head.collate, self.head.forward, self.device, 64, self.pad_id, layer)
            for data in (self.train_data, self.val_data)
        ]
        labels = [
            torch.as_tensor(np.asarray([int(f["labels"]) for f in data.features]))
            for data in (self.train_data, self.val_data)
        ]
        return torch.cat(features), torch.cat(labels)

    def refit_head(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Refit the shipped logistic-regression head on every labelled row (training + validation,
        ``features`` from :meth:`refit_features`) once the floor has decided, and fold the calibrated
        temperature into it. The reported validation metrics stay those of the head fitted on the
        training rows (the refitted head has seen the validation rows); calibration was fitted on
        out-of-sample scores before (:meth:`calibrate`)."""
        layer = lp.linear_head(self.model)
        assert layer is not None
        weight, bias = self.refitted_head(features, labels)
        lp.set_linear(layer, weight, bias)
        temperature = (self.calibration or {}).get("temperature")
        if temperature is not None:
            lp.fold_temperature(layer, float(temperature))
        self.refit = {
            "head": "linear_probe" if self.shipped == "linear_probe" else "contrastive_stage",
            "rows": len(labels),
            "training_rows": len(self.train_data.features),
            "validation_rows": len(self.val_data.features),
            "rule": f"validation split under {CROSS_VALIDATE_BELOW} rows: the logistic-regression head is refitted "
            "on training + validation after the floor's decision; validation metrics are the training-only head's",
        }
        log.info("head refitted on %d rows (training + validation)", len(labels))

    def refitted_head(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The logistic regression on every labelled row that :meth:`refit_head` ships (fitted once)."""
        if self.refit_weights is None:
            layer = lp.linear_head(self.model)
            bias = layer is not None and layer.bias is not None
            self.refit_weights = lp.fit_logistic_regression(features, labels, len(self.label_names), bias=bias)
        return self.refit_weights

    def calibrate(self, refit: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Single-label classification: temperature scaling fitted on validation and folded into the
        head, then the hand-off threshold chosen on validation for the job's target; the final
        metrics report coverage and accuracy at that threshold. With ``refit`` (every labelled row's
        features, :meth:`refit_features`) and the probe shipped, or the cross-validated stage shipped,
        both are fitted on out-of-fold scores of every labelled row instead; the temperature served
        is then the out-of-fold one times :func:`probe.sharpness_ratio` (the refitted head, fitted on
        every row, is sharper than the fold heads that produced those scores)."""
        layer = lp.linear_head(self.model)
        single = self.task.kind is TaskKind.SEQUENCE_CLASSIFICATION and self.has_validation
        method = str(self.config.calibration)
        if method == AUTO:
            method = "temperature" if single and layer is not None else "none"
        elif method == "temperature" and not (single and layer is not None):
            self.warnings.append(
                "calibration needs single-label classification, a validation split and a one-layer head: skipped"
            )
            method = "none"
        self.config = replace(self.config, calibration=method)
        if not single:
            targets = self.config.handoff_coverage is not None or self.config.handoff_precision is not None
            if self.task.kind is TaskKind.SEQUENCE_CLASSIFICATION and targets:
                self.warnings.append(
                    "no validation rows (validation_split 0 and no validation file): the model is not calibrated, "
                    "has no linear-probe floor and no hand-off threshold for its coverage/precision target (serving "
                    "falls back to the pack's fixed threshold); give a validation file or a validation_split above 0"
                )
            return
        fitted_on: dict[str, Any] = {"scores": "validation", "validation_rows": len(self.val_data.features)}
        folds_fitted: list[torch.Tensor] = []  # each fold head's logits of its own training rows
        held_out = self.cross_validated_probe_scores(refit, folds_fitted)
        if held_out is not None:
            logits, labels = held_out
            fitted_on["scores"] = f"out_of_fold ({PROBE_FOLDS} folds, frozen base)"
        elif self.floor_cv is not None and self.shipped != "linear_probe":  # the stage's out-of-fold scores
            logits, labels = self.floor_cv.stage_logits, self.floor_cv.labels
            folds_fitted = list(self.floor_cv.stage_fitted_logits)
            fitted_on["scores"] = f"out_of_fold ({self.floor_cv.folds} folds, contrastive stage retrained per fold)"
        else:
            logits = lp.forward_rows(
                self.model, self.val_data, self.head.collate, self.head.forward, self.device, 64, self.pad_id
            )
            labels = torch.as_tensor(np.asarray([int(f["labels"]) for f in self.val_data.features]))
        if fitted_on["scores"] != "validation":
            fitted_on["cross_validated_training_rows"] = len(self.train_data.features)
        temperature = lp.fit_temperature(logits, labels) if method == "temperature" else None
        if method == "temperature" and temperature is None:
            method = "none"
            self.config = replace(self.config, calibration=method)
            self.warnings.append(
                f"temperature scaling skipped: the model predicted all {len(labels)} held-out rows right, so there "
                "is no error to fit a temperature to (the fit would make every answer look certain); the model's "
                "own confidences are served and the hand-off threshold is chosen on them"
            )
        served = temperature
        if temperature is not None and folds_fitted and refit is not None:
            served = temperature * self.sharpness_correction(refit, folds_fitted, temperature, fitted_on)
        if temperature is not None and served is not None and layer is not None:
            record = lp.temperature_record(logits, labels, temperature)
            self.calibration = {**record, "temperature": served, "fitted_on": fitted_on}
            logits = logits / temperature  # the threshold is chosen on the scores the temperature was fitted to
            lp.fold_temperature(layer, served)  # refit_head folds it into the refitted head too
            self.run.best_metrics = self.evaluate()  # the served model's numbers (its loss changed)
        coverage, precision = self.config.handoff_coverage, self.config.handoff_precision
        self.handoff = oos.choose_handoff(logits.softmax(-1), labels, coverage, precision, self.out_of_scope_index)
        oos.report(self)  # the out-of-scope numbers at that threshold, on validation
        if self.handoff is None:
            return
        self.run.best_metrics = {**self.run.best_metrics, **self.handoff.metrics()}
        if self.handoff.missed:
            self.warnings.append(self.handoff.missed)
        if len(labels) < 50:
            self.warnings.append(
                f"the hand-off threshold was chosen on {len(labels)} validation rows: expect its coverage to "
                "differ on live traffic; a larger validation split makes it reliable"
            )

    def sharpness_correction(
        self,
        refit: tuple[torch.Tensor, torch.Tensor],
        folds_fitted: list[torch.Tensor],
        temperature: float,
        fitted_on: dict[str, Any],
    ) -> float:
        """The factor on the out-of-fold temperature for the head that ships: its in-sample logit
        spread over the fold heads' (``probe.sharpness_ratio``), recorded in ``fitted_on``. Fold
        heads learn from (folds-1)/folds of the rows and are less sharp; a temperature and threshold
        fitted on their scores alone made the shipped model answer more than its target."""
        features, labels = refit
        weight, bias = self.refitted_head(features, labels)
        shipped = features @ weight.T + (bias if bias is not None else 0.0)
        ratio = lp.sharpness_ratio(shipped, folds_fitted)
        fitted_on["sharpness_correction"] = {
            "out_of_fold_temperature": temperature,
            "ratio": ratio,
            "rule": "served temperature = out-of-fold temperature x (logit spread of the head refitted on every "
            "row, in-sample) / (mean logit spread of the fold heads, each on its own training rows); the "
            "hand-off threshold is chosen on the out-of-fold scores at the out-of-fold temperature",
        }
        log.info(
            "calibration: sharpness ratio %.4f (temperature %.4f -> %.4f)", ratio, temperature, temperature * ratio
        )
        return ratio

    def cross_validated_probe_scores(
        self, refit: tuple[torch.Tensor, torch.Tensor] | None, fitted: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """When the linear probe ships and its head is refitted on every labelled row (``refit``: the
        frozen base's features of training + validation): out-of-fold probe logits of all those rows
        (``PROBE_FOLDS`` fits, each scoring the fold it did not see), so that the temperature and the
        hand-off threshold rest on all the labelled rows, not on a few dozen, and on no row its model
        saw. (A fine-tuned encoder has seen its training rows: their scores would be optimistic, so
        the stage's model is calibrated on validation alone.)"""
        layer = lp.linear_head(self.model)
        if self.shipped != "linear_probe" or layer is None or refit is None:
            return None
        features, labels = refit
        logits = lp.cross_validated_logits(
            features,
            labels,
            len(self.label_names),
            PROBE_FOLDS,
            int(self.config.seed),
            bias=layer.bias is not None,
            fitted=fitted,
        )
        return logits, labels

    def quality_manifest(self) -> dict[str, Any]:
        """The floor, calibration and hand-off decisions, for ``tunery_artifact.json``."""
        fields: dict[str, Any] = {}
        if self.probe is not None:
            fields["shipped"] = self.shipped
            fields["linear_probe"] = self.probe.manifest()
        if self.contrastive is not None:
            fields["contrastive_stage"] = self.contrastive.manifest()
        fields.update(oos.manifest_fields(self))
        if self.calibration is not None:
            fields["calibration"] = self.calibration
        if self.handoff is not None:
            fields["handoff"] = self.handoff.manifest()
        if self.refit is not None:
            fields["refit"] = self.refit
        if self.floor_cv is not None:
            fields["floor_cross_validation"] = {
                **self.floor_cv.manifest(),
                "rule": f"few-shot: contrastive stage on, validation under {CROSS_VALIDATE_BELOW} rows; folds: the "
                f"most up to {MAX_FOLDS} with rows x (folds - 1) <= {ROW_FOLD_BUDGET} (at least {MIN_FOLDS}); "
                "the stage ships only if its out-of-fold selection metric beats the probe's on the same folds",
            }
        return fields

    def fit_thresholds(self) -> None:
        """Multi-label "auto" thresholds, fitted on validation with the selected weights."""
        if self.config.label_thresholds != "auto":
            return
        flat_metrics = self.evaluate() if self.has_validation else None  # at 0.5; the head keeps the scores
        self.config = self.head.fit_thresholds(self.config)
        if flat_metrics is None or self.config.label_thresholds is None:
            return
        fitted_metrics = self.evaluate()
        metric = self.task.selection_metric
        fitted, flat = fitted_metrics[metric], flat_metrics[metric]
        # Per-label best-F1 cuts can hurt the task's own metric (an undertrained model's best cut is
        # often "every row gets the label"): they are kept only if that metric does not get worse.
        if (fitted < flat) if self.task.greater_is_better else (fitted > flat):
            self.config = self.head.fit_thresholds(replace(self.config, label_thresholds=None))
            self.run.best_metrics = flat_metrics
        else:
            self.run.best_metrics = fitted_metrics

    def write_model(
        self,
        folder: Path,
        metrics: Mapping[str, float],
        best_step: int | None,
        quality: Mapping[str, Any],
        distilled: bool = True,
    ) -> None:
        """The model as it stands, as an artifact in ``folder`` (``quality``: the floor, calibration
        and hand-off fields of its manifest; ``distilled``: trained with the job's teacher, if any)."""
        spec = self.spec
        write_artifact(
            folder,
            self.model,
            self.tokenizer,
            self.task,
            self.config,
            self.label_names,
            self.base_model,
            metrics,
            best_step,
            vertical=spec.vertical_id,
            vertical_version=spec.vertical_version,
            extra={
                "train_rows": len(self.train_data.features),
                "validation_rows": len(self.val_data.features),
                "teacher_model": str(spec.teacher_model) if spec.teacher_model and distilled else None,
            },
            manifest_fields={**self.head.manifest_fields(), **quality},
        )

    def save_artifact(self) -> TrainResult:
        """Write the artifact (rank 0) and describe the run."""
        run = self.run
        best_step = run.best_step if self.has_validation else run.step
        final_dir = self.output_dir / "final"
        if self.dist.is_main:
            self.write_model(final_dir, run.best_metrics, best_step, self.quality_manifest())
        self.dist.barrier()
        return TrainResult(
            metrics=run.best_metrics,
            best_step=best_step,
            artifact_dir=final_dir,
            resolved_config=self.config,
            trained_tokens=run.trained_tokens,
            seconds=time.monotonic() - self.started,
            label_names=self.label_names,
            steps=run.step,
            warnings=self.warnings,
        )


def train(spec: JobSpec, callbacks: Sequence[TrainingCallback] = ()) -> TrainResult:
    """Train one job; resumes from the latest complete checkpoint in ``output_dir/checkpoints``.

    Raises :class:`Paused` / :class:`Cancelled` when a callback asks for it, and an
    :class:`EngineError` subclass for anything the job cannot recover from.
    """
    denormals_flushed = _denormals_flushed()
    try:
        recipe = FineTuneRecipe(spec, callbacks)
        recipe.setup()
        return recipe.train()
    finally:  # a CPU run turns flush-to-zero on for itself, not for the process hosting it
        torch.set_flush_denormal(denormals_flushed)


def _denormals_flushed() -> bool:
    """Whether this thread flushes denormals to zero (torch has a setter, not a getter)."""
    return float((torch.tensor([1e-40], dtype=torch.float32) * 1.0).item()) == 0.0


def _evaluate(
    model: torch.nn.Module,
    head: TaskHead,
    data: Encoded,
    rows: Sequence[Mapping[str, Any]],
    label_names: tuple[str, ...],
    device: torch.device,
    precision: str,
    batch_size: int,
    task: Any,
    pad_id: int,
    dist: _Distributed | None = None,
) -> dict[str, float]:
    """Evaluate in length order under inference_mode; EvalOutput rows come back in file order.

    Under DDP each rank evaluates every world_size-th batch and the ranks exchange their outputs, so
    every rank computes the same metrics (selection and early stopping agree) from the whole split.
    """
    was_training = model.training
    model.eval()
    n = len(data.features)
    order: list[int] = []
    y_true: list[Any] = []
    y_pred: list[Any] = []
    scores: list[Any] | None = []
    loss_sum = 0.0
    batches = eval_batches(data.lengths, batch_size)
    if dist is not None and dist.enabled:
        batches = batches[dist.rank :: dist.world_size]
    with torch.inference_mode(), _autocast(device, precision):
        for indices in batches:
            batch = _to_device(head.collate([data.features[i] for i in indices], pad_id), device)
            logits = head.forward(model, batch)
            loss_sum += float(head.loss(logits, batch)) * len(indices)
            decoded = head.decode(logits, batch, label_names)
            order.extend(int(i) for i in indices)
            y_true.extend(decoded.y_true)
            y_pred.extend(decoded.y_pred)
            if decoded.scores is None:
                scores = None
            elif scores is not None:
                scores.extend(decoded.scores)
    if was_training:
        model.train()
    if dist is not None and dist.enabled:
        shards: list[Any] = [None] * dist.world_size
        torch.distributed.all_gather_object(shards, (order, y_true, y_pred, scores, loss_sum))
        order, y_true, y_pred, loss_sum = [], [], [], 0.0
        scores = []
        for shard_order, shard_true, shard_pred, shard_scores, shard_loss in shards:
            order.extend(shard_order)
            y_true.extend(shard_true)
            y_pred.extend(shard_pred)
            loss_sum += shard_loss
            if shard_scores is None:
                scores = None
            elif scores is not None:
                scores.extend(shard_scores)
    position = np.argsort(np.asarray(order, dtype=np.int64), kind="stable")

    def reorder(values: list[Any]) -> list[Any]:
        return [values[i] for i in position] if values else values

    decoded_all = DecodedBatch(reorder(y_true), reorder(y_pred), reorder(scores) if scores else None)
    eval_loss = loss_sum / max(1, n)
    output = head.eval_output(decoded_all, label_names, eval_loss, rows)
    metrics = {k: float(v) for k, v in head.metrics(output).items()}
    metrics.setdefault("eval_loss", eval_loss)
    return metrics
