"""Causal LM: supervised fine-tuning on chat-format data (OpenAI ``messages`` rows), and the prompt
rendering serving generates from.

Rendering: the tokenizer's own chat template when it has one, else ``BUILTIN_CHAT_TEMPLATE``
(which is then stored on the tokenizer, so the saved artifact renders prompts the same way).
Each conversation is cut into text segments by rendering growing prefixes of it: the part a
template adds for an assistant turn (content and end-of-turn marker) is supervised, everything
else (system, user, the assistant header) gets label ``IGNORE_INDEX``. Segments are tokenized on
their own, which is also how a prompt is tokenized at inference before the model continues it.

Packing: ``collate_packed`` lays the examples of a batch side by side in rows of at most
``block_size`` tokens with ``position_ids`` restarting at 0 for each example and no attention
mask. transformers then builds a block-diagonal causal mask from the position-id resets (sdpa
and eager through ``masking_utils.find_packed_sequence_indices``; flash-attention through its
varlen path), so no example attends to another; ``tests/engine/test_sft.py`` checks that packed
logits equal per-example logits. The first label of every example is ignored, so the token
that ends one example is never trained to predict the start of the next.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tunery_contract import TaskKind
from tunery_engine.errors import ArtifactError, DataError
from tunery_engine.heads.base import (
    IGNORE_INDEX,
    Batch,
    DecodedBatch,
    Encoded,
    Feature,
    PredictionInput,
    TaskHead,
    register_head,
)

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

    from tunery_engine.config import TrainConfig

log = logging.getLogger(__name__)

#: Used when the tokenizer has no chat template. One turn per message:
#: ``<|role|>\n{content}\n``, except that an assistant turn ends with the tokenizer's EOS token
#: instead of the newline, so the model learns to stop; a generation prompt is ``<|assistant|>\n``.
#: The markers are plain text (not added to the vocabulary: the embedding matrix keeps its size).
BUILTIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """The chat template cannot be split into prompt and assistant parts, or a conversation
    cannot be rendered with it."""


@dataclass(frozen=True)
class EncodedChat:
    """One conversation as token ids, with ``labels`` equal to the id on supervised
    (assistant) tokens and ``IGNORE_INDEX`` elsewhere."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def supervised_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    def as_feature(self) -> Feature:
        return {
            "input_ids": np.asarray(self.input_ids, dtype=np.int64),
            "labels": np.asarray(self.labels, dtype=np.int64),
        }


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give ``tokenizer`` the built-in template if it has none; True when it did so."""
    if getattr(tokenizer, "chat_template", None):
        return False
    if not tokenizer.eos_token:
        raise ChatTemplateError("the tokenizer has neither a chat template nor an EOS token to end assistant turns")
    tokenizer.chat_template = BUILTIN_CHAT_TEMPLATE
    return True


def _render(tokenizer: Any, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
    try:
        text = tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # jinja2 errors, including the template's own raise_exception()
        raise ChatTemplateError(f"the chat template cannot render this conversation: {exc}") from exc
    if not isinstance(text, str):
        raise ChatTemplateError("the chat template did not render to text")
    return text


def chat_segments(messages: Sequence[Mapping[str, str]], tokenizer: Any) -> list[tuple[str, bool]]:
    """Split the rendered conversation into ``(text, supervised)`` segments in order.

    The supervised part of assistant turn ``i`` is what rendering ``messages[: i + 1]`` adds to
    rendering ``messages[:i]`` with a generation prompt. Templates that rewrite earlier turns
    (so a shorter conversation is not a prefix of a longer one) are refused, not guessed at."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    segments: list[tuple[str, bool]] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:index], add_generation_prompt=True) if index else ""
        answered = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not (full.startswith(answered) and answered.startswith(prompt) and len(prompt) >= cursor):
            raise ChatTemplateError(
                f"the chat template renders message {index} differently depending on what follows it; "
                "cannot tell the assistant's tokens apart"
            )
        if index == 0:
            # No generation prompt exists before the first message: find the content instead.
            start = answered.find(message["content"])
            prompt = answered[: max(start, 0)]
        segments.append((full[cursor : len(prompt)], False))
        segments.append((full[len(prompt) : len(answered)], True))
        cursor = len(answered)
    segments.append((full[cursor:], False))
    return [(text, supervised) for text, supervised in segments if text]


def tokenize_chat(messages: Sequence[Mapping[str, str]], tokenizer: Any) -> EncodedChat:
    """The whole conversation, untruncated."""
    input_ids: list[int] = []
    labels: list[int] = []
    for text, supervised in chat_segments(messages, tokenizer):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if supervised else [IGNORE_INDEX] * len(ids)
    return EncodedChat(input_ids, labels)


