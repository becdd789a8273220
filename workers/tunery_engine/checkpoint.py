"""Checkpoints that hold everything a resume needs, written atomically.

Layout: ``checkpoints/step-NNNNNNNN/`` with ``weights.safetensors`` (trainable parameters: all of them
for full fine-tuning, the adapter and head for LoRA), ``optimizer.pt``, ``scheduler.pt``, ``rng.pt``
(tensors and plain types only; loaded with ``weights_only=True``), ``state.json`` (the
:class:`RunState` whole: step, data position, best evaluation, early-stopping counter, ...) and
``manifest.json`` (sha256 of every file), written last. A checkpoint is built in a temporary
folder and renamed into place, so a crash never leaves one that resume would pick; a checksum
mismatch makes resume fall back to the previous one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunery_engine.errors import CheckpointError

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step-(\d{8,})$")
MANIFEST = "manifest.json"
#: version of ``state.json``; 1 is the layout before :class:`RunState` (still read)
STATE_FORMAT = 2


@dataclass
class RunState:
    """Where a run stands besides its tensors and RNG states: saved whole in a checkpoint's
    ``state.json`` and restored whole on resume."""

    label_names: list[str]
    #: the data, validation split, settings, labels and world size the run started with; resume
    #: refuses a checkpoint whose fingerprint differs
    fingerprint: dict[str, Any]
    step: int = 0
    #: epochs completed, and batches of the current epoch already trained
    epoch: int = 0
    batch_position: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    #: folder name of the best evaluation's checkpoint (None when it was never written to disk)
    best_checkpoint: str | None = None
    evaluations_without_improvement: int = 0
    #: optimizer steps skipped for a non-finite loss or gradient
    non_finite: int = 0
    trained_tokens: int = 0
    #: progress and evaluation events (protocol JSON) since the checkpoint before this one: a worker
    #: killed before its runner read them gets them again on resume (the runner drops duplicates)
    recent_events: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunState:
        fields = dict(data)
        version = fields.pop("format", 1)
        if version == 1:  # the same fields, with the best checkpoint's name as "best_path"
            fields["best_checkpoint"] = fields.pop("best_path", None)
        elif version != STATE_FORMAT:
            raise CheckpointError(
                f"checkpoint state format {version} is newer than this engine reads (1 and {STATE_FORMAT})",
                permanent=True,
            )
        try:
            return cls(**fields)
        except TypeError as exc:
            raise CheckpointError(f"checkpoint state does not fit this engine: {exc}") from exc


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


@dataclass
class LoadedCheckpoint:
    path: Path
    state: RunState
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    rng: dict[str, Any]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # named_parameters() drops tied duplicates, so safetensors never sees shared storage
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})", permanent=True
        )
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != weights[name].shape:
                raise CheckpointError(
                    f"checkpoint tensor {name} has shape {tuple(weights[name].shape)}, model {tuple(p.shape)}"
                )
            p.copy_(weights[name].to(p.device, p.dtype))


def rng_state() -> dict[str, Any]:
    algorithm, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [algorithm, torch.from_numpy(np.asarray(keys, dtype=np.int64)), position, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    algorithm, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((algorithm, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    root: Path,
    state: RunState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any | None,
) -> Path:
    """Write the checkpoint of ``state.step`` (replacing one of the same step) and return its folder."""
    step = state.step
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in trainable_state(model).items()}, str(tmp / "weights.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state.to_json(), indent=1, sort_keys=True), encoding="utf-8")
    files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
    with (tmp / MANIFEST).open("w", encoding="utf-8") as f:
        json.dump({"step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # a re-run reached the same step: the new one replaces it
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (with a manifest), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / MANIFEST).is_file()]
    return [p for _, p in sorted(found)]


def _load_tensors(checkpoint: Path, name: str) -> Any:
    """A ``torch.save`` file of the checkpoint, loaded safely (tensors and plain values only). A file
    that fails that (truncated, or holding other objects) makes the checkpoint corrupt: for good."""
    try:
        return torch.load(checkpoint / name, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        log.warning("checkpoint %s: %s does not load safely: %s", checkpoint, name, exc)
        raise CheckpointError(
            f"checkpoint {checkpoint.name} is corrupt: {name} is truncated or holds more than tensors and plain values",
            permanent=True,
        ) from exc


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Load and verify one checkpoint; CheckpointError (permanent) when it is corrupt."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        for name, digest in manifest["files"].items():
            if _sha256(path / name) != digest:
                raise CheckpointError(f"checkpoint {path.name}: {name} does not match its checksum")
        state = RunState.from_json(json.loads((path / "state.json").read_text(encoding="utf-8")))
        weights = load_file(str(path / "weights.safetensors"))
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"checkpoint {path.name} is unreadable: {exc}") from exc
    optimizer = _load_tensors(path, "optimizer.pt")
    scheduler = _load_tensors(path, "scheduler.pt")
    scaler = _load_tensors(path, "scaler.pt") if (path / "scaler.pt").is_file() else None
    rng = _load_tensors(path, "rng.pt")
    return LoadedCheckpoint(path, state, weights, optimizer, scheduler, scaler, rng)


def latest_valid_checkpoint(root: Path) -> LoadedCheckpoint | None:
    """The newest checkpoint that loads and verifies; corrupt ones are skipped (and reported).

    Raises CheckpointError (permanent: a retry would meet the same files) when checkpoints exist
    but none of them is usable.
    """
    candidates = list_checkpoints(root)
    problems = []
    for path in reversed(candidates):
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping corrupt checkpoint: %s", exc)
            problems.append(exc.message)
    if problems:
        raise CheckpointError("no usable checkpoint: " + "; ".join(problems), permanent=True)
    return None


def prune_checkpoints(root: Path, keep: int, best: Path | None) -> None:
    """Keep the ``keep`` newest complete checkpoints and the best one; drop stale temp folders."""
    for stale in root.glob(".tmp-step-*"):
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
    complete = list_checkpoints(root)
    for path in complete[: max(0, len(complete) - keep)]:
        if best is None or path.resolve() != best.resolve():
            shutil.rmtree(path, ignore_errors=True)
