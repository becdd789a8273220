"""DPO (direct preference optimization, Rafailov et al. 2023) for causal-LM tasks, as a head the
recipe trains with its own loop, precision, accumulation and checkpoints.

A training row is a validated preference pair (``tunery_contract.preferences``): the prompt's
messages and a chosen and a rejected answer. Each answer is encoded as the whole conversation with
only the final answer's tokens supervised; a feature holds both (chosen then rejected, ``split``
tokens apart). A batch of B pairs is 2B padded rows: chosen first, rejected after.

The model is the LoRA-wrapped base. The policy's log-probability of an answer is the sum over its
tokens; the reference's is the same forward with the adapter disabled (peft's
``disable_adapter()``) under no_grad, so the reference costs no second copy of the weights and a
resumed run (same base, adapter restored) sees the same reference. With implicit rewards
``r = beta * (log pi(y|x) - log ref(y|x))`` the loss is ``-log sigmoid(r_chosen - r_rejected)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from tunery_contract import EvalOutput
from tunery_contract.preferences import CHOSEN, PROMPT, REJECTED
from tunery_engine.errors import ConfigError, DataError
from tunery_engine.heads.base import IGNORE_INDEX, Batch, DecodedBatch, Encoded, Feature
from tunery_engine.heads.causal_lm import (
    CausalLMHead,
    ChatTemplateError,
    EncodedChat,
    chat_segments,
    collate_padded,
    fit_chat,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tunery_contract import TaskDefinition
    from tunery_engine.config import TrainConfig

#: Step metrics the head reports (training, as ``train_<name>``) and evaluates (validation).
REWARD_ACCURACY, REWARD_MARGIN = "reward_accuracy", "reward_margin"


def encode_answer(
    prompt: Sequence[Mapping[str, str]], answer: str, tokenizer: Any, max_length: int
) -> tuple[EncodedChat | None, bool]:
    """The conversation ``prompt`` + ``answer`` with only the answer's tokens supervised (earlier
    assistant turns are context), cut to ``max_length``; (None when no answer token is left,
    whether it was cut)."""
    segments = chat_segments([*prompt, {"role": "assistant", "content": answer}], tokenizer)
    last = max(i for i, (_, supervised) in enumerate(segments) if supervised)
    input_ids: list[int] = []
    labels: list[int] = []
    for i, (text, _) in enumerate(segments):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if i == last else [IGNORE_INDEX] * len(ids)
    return fit_chat(EncodedChat(input_ids, labels), max_length), len(input_ids) > max_length


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of the supervised tokens (labels != IGNORE_INDEX)."""
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = torch.gather(logits, 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    return (token_logps * mask).sum(-1)


def _peft_model(model: torch.nn.Module) -> Any:
    """The peft model inside DDP and torch.compile wrappers."""
    inner: Any = model
    for attribute in ("module", "_orig_mod"):
        inner = getattr(inner, attribute, inner)
    if not hasattr(inner, "disable_adapter"):
        raise ConfigError("dpo needs a LoRA adapter: its reference model is the base with the adapter disabled")
    return inner


@contextlib.contextmanager
def reference_model(model: torch.nn.Module) -> Iterator[Any]:
    """The base model without the adapter (the DPO reference), for forwards under no_grad."""
    peft_model = _peft_model(model)
    with torch.no_grad(), peft_model.disable_adapter():
        yield peft_model


class PreferenceHead(CausalLMHead):
    """DPO on preference pairs; ``forward`` returns, per row of the batch (chosen rows, then
    rejected rows), the policy's and the reference's sequence log-probabilities."""

    def __init__(self, task: TaskDefinition, beta: float) -> None:
        super().__init__(task)
        self.beta = beta

    def encode(
        self,
        rows: Sequence[Mapping[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        label_names: tuple[str, ...],
        max_length: int,
        config: TrainConfig,
    ) -> Encoded:
        """Pairs where either answer has no token left within ``max_length`` are dropped."""
        self.prepare_tokenizer(tokenizer)
        features: list[Feature] = []
        truncated = 0
        for number, row in enumerate(rows, start=1):
            try:
                chosen, cut_chosen = encode_answer(row[PROMPT], row[CHOSEN], tokenizer, max_length)
                rejected, cut_rejected = encode_answer(row[PROMPT], row[REJECTED], tokenizer, max_length)
            except ChatTemplateError as exc:
                raise DataError(f"preference pair {number}: {exc}") from exc
            truncated += cut_chosen or cut_rejected
            if chosen is None or rejected is None:
                continue
            features.append(
                {
                    "input_ids": np.asarray(chosen.input_ids + rejected.input_ids, dtype=np.int64),
                    "labels": np.asarray(chosen.labels + rejected.labels, dtype=np.int64),
                    "split": np.asarray(len(chosen), dtype=np.int64),
                }
            )
        if rows and not features:
            raise DataError(f"no preference pair keeps an answer token within max_length={max_length}; raise it")
        return Encoded(features, truncated)

    def collate(self, features: Sequence[Feature], pad_token_id: int) -> Batch:
        halves: list[list[Feature]] = [[], []]
        for feature in features:
            split = int(feature["split"])
            halves[0].append({"input_ids": feature["input_ids"][:split], "labels": feature["labels"][:split]})
            halves[1].append({"input_ids": feature["input_ids"][split:], "labels": feature["labels"][split:]})
        return collate_padded(halves[0] + halves[1], pad_token_id)

    def forward(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        policy = sequence_logps(super().forward(model, batch), batch["labels"])
        with reference_model(model) as reference:
            ref = sequence_logps(super().forward(reference, batch), batch["labels"])
        return torch.stack([policy, ref.to(policy.dtype)], dim=-1)

    def rewards(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Implicit rewards of the chosen and the rejected answers."""
        rewards = self.beta * (output[:, 0] - output[:, 1])
        pairs = rewards.shape[0] // 2
        return rewards[:pairs], rewards[pairs:]

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        chosen, rejected = self.rewards(logits)
        return -F.logsigmoid(chosen - rejected).mean()

    def step_metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        chosen, rejected = self.rewards(logits.detach())
        return {REWARD_ACCURACY: (chosen > rejected).float().mean(), REWARD_MARGIN: (chosen - rejected).mean()}

    def decode(self, logits: torch.Tensor, batch: Batch, label_names: tuple[str, ...]) -> DecodedBatch:
        """y_true / y_pred: the chosen / rejected rewards; scores: the policy's log-probability
        margin of chosen over rejected, per pair."""
        chosen, rejected = self.rewards(logits)
        pairs = chosen.shape[0]
        policy = logits[:, 0]
        margin = policy[:pairs] - policy[pairs:]
        return DecodedBatch(chosen.float().tolist(), rejected.float().tolist(), margin.float().tolist())

    def metrics(self, output: EvalOutput) -> dict[str, float]:
        chosen, rejected = output.y_true, output.y_pred
        n = max(1, len(chosen))
        return {
            "eval_loss": float(output.eval_loss or 0.0),
            REWARD_ACCURACY: sum(c > r for c, r in zip(chosen, rejected, strict=True)) / n,
            REWARD_MARGIN: sum(c - r for c, r in zip(chosen, rejected, strict=True)) / n,
            "chosen_reward": sum(chosen) / n,
            "rejected_reward": sum(rejected) / n,
            "logp_margin": sum(output.scores or ()) / n,
        }
