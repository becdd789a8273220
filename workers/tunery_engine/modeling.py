"""Loading base models safely (safetensors only, known architectures, no remote code) and LoRA wrapping."""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tunery_engine.auto import MEAN_POOLING_MODEL_TYPES, POOLINGS, declared_pooling
from tunery_engine.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from tunery_engine.config import TrainConfig

log = logging.getLogger(__name__)

#: LoRA target modules per architecture (config.model_type); anything else: "all-linear".
LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}
#: names of task heads that LoRA trains fully (peft modules_to_save)
HEAD_MODULES = ("classifier", "score", "pre_classifier")


def read_model_config(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"model path {path} has no config.json")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from exc


def check_model_dir(path: Path) -> dict[str, Any]:
    """Refuse anything we cannot load without executing code: weights must be safetensors."""
    config = read_model_config(path)
    if not (path / "model.safetensors").is_file() and not (path / "model.safetensors.index.json").is_file():
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = (
            f" (found {', '.join(pickled)}: pickle files are refused, convert them to safetensors)" if pickled else ""
        )
        raise ModelLoadError(f"model path {path} holds no safetensors weights{hint}")
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ModelLoadError(f"unknown model architecture {model_type!r} in {path / 'config.json'}")
    return config


_SEQUENCE_CLASSIFIER = "AutoModelForSequenceClassification"


def resolve_pooling(requested: str, path: Path, sequence_classification: bool) -> str:
    """The pooling a job trains with: "auto" keeps what an earlier fine-tune recorded
    (``tunery_pooling``) or takes what the base model declares, where the architecture has a
    mean-pooling head; tasks other than sequence classification use the model's own."""
    if not sequence_classification:
        return "model"
    config = read_model_config(path)
    model_type = config.get("model_type")
    if requested == "auto":
        if config.get("tunery_pooling") in POOLINGS:
            return str(config["tunery_pooling"])
        return "mean" if declared_pooling(path) == "mean" and model_type in MEAN_POOLING_MODEL_TYPES else "model"
    if requested == "mean" and model_type not in MEAN_POOLING_MODEL_TYPES:
        raise ConfigError(
            f"pooling 'mean' is available for {', '.join(MEAN_POOLING_MODEL_TYPES)} encoders, not {model_type!r}"
        )
    return requested


