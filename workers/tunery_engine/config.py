"""Training configuration (PEFT ``LoraConfig`` / litgpt style) and the job spec.

Every numeric field may be ``"auto"``; :func:`resolve` turns a config into a fully resolved copy from
the data size and the model size. The resolved copy is what trains and what is saved next to the
artifact (``training_config.json``), so a run can always be explained and repeated.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunery_engine.errors import ConfigError

if TYPE_CHECKING:
    from tunery_contract import TaskDefinition

AUTO = "auto"
Auto = Literal["auto"]

TRAINING_TYPES = ("lora", "full")
SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
POOLING_CHOICES = ("auto", "model", "mean")
#: evaluations (and so checkpoints) per run when eval_every_steps is "auto"
MAX_AUTO_EVALUATIONS = 10


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig:
    training_type: str = field(default="full", metadata=_help("'full' fine-tuning or 'lora' adapters (peft)"))
    n_epochs: int | float | str = field(default=AUTO, metadata=_help("passes over the training data"))
    batch_size: int | str = field(default=AUTO, metadata=_help("rows per forward pass (per device)"))
    learning_rate: float | str = field(default=AUTO, metadata=_help("peak learning rate of AdamW"))
    gradient_accumulation_steps: int | str = field(
        default=AUTO, metadata=_help("forward passes summed into one optimizer step")
    )
    max_length: int | str = field(default=AUTO, metadata=_help("tokens per row; longer rows are truncated"))
    warmup_ratio: float | str = field(default=AUTO, metadata=_help("fraction of steps with a linear warm-up"))
    weight_decay: float | str = field(default=AUTO, metadata=_help("AdamW weight decay (not on biases/norms)"))
    lr_scheduler: str = field(default="linear", metadata=_help("'linear', 'cosine' or 'constant' after warm-up"))
    precision: str = field(
        default=AUTO,
        metadata=_help(
            "'auto' (bf16/fp16 on CUDA; bf16 on CPUs with AVX-512 BF16 or AMX, else fp32), 'fp32', 'bf16', 'fp16'"
        ),
    )
    gradient_checkpointing: bool = field(default=False, metadata=_help("trade compute for activation memory"))
    lora_r: int | str = field(default=AUTO, metadata=_help("LoRA rank"))
    lora_alpha: float | str = field(default=AUTO, metadata=_help("LoRA scaling numerator (auto: 2 x rank)"))
    lora_dropout: float | str = field(default=AUTO, metadata=_help("dropout on the LoRA input"))
    lora_target_modules: list[str] | None = field(
        default=None, metadata=_help("module names LoRA wraps; None = chosen per architecture")
    )
    early_stopping_patience: int | None = field(
        default=3, metadata=_help("evaluations without improvement before stopping; 0 or None = off")
    )
    eval_every_steps: int | str = field(
        default=AUTO, metadata=_help("optimizer steps between evaluations (auto: each epoch, at most 10 per run)")
    )
    checkpoint_every_steps: int | str = field(
        default=AUTO, metadata=_help("optimizer steps between checkpoints (auto: at each evaluation)")
    )
    keep_checkpoints: int = field(default=2, metadata=_help("latest checkpoints kept (the best is kept as well)"))
    seed: int = field(default=42, metadata=_help("seed of data order, initialisation and dropout"))
    validation_split: float = field(
        default=0.1, metadata=_help("fraction held out (stratified) when no validation file is given")
    )
    max_steps: int | None = field(default=None, metadata=_help("stop after this many optimizer steps"))
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping norm; 0 = off"))
    distillation_temperature: float = field(default=2.0, metadata=_help("softmax temperature of the teacher's targets"))
    distillation_alpha: float = field(
        default=0.5, metadata=_help("weight of the distillation loss (1 - alpha on labels)")
    )
    group_by_length: bool = field(default=True, metadata=_help("batch rows of similar length (less padding)"))
    pooling: str = field(
        default=AUTO,
        metadata=_help(
            "sequence classification: 'mean' of the token states or 'model' (the architecture's own [CLS] head); "
            "'auto' = mean where the base model declares sentence-transformers mean pooling (BERT-family)"
        ),
    )
    compile: bool | str = field(default=AUTO, metadata=_help("torch.compile the model ('auto': on CUDA only)"))
    packing: bool = field(default=False, metadata=_help("pack several SFT conversations per row (causal LM only)"))
    non_finite_retries: int = field(
        default=3, metadata=_help("NaN/inf losses tolerated (each skips the step and halves the lr)")
    )
    log_every_steps: int = field(default=10, metadata=_help("optimizer steps between progress events"))
    pos_weight: list[float] | str | None = field(
        default=AUTO,
        metadata=_help(
            "multi-label only: BCE weight of each label's positive class; 'auto' = sqrt(negatives / positives) "
            "in the training split, clipped to [1, 50] (rare labels are not ignored); null = unweighted"
        ),
    )
    label_thresholds: list[float] | str | None = field(
        default=AUTO,
        metadata=_help(
            "multi-label only: probability at which each label is given; 'auto' = fitted after training on the "
            "validation split with the selected weights (best F1 per label, 0.5 for a label without validation "
            "positives); null = 0.5 for every label"
        ),
    )

    def __post_init__(self) -> None:
        _choice("training_type", self.training_type, TRAINING_TYPES)
        _choice("lr_scheduler", self.lr_scheduler, SCHEDULERS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("pooling", self.pooling, POOLING_CHOICES)
        _number("n_epochs", self.n_epochs, low=0, low_open=True, high=1000)
        _number("batch_size", self.batch_size, integer=True, low=1, high=65536)
        _number("learning_rate", self.learning_rate, low=0, low_open=True, high=1.0)
        _number("gradient_accumulation_steps", self.gradient_accumulation_steps, integer=True, low=1, high=4096)
        _number("max_length", self.max_length, integer=True, low=2, high=1 << 20)
        _number("warmup_ratio", self.warmup_ratio, low=0, high=1, high_open=True)
        _number("weight_decay", self.weight_decay, low=0, high=1)
        _number("lora_r", self.lora_r, integer=True, low=1, high=4096)
        _number("lora_alpha", self.lora_alpha, low=0, low_open=True, high=1e6)
        _number("lora_dropout", self.lora_dropout, low=0, high=1, high_open=True)
        _number("eval_every_steps", self.eval_every_steps, integer=True, low=1, high=1 << 40)
        _number("checkpoint_every_steps", self.checkpoint_every_steps, integer=True, low=1, high=1 << 40)
        _number("validation_split", self.validation_split, low=0, high=0.9)
        _number("distillation_temperature", self.distillation_temperature, low=0, low_open=True, high=100)
        _number("distillation_alpha", self.distillation_alpha, low=0, high=1)
        _number("max_grad_norm", self.max_grad_norm, low=0, high=1e6)
        _number("keep_checkpoints", self.keep_checkpoints, integer=True, low=1, high=1000, auto=False)
        _number("non_finite_retries", self.non_finite_retries, integer=True, low=0, high=1000, auto=False)
        _number("log_every_steps", self.log_every_steps, integer=True, low=1, high=1 << 30, auto=False)
        _number("seed", self.seed, integer=True, low=0, high=2**32 - 1, auto=False)
        if self.max_steps is not None:
            _number("max_steps", self.max_steps, integer=True, low=1, high=1 << 40, auto=False)
        if self.early_stopping_patience is not None:
            _number(
                "early_stopping_patience", self.early_stopping_patience, integer=True, low=0, high=10**6, auto=False
            )
        if self.pos_weight not in (None, AUTO) and (
            not isinstance(self.pos_weight, list)
            or not self.pos_weight
            or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0
                for w in self.pos_weight
            )
        ):
            raise ConfigError(f"pos_weight must be 'auto', null or a list of positive numbers; got {self.pos_weight!r}")
        if self.label_thresholds not in (None, AUTO) and (
            not isinstance(self.label_thresholds, list)
            or not self.label_thresholds
            or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1 for t in self.label_thresholds
            )
        ):
            raise ConfigError(
                "label_thresholds must be 'auto', null or a list of probabilities in (0, 1); "
                f"got {self.label_thresholds!r}"
            )
        if self.compile not in (True, False, AUTO):
            raise ConfigError(f"compile must be true, false or 'auto', got {self.compile!r}")
        if self.lora_target_modules is not None and (
            not isinstance(self.lora_target_modules, list)
            or not self.lora_target_modules
            or not all(isinstance(m, str) and m for m in self.lora_target_modules)
        ):
            raise ConfigError("lora_target_modules must be a non-empty list of module names or null")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown hyperparameters: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def is_resolved(self) -> bool:
        # pooling is settled from the base model's directory (modeling.resolve_pooling) before resolve(),
        # pos_weight from the encoded training split (TaskHead.fit_loss) after it,
        # label_thresholds after training (TaskHead.fit_thresholds)
        settled_elsewhere = ("pooling", "pos_weight", "label_thresholds")
        return all(getattr(self, f.name) != AUTO for f in fields(self) if f.name not in settled_elsewhere)

    @staticmethod
    def help() -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(TrainConfig)}


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _number(
    name: str,
    value: Any,
    *,
    low: float,
    high: float,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
    auto: bool = True,
) -> None:
    if auto and value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        suffix = ' or "auto"' if auto else ""
        raise ConfigError(f"{name} must be a number{suffix}; got {value!r}")
    if integer and not float(value).is_integer():
        raise ConfigError(f"{name} must be a whole number; got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite; got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ConfigError(f"{name} must be in {lo}{low}, {high}{hi}; got {value!r}")


def steps_per_epoch(n_train_rows: int, batch_size: int, gradient_accumulation_steps: int, world_size: int = 1) -> int:
    batches = math.ceil(n_train_rows / batch_size)
    per_rank = math.ceil(batches / world_size)
    return max(1, math.ceil(per_rank / gradient_accumulation_steps))


def resolve(
    config: TrainConfig,
    n_train_rows: int,
    model_params: int,
    *,
    model_max_length: int | None = None,
    causal_lm: bool = False,
    device_type: str = "cpu",
    bf16_supported: bool = False,
    bf16_native: bool = False,
    world_size: int = 1,
) -> TrainConfig:
    """A copy of ``config`` with every ``"auto"`` replaced by a concrete value.

    The rules are deliberately simple and recorded in ``training_config.json``: small data gets more
    epochs, big models get a smaller learning rate and batch, LoRA gets a larger learning rate.
    ``bf16_supported``: the device can train in bf16 at all; ``bf16_native``: a CPU with bf16
    arithmetic (AVX-512 BF16, AMX), where ``"auto"`` precision picks bf16 instead of fp32.
    """
    if n_train_rows < 1:
        raise ConfigError("no training rows")
    values = config.to_dict()
    lora = config.training_type == "lora"
    big = model_params > 1_000_000_000

    def pick(name: str, value: Any) -> None:
        if values[name] == AUTO:
            values[name] = value

    if n_train_rows <= 500:
        pick("n_epochs", 10)
    elif n_train_rows <= 3000:
        pick("n_epochs", 6)
    elif n_train_rows <= 20000:
        pick("n_epochs", 4)
    else:
        pick("n_epochs", 2)
    pick("batch_size", 8 if (big or causal_lm) else 32)
    pick("gradient_accumulation_steps", 1)
    if lora:
        pick("learning_rate", 2e-4 if big else 5e-4)
    elif model_params < 50_000_000:
        pick("learning_rate", 1e-4)
    elif model_params < 400_000_000:
        pick("learning_rate", 5e-5)
    else:
        pick("learning_rate", 2e-5)
    cap = 1024 if causal_lm else 512
    pick("max_length", min(model_max_length or cap, cap))
    pick("warmup_ratio", 0.06)
    pick("weight_decay", 0.01)
    pick("lora_r", 16)
    pick("lora_alpha", 2 * int(values["lora_r"]))
    pick("lora_dropout", 0.05)
    if values["precision"] == AUTO:
        if device_type == "cuda":
            values["precision"] = "bf16" if bf16_supported else "fp16"
        else:  # measured on AVX-512 BF16: 1.56x the samples/s at equal accuracy (bench/RESULTS.md)
            values["precision"] = "bf16" if bf16_native and bf16_supported else "fp32"
    if values["compile"] == AUTO:
        values["compile"] = device_type == "cuda"
    epoch_steps = steps_per_epoch(
        n_train_rows, int(values["batch_size"]), int(values["gradient_accumulation_steps"]), world_size
    )
    # auto: once per epoch, but at most MAX_AUTO_EVALUATIONS per run (each one writes a checkpoint)
    total_steps = math.ceil(float(values["n_epochs"]) * epoch_steps)
    if values["max_steps"] is not None:
        total_steps = min(total_steps, int(values["max_steps"]))
    pick("eval_every_steps", max(epoch_steps, math.ceil(total_steps / MAX_AUTO_EVALUATIONS)))
    pick("checkpoint_every_steps", values["eval_every_steps"])
    if values["precision"] == "fp16" and device_type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; this host trains in fp32 (or bf16 where supported)")
    if values["precision"] == "bf16" and not bf16_supported:
        raise ConfigError(f"precision bf16 is not supported on this {device_type} host; use fp32")
    return TrainConfig(**values)


@dataclass
class JobSpec:
    """What :func:`tunery_engine.train` needs for one job."""

    base_model: Path | str
    task: TaskDefinition
    train_file: Path | str
    output_dir: Path | str
    config: TrainConfig = field(default_factory=TrainConfig)
    validation_file: Path | str | None = None
    tenant_config: dict[str, Any] = field(default_factory=dict)
    vertical_id: str = ""
    vertical_version: str = ""
    #: a base-model directory or an earlier Tunery artifact directory with the same label set
    teacher_model: Path | str | None = None
    #: file column -> schema column
    column_mapping: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.base_model = Path(self.base_model)
        self.train_file = Path(self.train_file)
        self.output_dir = Path(self.output_dir)
        if self.validation_file is not None:
            self.validation_file = Path(self.validation_file)
        if self.teacher_model is not None:
            self.teacher_model = Path(self.teacher_model)
        if isinstance(self.config, dict):
            self.config = TrainConfig.from_dict(self.config)
