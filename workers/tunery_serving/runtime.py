"""The inference runtime a serving process holds: artifacts in, predictions and generations out.

    runtime = InferenceRuntime(max_bytes=2 * 1024**3)
    runtime.predict("ft:...", "/artifacts/ftjob-x/final", [PredictionInput("where is my parcel?")])

Encoder models (classification, tagging, pair scoring) go through a per-model MicroBatcher
(``batch_runners`` batches of a whole model run at once; a shared LoRA base runs one at a time);
causal LMs generate one request at a time per loaded base. Whole encoder models can be served
dynamically quantized to int8 on CPU (``precision``). Thread-safe."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunery_contract import Prediction, TaskKind
from tunery_engine.artifact import ArtifactInfo, read_artifact
from tunery_engine.errors import ArtifactError
from tunery_serving.batching import BatcherClosed, MicroBatcher
from tunery_serving.cache import ModelCache
from tunery_serving.models import (
    PRECISIONS,
    GenerationRequest,
    GenerationResult,
    LoadedModel,
    PredictionInput,
    SharedBase,
    base_key,
    load_model,
    served_precision,
)

log = logging.getLogger(__name__)

__all__ = ["GenerationRequest", "GenerationResult", "InferenceRuntime", "PredictionInput", "RuntimeObserver"]


@dataclass
class RuntimeObserver:
    """Hooks the host process uses for metrics; every field optional."""

    #: (task kind, batch size, forward seconds, seconds the first item waited)
    on_batch: Callable[[str, int, float, float], None] | None = None
    #: (model id) after a model left the cache
    on_evict: Callable[[str], None] | None = None
    #: (model id) after a model was loaded (its objects now live as long as it stays cached)
    on_load: Callable[[str], None] | None = None


@dataclass
class _Served:
    """A cache entry: the loaded model and its batcher."""

    model: LoadedModel
    path: str
    #: The model's own batcher (whole models); None for LoRA adapters and causal LMs.
    batcher: MicroBatcher[PredictionInput, Prediction] | None
    #: For LoRA adapters: their base's batcher, shared with the other tenants' adapters on it.
    shared_batcher: MicroBatcher[tuple[LoadedModel, PredictionInput], Prediction] | None = None

    def run(self, items: Sequence[PredictionInput], timeout: float) -> list[Prediction]:
        if self.shared_batcher is not None:
            return self.shared_batcher.run([(self.model, item) for item in items], timeout=timeout)
        if self.batcher is not None:
            return self.batcher.run(items, timeout=timeout)
        return self.model.predict_batch(list(items))

    @property
    def nbytes(self) -> int:
        return self.model.nbytes

    @property
    def base(self) -> SharedBase | None:
        return self.model.base

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.model.close()


class InferenceRuntime:
    def __init__(
        self,
        max_bytes: int = 2 * 1024**3,
        *,
        max_batch_size: int = 32,
        max_wait_seconds: float = 0.005,
        batch_runners: int | None = None,
        host_processes: int = 1,
        precision: str = "fp32",
        group_by_length: bool = True,
        device: str | None = None,
        share_lora_bases: bool = True,
        observer: RuntimeObserver | None = None,
        request_timeout: float = 60.0,
    ) -> None:
        """``batch_runners``: batches of one whole model run at once (None: ``default_batch_runners``,
        which shares the cores among ``host_processes`` serving processes on this host).
        ``precision``: how whole encoder models are served unless a call asks otherwise ("fp32",
        "int8": dynamic quantization at load, or "bf16": autocast on CPUs with bf16 units; whole
        encoders on CPU only, see ``served_precision``). ``group_by_length``: on CPU, run a batch
        in groups of similar length (``forward_by_length``) rather than padded to its longest text."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_runners = batch_runners or default_batch_runners(self.device, processes=host_processes)
        self.precision = precision
        self.group_by_length = group_by_length
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max_wait_seconds
        self.share_lora_bases = share_lora_bases
        self.request_timeout = request_timeout
        self.observer = observer or RuntimeObserver()
        self.cache = ModelCache(max_bytes, on_evict=self.observer.on_evict)
        self._bases: dict[tuple[str, str, int, str], SharedBase] = {}
        self._base_batchers: dict[int, MicroBatcher[tuple[LoadedModel, PredictionInput], Prediction]] = {}
        self._bases_lock = threading.Lock()

    # -- loading ------------------------------------------------------------------------------

    def load(self, model_id: str, artifact_path: str | Path, precision: str | None = None) -> LoadedModel:
        """Load (or touch) a model; raises ArtifactError when the artifact cannot be served.
        ``precision`` overrides the runtime's for this model (None: the runtime's)."""
        return self._served(model_id, artifact_path, precision).model

    def unload(self, model_id: str) -> bool:
        return self.cache.evict(model_id)

    def loaded(self) -> list[str]:
        return self.cache.model_ids()

    @property
    def shared_bases(self) -> int:
        with self._bases_lock:
            return len(self._bases)

    def queue_depth(self) -> int:
        with self._bases_lock:
            total = sum(b.queue_depth for b in self._base_batchers.values())
        for key in self.cache.model_ids():
            served = self.cache.peek(key)
            if isinstance(served, _Served) and served.batcher is not None:
                total += served.batcher.queue_depth
        return total

    def _served(self, model_id: str, artifact_path: str | Path, precision: str | None = None) -> _Served:
        path = str(artifact_path)
        precision = precision or self.precision
        if precision not in PRECISIONS:
            raise ArtifactError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        served = self.cache.peek(model_id)
        if isinstance(served, _Served):
            same = served.path == path and served.model.precision == self._effective(served.model.info, precision)
            if same:  # the hot path: no file is read
                entry = self.cache.get(model_id, lambda: served)
                assert isinstance(entry, _Served)
                return entry
            self.cache.evict(model_id)  # the model id now points elsewhere, or asks another precision
        info = read_artifact(path)
        entry = self.cache.get(
            model_id, lambda: self._load(model_id, path, info, precision), self._estimate(info, precision)
        )
        assert isinstance(entry, _Served)
        if self.observer.on_load is not None:
            self.observer.on_load(model_id)
        return entry

    def _effective(self, info: ArtifactInfo, precision: str) -> str:
        """The precision a model is served in when ``precision`` is asked (fp32 where it does not apply)."""
        return served_precision(info, self.device, precision)

    def _estimate(self, info: ArtifactInfo, precision: str) -> int:
        weights = info.adapter_dir if info.is_lora else info.path
        size = sum(f.stat().st_size for f in weights.glob("*.safetensors"))
        if self._effective(info, precision) == "int8":
            size //= 2  # int8 Linear weights; embeddings stay fp32 (measured: MiniLM 87 MB -> 47 MB)
        if info.is_lora and self._shared_base_if_loaded(info) is None and info.base_model:
            size += sum(f.stat().st_size for f in Path(info.base_model).glob("*.safetensors"))
        return size

    def _shared_base_if_loaded(self, info: ArtifactInfo) -> SharedBase | None:
        with self._bases_lock:
            return self._bases.get(base_key(info)) if self.share_lora_bases else None

    def _shared_base(self, info: ArtifactInfo) -> SharedBase:
        with self._bases_lock:
            key = base_key(info)
            base = self._bases.get(key) if self.share_lora_bases else None
            if base is None:
                base = SharedBase(info, self.device)
                if self.share_lora_bases:
                    self._bases[key] = base
                if not info.head.generates_text:
                    self._base_batchers[id(base)] = self._batcher(base.predict_mixed, info.kind, f"base:{key[0]}")
            return base

    def _batcher(self, run_batch: Any, kind: TaskKind, name: str, runners: int = 1) -> MicroBatcher[Any, Prediction]:
        on_batch = self.observer.on_batch
        return MicroBatcher(
            run_batch,
            max_batch_size=self.max_batch_size,
            max_wait_seconds=self.max_wait_seconds,
            runners=runners,
            name=name,
            observer=(lambda size, secs, waited: on_batch(kind.value, size, secs, waited)) if on_batch else None,
        )

    def _release_base(self, model: LoadedModel) -> None:
        with self._bases_lock:
            base = model.base
            if base is None or base.adapters:
                return
            if self._bases.get(base.key) is base:
                del self._bases[base.key]
            batcher = self._base_batchers.pop(id(base), None)
        if batcher is not None:
            batcher.close()

    def _load(self, model_id: str, path: str, info: ArtifactInfo, precision: str) -> _Served:
        log.info("loading model %s from %s (%s)", model_id, path, precision)
        model = load_model(model_id, info, self.device, shared_base=self._shared_base, precision=precision)
        model.on_close = self._release_base
        model.group_by_length = self.group_by_length
        if info.head.generates_text:
            return _Served(model, path, None)
        if model.base is not None:
            with self._bases_lock:
                shared = self._base_batchers.get(id(model.base))
            return _Served(model, path, None, shared_batcher=shared)
        batcher = self._batcher(model.predict_batch, info.kind, model_id, runners=self.batch_runners)
        return _Served(model, path, batcher)

    # -- serving ------------------------------------------------------------------------------

    def predict(
        self,
        model_id: str,
        artifact_path: str | Path,
        items: Sequence[PredictionInput],
        precision: str | None = None,
    ) -> list[Prediction]:
        """Decoded predictions, one per item, in order. Items join other requests' batches."""
        for attempt in (1, 2):
            served = self._served(model_id, artifact_path, precision)
            try:
                return served.run(items, timeout=self.request_timeout)
            except BatcherClosed:  # evicted while waiting: load again once
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def predict_unbatched(
        self,
        model_id: str,
        artifact_path: str | Path,
        items: Sequence[PredictionInput],
        precision: str | None = None,
    ) -> list[Prediction]:
        """One forward pass for exactly these items, bypassing the batcher (benchmarks, tests)."""
        return self._served(model_id, artifact_path, precision).model.predict_batch(list(items))

    def generate(self, model_id: str, artifact_path: str | Path, request: GenerationRequest) -> GenerationResult:
        return self._served(model_id, artifact_path).model.generate(request)

    def stream(
        self, model_id: str, artifact_path: str | Path, request: GenerationRequest, result: GenerationResult
    ) -> Iterator[str]:
        return self._served(model_id, artifact_path).model.stream(request, result)

    def stats(self) -> dict[str, Any]:
        return {
            "loaded_models": len(self.cache.model_ids()),
            "loaded_bytes": self.cache.total_bytes,
            "max_bytes": self.cache.max_bytes,
            "shared_bases": self.shared_bases,
            "batch_runners": self.batch_runners,
            "precision": self.precision,
            "queue_depth": self.queue_depth(),
        }

    def close(self) -> None:
        self.cache.clear()


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """Torch intra-op threads for a serving process: TUNERY_TORCH_THREADS, else 1. Serving runs
    several small batches at once (``default_batch_runners``) rather than one batch over all
    cores: measured on a 2-core AVX2 EPYC, a MiniLM forward of batch 1 takes 19 ms on one
    thread and 37 ms on two."""
    value = os.environ.get("TUNERY_TORCH_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def default_batch_runners(device: torch.device, torch_threads: int | None = None, processes: int = 1) -> int:
    """Batches of one model run at once: on CPU the usable cores over torch's intra-op threads
    (each runner keeps its cores busy), shared among ``processes`` serving processes on the host
    so that they do not oversubscribe it; on a GPU one (its kernels queue on one stream anyway)."""
    if device.type != "cpu":
        return 1
    threads = torch_threads or torch.get_num_threads()
    return max(1, usable_cpus() // (max(1, threads) * max(1, processes)))
