"""Loaded models: batched forward passes whose inputs and outputs the artifact's task head encodes
and decodes (``tunery_engine.heads``), text generation for causal LMs, serving precisions, and LoRA
adapters sharing one loaded base model."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from tunery_contract import Prediction, TaskKind
from tunery_engine import modeling
from tunery_engine.artifact import ArtifactInfo, load_base_model, load_full_model, load_tokenizer
from tunery_engine.errors import ArtifactError
from tunery_engine.heads import PredictionInput, TaskHead
from tunery_engine.heads.causal_lm import render_prompt
from tunery_serving.batching import BatcherClosed

#: Precisions a whole encoder model can be served in on CPU (``served_precision`` says where each
#: applies): ``int8`` dynamic quantization, ``bf16`` autocast on CPUs with bf16 units.
PRECISIONS = ("fp32", "int8", "bf16")
#: Seconds a streaming reader waits for the next token before giving up.
GENERATION_TOKEN_TIMEOUT = 120.0


@dataclass(frozen=True)
class GenerationRequest:
    """A causal-LM call: either chat ``messages`` (OpenAI format) or a raw ``prompt``."""

    messages: tuple[dict[str, str], ...] | None = None
    prompt: str | None = None
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class GenerationResult:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


def module_bytes(module: torch.nn.Module, only: Callable[[str], bool] | None = None) -> int:
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    size = sum(t.numel() * t.element_size() for name, t in tensors if only is None or only(name))
    for name, child in module.named_modules():  # int8 weights are packed, neither parameter nor buffer
        if isinstance(child, DynamicQuantizedLinear) and (only is None or only(name)):
            weight, bias = child._weight_bias()
            size += weight.numel() * weight.element_size() + (
                bias.numel() * bias.element_size() if bias is not None else 0
            )
    return size


def quantize_int8(module: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of the transformer body's Linear layers, in memory at load time
    (weights int8 per output channel, activations quantized per batch at run time; never written
    to disk). The task head stays fp32. CPU only (fbgemm / x86 kernels). Per-channel weights:
    measured on BANKING77 with MiniLM, same speed as per-tensor, 1.5x smaller probability errors."""
    body = getattr(module, "base_model", module)
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        # torch 2.13 announces the removal of quantized tensors (pytorch#184982) in a future
        # release; until then it is the fbgemm int8 path on CPU, and the serving tests pin it.
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        torch.ao.quantization.quantize_dynamic(body, {torch.nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
    return module


def served_precision(info: ArtifactInfo, device: torch.device, precision: str) -> str:
    """What a model asked to be served in ``precision`` runs in. int8 and bf16 apply to whole
    encoder models on CPU, bf16 only where the CPU has bf16 units (oneDNN's emulation is slower
    than fp32); LoRA adapters (peft wraps fp32 Linear layers), causal LMs and GPUs keep fp32."""
    if precision not in PRECISIONS:
        raise ArtifactError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type != "cpu" or info.is_lora or info.head.generates_text:
        return "fp32"
    if precision == "bf16" and not modeling.cpu_has_bf16_units():
        return "fp32"
    return precision


def load_served_model(info: ArtifactInfo, device: torch.device, precision: str = "fp32") -> torch.nn.Module:
    served = served_precision(info, device, precision)
    module = load_full_model(info).to(device).eval()
    if served == "int8":
        quantize_int8(module)
    return module


def _precision_context(precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 serving runs the fp32 weights under autocast: matmuls in bf16, norms and softmax in fp32."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def adapter_name_for(model_id: str) -> str:
    # peft adapter names become module attribute names: keep them to [a-z0-9_].
    return "a_" + hashlib.sha256(model_id.encode()).hexdigest()[:16]


def base_key(info: ArtifactInfo) -> tuple[str, str, int, str]:
    """Adapters can share a loaded base when its path, head kind, head width and pooling match."""
    width = info.head.head_width(info.label_names)
    return (str(Path(info.base_model or "").resolve()), info.kind.value, width, info.pooling)


def model_inputs(encoded: Any, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in encoded.items() if k != "offset_mapping"}


#: What one more forward pass costs, in padded tokens of work (small matrices run less efficiently):
#: measured on MiniLM, one CPU thread, batches of 32 short texts (about 9 tokens, at most 13):
#: two length groups were 12 % faster than one, four were slower.
FORWARD_OVERHEAD_TOKENS = 64


def length_groups(lengths: list[int], overhead_tokens: int = FORWARD_OVERHEAD_TOKENS) -> list[list[int]]:
    """Row indices split into groups of similar length, each padded only to its own longest row:
    the split minimising padded tokens plus ``overhead_tokens`` per group (exact, over rows sorted
    by length; a batch is at most a few dozen rows)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = [0] + [0] * len(order)  # best[j]: cost of the first j sorted rows
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        longest = lengths[order[j - 1]]
        best[j], cut[j] = min((best[i] + (j - i) * longest + overhead_tokens, i) for i in range(j))
    groups, j = [], len(order)
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def forward_by_length(
    module: Any, inputs: dict[str, torch.Tensor], per_row: dict[str, list[Any]] | None = None
) -> torch.Tensor:
    """Logits of a right-padded batch, computed in length groups (``length_groups``) so short
    rows are not padded to the longest one; rows come back in their order (token-level logits
    past a group's width, all padding, are zeros). The same logits as one pass, up to float
    rounding. ``per_row``: further keyword arguments with one entry per row (peft's
    ``adapter_names``), split along with the rows."""
    mask = inputs["attention_mask"]
    lengths = mask.sum(dim=1).tolist()
    groups = length_groups(lengths)
    per_row = per_row or {}
    if len(groups) == 1:
        return module(**inputs, **per_row).logits.float().cpu()
    logits: torch.Tensor | None = None
    for rows in groups:
        index = torch.tensor(rows, device=mask.device)
        width = max(lengths[r] for r in rows)
        sliced = {k: v[index, :width] for k, v in inputs.items()}
        extra = {k: [values[r] for r in rows] for k, values in per_row.items()}
        part = module(**sliced, **extra).logits.float().cpu()
        if logits is None:
            token_level = (mask.shape[0], mask.shape[1], part.shape[-1])
            logits = part.new_zeros(token_level if part.dim() == 3 else (mask.shape[0], part.shape[-1]))
        if part.dim() == 3:  # token-level logits: (rows, positions, labels)
            logits[index, :width] = part
        else:
            logits[index] = part
    assert logits is not None
    return logits


class SharedBase:
    """One loaded base model carrying any number of tenants' LoRA adapters.

    Switching adapters and running a forward pass happen under one lock, so each pass sees
    exactly one adapter; loading and deleting adapters take the same lock."""

    def __init__(self, info: ArtifactInfo, device: torch.device) -> None:
        self.key = base_key(info)
        self.device = device
        self.lock = threading.RLock()
        self._base: Any = load_base_model(info).to(device).eval()
        self.nbytes = module_bytes(self._base)
        self.peft_model: Any = None
        self.adapters: set[str] = set()

    def add_adapter(self, name: str, adapter_dir: Path) -> int:
        """Load an adapter; returns the bytes it added."""
        from peft import PeftModel

        with self.lock:
            if self.peft_model is None:
                self.peft_model = PeftModel.from_pretrained(self._base, str(adapter_dir), adapter_name=name)
            else:
                self.peft_model.load_adapter(str(adapter_dir), adapter_name=name)
            self.peft_model.to(self.device).eval()
            self.adapters.add(name)
            return module_bytes(self.peft_model, only=lambda param: f".{name}." in param or param.endswith(f".{name}"))

    def remove_adapter(self, name: str) -> None:
        with self.lock:
            if name not in self.adapters:
                return
            self.adapters.discard(name)
            if self.adapters:
                self.peft_model.delete_adapter(name)
            else:  # the last one: the whole base goes with it
                self.peft_model = None
                self._base = None

    def run(self, name: str, call: Callable[[Any], Any]) -> Any:
        with self.lock:
            if name not in self.adapters:
                raise ArtifactError("adapter was unloaded")
            self.peft_model.set_adapter(name)
            return call(self.peft_model)

    def predict_mixed(self, requests: list[tuple[LoadedModel, PredictionInput]]) -> list[Prediction | Exception]:
        """One forward pass for items of different adapters (tenants): peft routes each row
        through its own adapter and head. Items of an adapter unloaded meanwhile fail alone."""
        results: list[Prediction | Exception] = [BatcherClosed("the model was unloaded")] * len(requests)
        with self.lock:
            live = [i for i, (model, _) in enumerate(requests) if model.adapter_name in self.adapters]
            if not live:
                return results
            # Adapters over one base share its vocabulary: the first item's tokenizer encodes all.
            first = requests[live[0]][0]
            items = [requests[i][1] for i in live]
            encoded = first.encode(items)
            inputs = model_inputs(encoded, self.device)
            names = [requests[i][0].adapter_name for i in live]
            with torch.inference_mode():
                if first.group_by_length and self.device.type == "cpu" and first.tokenizer.padding_side == "right":
                    logits = forward_by_length(self.peft_model, inputs, per_row={"adapter_names": names})
                else:
                    logits = self.peft_model(**inputs, adapter_names=names).logits.float().cpu()
        for row, index in enumerate(live):
            model, item = requests[index]
            results[index] = model.decode(item, encoded, row, logits[row])
        return results


class _CountingStreamer(TextIteratorStreamer):
    def __init__(self, tokenizer: PreTrainedTokenizerBase, timeout: float) -> None:
        super().__init__(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
        self.generated_tokens = 0

    def put(self, value: torch.Tensor) -> None:
        if not (self.skip_prompt and self.next_tokens_are_prompt):
            self.generated_tokens += int(value.numel())
        super().put(value)


class _StopWhenSet(StoppingCriteria):
    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> bool:  # type: ignore[override]
        return self.flag.is_set()


@dataclass
class LoadedModel:
    """One servable fine-tuned model: a whole model of its own, or an adapter over a SharedBase."""

    model_id: str
    info: ArtifactInfo
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    nbytes: int
    module: torch.nn.Module | None = None
    base: SharedBase | None = None
    adapter_name: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    on_close: Callable[[LoadedModel], None] | None = None
    closed: bool = False
    #: What the model is served in: "fp32", "int8" (dynamically quantized at load) or "bf16" (autocast).
    precision: str = "fp32"
    #: On CPU, run batches in groups of similar length (forward_by_length).
    group_by_length: bool = True

    @property
    def kind(self) -> TaskKind:
        return self.info.kind

    @property
    def head(self) -> type[TaskHead]:
        return self.info.head

    def _call(self, call: Callable[[Any], Any]) -> Any:
        if self.base is not None:
            assert self.adapter_name is not None
            return self.base.run(self.adapter_name, call)
        with self.lock:
            return call(self.module)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.base is not None and self.adapter_name is not None:
            self.base.remove_adapter(self.adapter_name)
        self.module = None
        if self.on_close is not None:
            self.on_close(self)

    # -- encoders: classification, tagging, pair scoring ------------------------------------------

    def encode(self, items: list[PredictionInput]) -> Any:
        return self.head.encode_inputs(items, self.tokenizer, self.info.max_length)

    def decode(self, item: PredictionInput, encoded: Any, row: int, logits: torch.Tensor) -> Prediction:
        """One item's prediction from its row of a batch's logits."""
        return self.head.decode_prediction(self.info, item, encoded, row, logits)

    def predict_batch(self, items: list[PredictionInput]) -> list[Prediction]:
        encoded = self.encode(items)
        inputs = model_inputs(encoded, self.device)

        def forward(module: Any) -> torch.Tensor:
            with torch.inference_mode(), _precision_context(self.precision):
                if self.group_by_length and self.device.type == "cpu" and self.tokenizer.padding_side == "right":
                    return forward_by_length(module, inputs)
                return module(**inputs).logits.float().cpu()

        if self.base is not None:  # switching adapters changes the shared base: one pass at a time
            logits = self._call(forward)
        else:  # a whole model in eval mode is read-only: parallel batch runners share it
            module = self.module
            if module is None:
                raise BatcherClosed("the model was unloaded")
            logits = forward(module)
        return [self.decode(item, encoded, i, logits[i]) for i, item in enumerate(items)]

    # -- causal LMs ---------------------------------------------------------------------------

    def render_prompt(self, request: GenerationRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        return render_prompt(self.tokenizer, request.messages or ())

    def encode_prompt(self, request: GenerationRequest) -> torch.Tensor:
        """Prompt ids as the engine trained them (no added special tokens), cut from the left so
        the newest turns and room for the answer fit in ``max_length``."""
        ids = self.tokenizer(self.render_prompt(request), add_special_tokens=False)["input_ids"]
        room = max(self.info.max_length - request.max_new_tokens, 1)
        return torch.tensor([ids[-room:]], dtype=torch.long)

    def stream(self, request: GenerationRequest, result: GenerationResult) -> Iterator[str]:
        """Yield text pieces as they are generated; ``result`` is filled in as a side effect
        (token counts, finish reason). Closing the iterator early stops generation."""
        if not self.head.generates_text:
            raise ArtifactError(f"a {self.kind.value} model does not generate text")
        input_ids = self.encode_prompt(request)
        result.prompt_tokens = int(input_ids.shape[1])
        streamer = _CountingStreamer(self.tokenizer, timeout=GENERATION_TOKEN_TIMEOUT)
        stop_flag = threading.Event()
        sampling = request.temperature > 0
        kwargs: dict[str, Any] = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": torch.ones_like(input_ids).to(self.device),
            "max_new_tokens": request.max_new_tokens,
            "do_sample": sampling,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_StopWhenSet(stop_flag)]),
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sampling:
            kwargs.update(temperature=request.temperature, top_p=request.top_p)
        failure: list[BaseException] = []

        def generate(module: Any) -> None:
            if request.seed is not None:
                torch.manual_seed(request.seed)
            with torch.inference_mode():
                module.generate(**kwargs)

        def run() -> None:
            try:
                self._call(generate)
            except BaseException as exc:
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, name=f"generate:{self.model_id}", daemon=True)
        worker.start()
        text, sent, stopped = "", 0, False
        hold = max((len(s) for s in request.stop), default=1) - 1
        try:
            for piece in streamer:
                text += piece
                cut = min((i for i in (text.find(s) for s in request.stop) if i >= 0), default=-1)
                if cut >= 0:
                    stopped = True
                    if cut > sent:
                        yield text[sent:cut]
                    sent = cut
                    break
                safe = len(text) - hold
                if safe > sent:
                    yield text[sent:safe]
                    sent = safe
            if not stopped and len(text) > sent:
                yield text[sent:]
                sent = len(text)
        finally:
            stop_flag.set()
            worker.join()
        if failure:
            raise failure[0]
        result.text = text[:sent]
        result.completion_tokens = streamer.generated_tokens
        hit_length = not stopped and streamer.generated_tokens >= request.max_new_tokens
        result.finish_reason = "length" if hit_length else "stop"

    def generate(self, request: GenerationRequest) -> GenerationResult:
        result = GenerationResult()
        for _ in self.stream(request, result):
            pass
        return result


def load_model(
    model_id: str,
    info: ArtifactInfo,
    device: torch.device,
    shared_base: Callable[[ArtifactInfo], SharedBase] | None = None,
    precision: str = "fp32",
) -> LoadedModel:
    """Load an artifact. LoRA artifacts go onto the base ``shared_base`` hands out (a new one
    per call when None); full models load on their own, in ``served_precision``."""
    tokenizer = load_tokenizer(info)
    if not info.is_lora:
        module = load_served_model(info, device, precision)
        served = served_precision(info, device, precision)
        return LoadedModel(
            model_id, info, tokenizer, device, nbytes=module_bytes(module), module=module, precision=served
        )
    base = shared_base(info) if shared_base is not None else SharedBase(info, device)
    name = adapter_name_for(model_id)
    added = base.add_adapter(name, info.adapter_dir)
    return LoadedModel(model_id, info, tokenizer, device, nbytes=added, base=base, adapter_name=name)