def encode_chat(messages: Sequence[Mapping[str, str]], tokenizer: Any, max_length: int) -> EncodedChat | None:
    """Tokenize one conversation, truncated to ``max_length`` tokens (the end is cut).

    Returns None when no supervised token is left after truncation: such a row would teach
    nothing. The caller counts and reports dropped rows."""
    return fit_chat(tokenize_chat(messages, tokenizer), max_length)


def fit_chat(encoded: EncodedChat, max_length: int) -> EncodedChat | None:
    """Cut to ``max_length`` tokens; None when no supervised token is left."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    labels = encoded.labels[:max_length]
    if labels:
        labels[0] = IGNORE_INDEX  # nothing precedes it; also keeps packed examples apart
    fitted = EncodedChat(encoded.input_ids[:max_length], labels)
    return fitted if fitted.supervised_tokens else None


def pack_rows(lengths: Sequence[int], block_size: int) -> list[list[int]]:
    """Group example indices into rows of at most ``block_size`` tokens, first-fit on
    decreasing length (few rows, little padding). Every example fits: encode_chat truncates to
    ``max_length`` and the caller keeps ``block_size >= max_length``."""
    too_long = [n for n in lengths if n > block_size]
    if too_long:
        raise ValueError(f"an example of {max(too_long)} tokens does not fit a block of {block_size}")
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for row, space in enumerate(free):
            if lengths[index] <= space:
                rows[row].append(index)
                free[row] -= lengths[index]
                break
        else:
            rows.append([index])
            free.append(block_size - lengths[index])
    return [sorted(row) for row in rows]


def collate_packed(
    features: Sequence[Feature], block_size: int, pad_token_id: int, pad_to_block: bool = False
) -> dict[str, torch.Tensor]:
    """Pack a batch into rows (see the module docstring). Padding at a row's end gets its own
    position ids from 0 and ``IGNORE_INDEX`` labels, so it forms a separate, unsupervised
    sequence. ``pad_to_block`` pads every row to ``block_size`` (static shapes for compiled
    models); otherwise rows are padded to the longest row."""
    lengths = [len(f["input_ids"]) for f in features]
    groups = pack_rows(lengths, block_size)
    width = block_size if pad_to_block else max(sum(lengths[i] for i in group) for group in groups)
    input_ids = torch.full((len(groups), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(groups), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.empty((len(groups), width), dtype=torch.long)
    for row, group in enumerate(groups):
        cursor = 0
        for i in group:
            end = cursor + lengths[i]
            input_ids[row, cursor:end] = torch.as_tensor(features[i]["input_ids"])
            labels[row, cursor:end] = torch.as_tensor(features[i]["labels"])
            positions[row, cursor:end] = torch.arange(lengths[i])
            cursor = end
        positions[row, cursor:] = torch.arange(width - cursor)
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions}


def collate_padded(features: Sequence[Feature], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One example per row, right-padded to the longest, with an attention mask."""
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, feature in enumerate(features):
        length = len(feature["input_ids"])
        input_ids[row, :length] = torch.as_tensor(feature["input_ids"])
        labels[row, :length] = torch.as_tensor(feature["labels"])
        mask[row, :length] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over supervised tokens, and how many there were (callers
    weight means across batches by it)."""
    shifted_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1]).float()
    shifted_labels = labels[:, 1:].reshape(-1)
    count = int((shifted_labels != IGNORE_INDEX).sum())
    if count == 0:
        return logits.sum() * 0.0, 0
    loss = torch.nn.functional.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / count, count


def conversation_losses(
    model: torch.nn.Module,
    tokenizer: Any,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    max_length: int,
    batch_size: int = 8,
) -> list[tuple[float, int] | None]:
    """Teacher forcing, as training's evaluation scores a conversation: per conversation, the summed
    next-token cross-entropy of its assistant tokens within ``max_length`` and how many there were
    (None when none fits). One forward pass per batch, no generation; the mean token loss over
    rows is ``sum(losses) / sum(counts)``."""
    ensure_chat_template(tokenizer)
    fitted = [fit_chat(tokenize_chat(messages, tokenizer), max_length) for messages in conversations]
    results: list[tuple[float, int] | None] = [None] * len(fitted)
    present = [i for i, encoded in enumerate(fitted) if encoded is not None]
    present.sort(key=lambda i: len(fitted[i]))  # type: ignore[arg-type]  # similar lengths pad little
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(present), batch_size):
            chunk = present[start : start + batch_size]
            batch = collate_padded([fitted[i].as_feature() for i in chunk], pad)  # type: ignore[union-attr]
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                use_cache=False,
            ).logits.float()
            labels = batch["labels"].to(device)[:, 1:]
            token_losses = torch.nn.functional.cross_entropy(
                logits[:, :-1, :].transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
            )
            supervised = labels != IGNORE_INDEX
            for row, i in enumerate(chunk):
                results[i] = (float(token_losses[row][supervised[row]].sum()), int(supervised[row].sum()))
    return results


def render_prompt(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """A chat prompt ending with the assistant's generation header, rendered as in training: with the
    template the engine saved on the tokenizer, or the built-in one."""
    template = getattr(tokenizer, "chat_template", None) or BUILTIN_CHAT_TEMPLATE
    return str(
        tokenizer.apply_chat_template(
            [dict(m) for m in messages], chat_template=template, add_generation_prompt=True, tokenize=False
        )
    )


class CausalLMHead(TaskHead):
    """Chat SFT for decoder models: loss on assistant tokens only; ``config.packing`` packs a
    batch's conversations into rows of ``max_length`` tokens (see the module docstring)."""

    kind = TaskKind.CAUSAL_LM
    lora_task_type = "CAUSAL_LM"
    auto_class = "AutoModelForCausalLM"
    has_label_names = False
    generates_text = True

    def label_names(self, rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
        return ()

    def build_model(
        self,
        base_model: Path,
        label_names: tuple[str, ...],
        dtype: torch.dtype | None = None,
        pooling: str | None = None,
    ) -> PreTrainedModel:
        from tunery_engine.modeling import load_pretrained

        model = load_pretrained(self.auto_class, base_model, dtype=dtype)
        model.config.use_cache = False  # training: a KV cache would also disable packed masks
        return model

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        # here, not only in encode(): a run that reads its features from the cache never encodes
        if ensure_chat_template(tokenizer):
            log.info("the tokenizer has no chat template; using the built-in one (saved with the artifact)")

    def encode(
        self,
        rows: Sequence[Mapping[str, Any]],
        tokenizer: PreTrainedTokenizerBase,
        label_names: tuple[str, ...],
        max_length: int,
        config: TrainConfig,
    ) -> Encoded:
        """Rows whose assistant tokens all fall past ``max_length`` are dropped (they teach
        nothing) and counted in ``truncated`` with the rows that were cut."""
        self.prepare_tokenizer(tokenizer)  # for direct callers; a no-op once train() has prepared it
        # Kept in each feature (not on the head) so features read back from the tokenization
        # cache still say how to collate them. 0 = no packing.
        block_size = np.asarray(max_length if config.packing else 0, dtype=np.int64)
        column = self.task.role_column("messages")
        features: list[Feature] = []
        truncated = dropped = 0
        for number, row in enumerate(rows, start=1):
            try:
                full = tokenize_chat(row[column], tokenizer)
            except ChatTemplateError as exc:
                raise DataError(f"conversation {number}: {exc}") from exc
            truncated += len(full) > max_length
            fitted = fit_chat(full, max_length)
            if fitted is None:
                dropped += 1
            else:
                features.append({**fitted.as_feature(), "block_size": block_size})
        if not features:
            raise DataError(
                f"no conversation keeps an assistant token within max_length={max_length}; raise max_length"
            )
        if dropped:
            log.warning(
                "%d of %d conversations dropped: no assistant token within %d tokens", dropped, len(rows), max_length
            )
        return Encoded(features, truncated)

    def collate(self, features: Sequence[Feature], pad_token_id: int) -> Batch:
        block_size = int(features[0].get("block_size", 0))
        if block_size:
            return collate_packed(features, block_size, pad_token_id)
        return collate_padded(features, pad_token_id)

    def forward(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        mask_or_positions = "position_ids" if "position_ids" in batch else "attention_mask"
        return model(
            input_ids=batch["input_ids"], **{mask_or_positions: batch[mask_or_positions]}, use_cache=False
        ).logits

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return causal_lm_loss(logits, batch["labels"])[0]

    def decode(self, logits: torch.Tensor, batch: Batch, label_names: tuple[str, ...]) -> DecodedBatch:
        return DecodedBatch(y_true=[], y_pred=[])

    @classmethod
    def encode_inputs(
        cls, items: Sequence[PredictionInput], tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> BatchEncoding:
        raise ArtifactError("a causal LM answers chat/completions, not predictions")


register_head(CausalLMHead.kind, CausalLMHead)
