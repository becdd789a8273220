"""Causal-LM supervised fine-tuning on chat-format data (OpenAI ``messages`` rows).

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: Label of tokens that carry no loss (torch's cross-entropy default ``ignore_index``).
IGNORE_INDEX = -100

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

#: LoRA targets for decoder architectures whose attention and MLP projections follow
#: Llama's names (Llama, Qwen2, Mistral, Qwen3).
DECODER_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    model_type: ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for model_type in ("llama", "qwen2", "qwen3", "mistral")
}


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


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give ``tokenizer`` the built-in template if it has none; True when it did so."""
    if getattr(tokenizer, "chat_template", None):
        return False
    if not tokenizer.eos_token:
        raise ChatTemplateError("the tokenizer has neither a chat template nor an EOS token to end assistant turns")
    tokenizer.chat_template = BUILTIN_CHAT_TEMPLATE
    return True


def _render(tokenizer: Any, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
    )
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


def encode_chat(messages: Sequence[Mapping[str, str]], tokenizer: Any, max_length: int) -> EncodedChat | None:
    """Tokenize one conversation, truncated to ``max_length`` tokens (the end is cut).

    Returns None when no supervised token is left after truncation: such a row would teach
    nothing. The caller counts and reports dropped rows."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    input_ids: list[int] = []
    labels: list[int] = []
    for text, supervised in chat_segments(messages, tokenizer):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if supervised else [IGNORE_INDEX] * len(ids)
        if len(input_ids) >= max_length:
            break
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    if labels:
        labels[0] = IGNORE_INDEX  # nothing precedes it; also keeps packed examples apart
    encoded = EncodedChat(input_ids, labels)
    return encoded if encoded.supervised_tokens else None


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
    examples: Sequence[EncodedChat], block_size: int, pad_token_id: int, pad_to_block: bool = False
) -> dict[str, torch.Tensor]:
    """Pack a batch into rows (see the module docstring). Padding at a row's end gets its own
    position ids from 0 and ``IGNORE_INDEX`` labels, so it forms a separate, unsupervised
    sequence. ``pad_to_block`` pads every row to ``block_size`` (static shapes for compiled
    models); otherwise rows are padded to the longest row."""
    groups = pack_rows([len(e) for e in examples], block_size)
    width = block_size if pad_to_block else max(sum(len(examples[i]) for i in group) for group in groups)
    input_ids, labels, positions = [], [], []
    for group in groups:
        row_ids: list[int] = []
        row_labels: list[int] = []
        row_positions: list[int] = []
        for i in group:
            row_ids += examples[i].input_ids
            row_labels += examples[i].labels
            row_positions += range(len(examples[i]))
        pad = width - len(row_ids)
        input_ids.append(row_ids + [pad_token_id] * pad)
        labels.append(row_labels + [IGNORE_INDEX] * pad)
        positions.append(row_positions + list(range(pad)))
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
    }


def collate_padded(examples: Sequence[EncodedChat], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One example per row, right-padded to the longest, with an attention mask."""
    width = max(len(e) for e in examples)
    input_ids = [e.input_ids + [pad_token_id] * (width - len(e)) for e in examples]
    labels = [e.labels + [IGNORE_INDEX] * (width - len(e)) for e in examples]
    mask = [[1] * len(e) + [0] * (width - len(e)) for e in examples]
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
    }


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
