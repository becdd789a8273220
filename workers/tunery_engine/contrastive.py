"""The few-shot stage for sentence encoders: supervised contrastive tuning of the embeddings the
head reads, before the head is fitted (in the spirit of SetFit).

With a handful of examples per class, training the encoder through a classification head mostly
moves the head; pulling each class's embeddings together and pushing other classes' apart uses
every pair of a batch at the cost of one forward pass (SupCon, Khosla et al. 2020), and a logistic
regression on the tuned embeddings (``probe.fit_logistic_regression``) then becomes the head.

Batches are class-balanced: a few examples of each of several classes, so that every row has
positives in its batch.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from tunery_engine.heads import Batch, Encoded

#: the stage's settings (measured on BANKING77 and HWU64 at 10 examples per intent, bench/RESULTS.md)
LEARNING_RATE = 1e-4
TEMPERATURE = 0.05
BATCH_SIZE = 64
#: rows of one class in a batch (each row then has at least one positive)
EXAMPLES_PER_CLASS_IN_BATCH = 4
#: rows per forward pass inside a batch: the batch is cut into length-sorted chunks, each padded to
#: its own longest row (class-balanced batches mix lengths; padding them whole costs about 3x)
FORWARD_CHUNK = 16


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon: for each row with a same-label row in the batch, the mean negative log-probability of
    its positives among all other rows, by cosine similarity / temperature. Rows without a positive
    do not count; a batch without any positive pair gives 0 (with a gradient path)."""
    z = F.normalize(embeddings.float(), dim=-1)
    n = len(z)
    similarity = (z @ z.T) / temperature
    self_pairs = torch.eye(n, dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_pairs, float("-inf"))
    log_probability = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_pairs
    counts = positives.sum(dim=1)
    anchors = counts > 0
    if not bool(anchors.any()):
        return z.sum() * 0.0
    summed = log_probability.masked_fill(~positives, 0.0).sum(dim=1)
    return -(summed[anchors] / counts[anchors]).mean()


def class_balanced_batches(
    labels: Sequence[int], batch_size: int, rng: np.random.Generator, per_class: int = EXAMPLES_PER_CLASS_IN_BATCH
) -> list[list[int]]:
    """One epoch of row indices: each class's rows shuffled and cut into groups of ``per_class``
    (a single leftover row joins its class's previous group), groups shuffled and packed into
    batches of about ``batch_size`` rows. Every row appears once."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[int(label)].append(index)
    groups: list[list[int]] = []
    for label in sorted(by_class):
        members = [int(i) for i in rng.permutation(by_class[label])]
        own = [members[i : i + per_class] for i in range(0, len(members), per_class)]
        if len(own) > 1 and len(own[-1]) == 1:
            own[-2].extend(own.pop())
        groups.extend(own)
    groups_per_batch = max(1, batch_size // per_class)
    order = rng.permutation(len(groups))
    return [
        [i for g in order[start : start + groups_per_batch] for i in groups[int(g)]]
        for start in range(0, len(order), groups_per_batch)
    ]


@dataclass
class ContrastiveResult:
    """What the stage did, for the job's events and the artifact's manifest."""

    epochs: int
    steps: int
    seconds: float
    #: mean loss of each epoch
    epoch_losses: list[float] = field(default_factory=list)

    def manifest(self) -> dict[str, object]:
        return {
            "epochs": self.epochs,
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "epoch_losses": [round(x, 4) for x in self.epoch_losses],
        }


def tune_embeddings(
    model: torch.nn.Module,
    head_layer: torch.nn.Linear,
    data: Encoded,
    collate: Callable[[Sequence[dict[str, np.ndarray]], int], Batch],
    forward: Callable[[torch.nn.Module, Batch], torch.Tensor],
    *,
    device: torch.device,
    pad_id: int,
    epochs: int,
    learning_rate: float,
    temperature: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    on_step: Callable[[int, int, float], None] | None = None,
) -> ContrastiveResult:
    """Train every parameter below ``head_layer`` with :func:`supervised_contrastive_loss` on the
    features ``head_layer`` reads (AdamW, linear warm-up then decay, gradients clipped at 1). The
    head itself is left as it is; fit it on the tuned features afterwards. ``on_step(step, total,
    loss)`` is called after each optimizer step (progress, heartbeats)."""
    started = time.monotonic()
    labels = [int(f["labels"]) for f in data.features]
    head_params = {id(p) for p in head_layer.parameters()}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_params]
    rng = np.random.default_rng(seed)
    steps_per_epoch = len(class_balanced_batches(labels, batch_size, np.random.default_rng(seed)))
    total = max(1, steps_per_epoch * epochs)
    warmup = max(1, math.ceil(warmup_ratio * total))
    # fused, as the recipe's optimizer: several times faster than foreach on CPU
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup)))
    )
    captured: list[torch.Tensor] = []
    hook = head_layer.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    result = ContrastiveResult(epochs=epochs, steps=0, seconds=0.0)
    was_training = model.training
    model.train()
    try:
        for _ in range(epochs):
            losses = []
            for indices in class_balanced_batches(labels, batch_size, rng):
                indices = sorted(indices, key=lambda i: len(data.features[i]["input_ids"]))
                captured.clear()
                for start in range(0, len(indices), FORWARD_CHUNK):
                    chunk = [data.features[i] for i in indices[start : start + FORWARD_CHUNK]]
                    forward(model, {k: v.to(device) for k, v in collate(chunk, pad_id).items()})
                batch_labels = torch.as_tensor([labels[i] for i in indices], device=device)
                loss = supervised_contrastive_loss(torch.cat(captured), batch_labels, temperature)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                result.steps += 1
                losses.append(float(loss.detach()))
                if on_step is not None:
                    on_step(result.steps, total, losses[-1])
            result.epoch_losses.append(float(np.mean(losses)) if losses else 0.0)
    finally:
        hook.remove()
        captured.clear()
        model.train(was_training)
    result.seconds = time.monotonic() - started
    return result