def load_pretrained(
    auto_class: str, path: Path, dtype: torch.dtype | None = None, pooling: str | None = None, **kwargs: Any
) -> PreTrainedModel:
    """``pooling`` (sequence classification only): None = what the directory's config records
    (``tunery_pooling``, absent = "model"); a base model's LoRA artifact passes its own."""
    import transformers

    config = check_model_dir(path)
    factory = getattr(transformers, auto_class)
    if auto_class == _SEQUENCE_CLASSIFIER:
        pooling = pooling or config.get("tunery_pooling") or "model"
        if pooling not in POOLINGS:
            raise ModelLoadError(f"unknown pooling {pooling!r} for {path} (known: {', '.join(POOLINGS)})")
        if pooling == "mean":
            if config.get("model_type") not in MEAN_POOLING_MODEL_TYPES:
                raise ModelLoadError(f"mean pooling is not available for {config.get('model_type')!r} in {path}")
            factory = mean_pooled_bert_class()
    try:
        return factory.from_pretrained(
            str(path), use_safetensors=True, trust_remote_code=False, dtype=dtype or torch.float32, **kwargs
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load {path} as {auto_class}: {exc}") from exc


@functools.cache
def mean_pooled_bert_class() -> Any:
    from transformers import BertForSequenceClassification, BertModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPooledBert(BertForSequenceClassification):
        """BERT whose classifier reads the attention-masked mean of the token states instead of the
        [CLS] pooler. Sentence-transformers encoders (the packaged all-MiniLM-L6-v2) were trained to
        be read this way; their [CLS] pooler was not trained at all. The loss stays the engine's."""

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.bert = BertModel(config, add_pooling_layer=False)
            config.tunery_pooling = "mean"  # saved with the weights, so a reload pools the same way
            self.post_init()

        def forward(  # type: ignore[override]
            self,
            input_ids: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None,
            token_type_ids: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None,
            inputs_embeds: torch.Tensor | None = None,
            labels: torch.Tensor | None = None,
            **kwargs: Any,
        ) -> SequenceClassifierOutput:
            if labels is not None:
                raise ValueError("the engine computes the loss; call without labels")
            outputs = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                **kwargs,
            )
            states = outputs[0]
            if attention_mask is None:
                pooled = states.mean(dim=1)
            else:
                weights = attention_mask.unsqueeze(-1).to(states.dtype)
                pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            logits = self.classifier(self.dropout(pooled))
            return SequenceClassifierOutput(
                logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
            )

    MeanPooledBert.__name__ = MeanPooledBert.__qualname__ = "MeanPooledBertForSequenceClassification"
    return MeanPooledBert


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {path}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        # decoder models often ship without a pad token; padding positions are masked anyway
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def cpu_has_bf16_units() -> bool:
    """AVX-512 BF16 or AMX: bf16 matrix arithmetic in hardware (elsewhere oneDNN emulates it, slower
    than fp32). torch.cpu's probes are private; their absence reads as no."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def lora_targets(model: torch.nn.Module, override: list[str] | None) -> list[str] | str:
    if override:
        return override
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return LORA_TARGETS.get(str(model_type), "all-linear")


def apply_lora(model: PreTrainedModel, config: TrainConfig, task_type: str) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, config.lora_target_modules)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if isinstance(targets, list) and not set(targets) & names:
        raise ConfigError(f"none of the LoRA target modules {targets} exists in this model")
    heads = [h for h in HEAD_MODULES if h in names] if task_type != "CAUSAL_LM" else []
    lora_config = LoraConfig(
        r=int(config.lora_r),
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft accepts floats
        lora_dropout=float(config.lora_dropout),
        target_modules=targets,
        modules_to_save=heads or None,
        task_type=task_type,
    )
    return get_peft_model(model, lora_config)


class CpuDropout(torch.nn.Dropout):
    """``nn.Dropout`` whose training mask comes from numpy's PCG64 in bulk instead of
    ``Tensor.bernoulli_``: torch uses MKL's vectorised Bernoulli only on Intel CPUs and elsewhere
    (AMD) draws element by element, about 18 ns each, 3-4x slower than this. The generator is seeded
    from torch's, so a checkpoint's RNG state still replays the same masks. Same ``p``, same
    expectation; eval mode, ``p == 0`` and non-CPU tensors take ``nn.Dropout``'s own path."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0 or self.p >= 1 or input.device.type != "cpu":
            return super().forward(input)
        keep = _keep_mask(input.shape, self.p).to(input.dtype).mul_(1.0 / (1.0 - self.p))
        return input.mul_(keep) if self.inplace else input * keep


def _keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    count = math.prod(shape)
    seed = int(torch.randint(0, 2**62, (1,)))
    raw = np.random.PCG64(seed).random_raw((count + 1) // 2)  # 64 random bits = two int32 draws
    bits = torch.from_numpy(raw.view(np.int32)[:count]).view(shape)
    return bits.ge(-(2**31) + round(p * 2**32))  # P(keep) = 1 - p to within 2**-32


def bernoulli_is_vectorised() -> bool:
    """torch draws Bernoulli masks with MKL only on Intel CPUs (a vendor check in ATen); decided by
    vendor, not by timing, so that a paused and resumed run takes the same path."""
    if not torch.backends.mkl.is_available():
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "GenuineIntel" in cpuinfo


def use_cpu_dropout(model: torch.nn.Module) -> int:
    """Switch the model's ``nn.Dropout`` modules to :class:`CpuDropout` (no weights change; the
    saved artifact is the same); returns how many were switched."""
    switched = 0
    for module in model.modules():
        if type(module) is torch.nn.Dropout and module.p > 0:
            module.__class__ = CpuDropout
            switched += 1
    return switched
