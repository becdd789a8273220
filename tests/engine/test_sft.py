"""SFT data side: chat rendering, assistant-only labels, truncation, packing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from tunery_contract import TaskKind
from tunery_engine.config import TrainConfig
from tunery_engine.errors import DataError
from tunery_engine.heads import head_for
from tunery_engine.heads.causal_lm import (
    BUILTIN_CHAT_TEMPLATE,
    IGNORE_INDEX,
    CausalLMHead,
    ChatTemplateError,
    EncodedChat,
    causal_lm_loss,
    collate_packed,
    collate_padded,
    encode_chat,
    ensure_chat_template,
    pack_rows,
)
from tunery_engine.tiny_models import CHAT_TASK

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, since 1871."},
]


def make_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (Llama/Qwen style) trained in-process on a few sentences."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    corpus = [m["content"] for m in CONVERSATION] * 5 + ["<|user|>\n<|assistant|>\n<|system|>\n"] * 5
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<eos>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>")
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_decoder(vocab_size: int, architecture: str = "llama", attn: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    shape = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        use_cache=False,
    )
    if architecture == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape, attn_implementation=attn))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape, attn_implementation=attn))
    return model.eval()


def supervised_spans(tokenizer: PreTrainedTokenizerFast, encoded: EncodedChat) -> list[str]:
    """Decode each maximal run of supervised tokens."""
    spans: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(token)
        previous = label
    return [tokenizer.decode(span) for span in spans]


def test_builtin_template_supervises_only_assistant_turns():
    tokenizer = make_tokenizer()
    assert ensure_chat_template(tokenizer) is True
    assert tokenizer.chat_template == BUILTIN_CHAT_TEMPLATE
    encoded = encode_chat(CONVERSATION, tokenizer, max_length=512)
    assert encoded is not None
    assert supervised_spans(tokenizer, encoded) == ["Paris.<eos>", "Rome, since 1871.<eos>"]
    # The unsupervised rest is the prompt text: system and user turns and assistant headers.
    prompt = tokenizer.decode([t for t, lab in zip(encoded.input_ids, encoded.labels) if lab == IGNORE_INDEX])
    assert "What is the capital of France?" in prompt
    assert "Paris" not in prompt
    assert prompt.count("<|assistant|>") == 2
    # Tokens are those of the whole rendering, so inference prompts match training.
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(encoded.input_ids) == rendered


def test_model_template_is_kept_and_masks_assistant_turns():
    tokenizer = make_tokenizer(CHATML)
    assert ensure_chat_template(tokenizer) is False
    encoded = encode_chat(CONVERSATION, tokenizer, max_length=512)
    assert encoded is not None
    assert supervised_spans(tokenizer, encoded) == ["Paris.<|im_end|>\n", "Rome, since 1871.<|im_end|>\n"]
    generation_prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(generation_prompt, add_special_tokens=False)["input_ids"]
    assert encoded.input_ids[: len(prompt_ids)] == prompt_ids


def test_truncation_cuts_the_end_and_drops_rows_with_nothing_to_learn():
    tokenizer = make_tokenizer(CHATML)
    full = encode_chat(CONVERSATION, tokenizer, max_length=512)
    assert full is not None
    first_answer_end = full.labels.index(
        IGNORE_INDEX, full.labels.index(next(label for label in full.labels if label >= 0))
    )
    cut = encode_chat(CONVERSATION, tokenizer, max_length=first_answer_end + 2)
    assert cut is not None
    assert len(cut) == first_answer_end + 2
    assert cut.input_ids == full.input_ids[: len(cut)]
    assert supervised_spans(tokenizer, cut) == ["Paris.<|im_end|>\n"]
    # The first answer starts after the long prompt: a short limit leaves nothing supervised.
    assert encode_chat(CONVERSATION, tokenizer, max_length=8) is None
    with pytest.raises(ValueError, match="max_length"):
        encode_chat(CONVERSATION, tokenizer, max_length=1)


def test_template_that_rewrites_earlier_turns_is_refused():
    # Renders earlier assistant turns differently once a later turn exists (like templates that
    # strip reasoning from history): the assistant span cannot be located safely.
    rewriting = (
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' and not loop.last %}{{ '[old]' }}"
        "{% else %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    tokenizer = make_tokenizer(rewriting)
    with pytest.raises(ChatTemplateError, match="differently"):
        encode_chat(CONVERSATION, tokenizer, max_length=512)


def test_tokenizer_without_template_or_eos_is_refused():
    tokenizer = make_tokenizer()
    tokenizer.eos_token = None
    with pytest.raises(ChatTemplateError, match="EOS"):
        ensure_chat_template(tokenizer)


def test_pack_rows_places_every_example_once_within_the_block():
    lengths = [7, 3, 9, 1, 4, 6, 2, 8]
    rows = pack_rows(lengths, block_size=10)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == -(-sum(lengths) // 10)  # this set packs perfectly: 40 tokens in 4 rows
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([11], block_size=10)


def _examples(tokenizer: PreTrainedTokenizerFast) -> list[dict[str, np.ndarray]]:
    conversations = [
        CONVERSATION,
        CONVERSATION[1:3],
        [{"role": "user", "content": "Capital of Italy?"}, {"role": "assistant", "content": "Rome."}],
        [*CONVERSATION[:3], {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "Welcome."}],
    ]
    encoded = [encode_chat(c, tokenizer, max_length=128) for c in conversations]
    assert all(e is not None for e in encoded)
    return [e.as_feature() for e in encoded if e is not None]


@pytest.mark.parametrize(("architecture", "attn"), [("llama", "sdpa"), ("qwen2", "eager")])
def test_packed_rows_give_each_example_its_own_logits(architecture, attn):
    tokenizer = make_tokenizer()
    ensure_chat_template(tokenizer)
    examples = _examples(tokenizer)
    model = tiny_decoder(len(tokenizer), architecture, attn)
    block = max(len(e["input_ids"]) for e in examples) + 20
    batch = collate_packed(examples, block_size=block, pad_token_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] < len(examples)  # some rows hold several examples
    with torch.no_grad():
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        for example in examples:
            ids, labels, n = example["input_ids"].tolist(), example["labels"].tolist(), len(example["input_ids"])
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            # Find the example in the packed rows by its labels and ids.
            found = False
            for row in range(batch["input_ids"].shape[0]):
                starts = (batch["position_ids"][row] == 0).nonzero().flatten().tolist()
                for start in starts:
                    span = batch["input_ids"][row, start : start + n].tolist()
                    if span == ids and batch["labels"][row, start : start + n].tolist() == labels:
                        torch.testing.assert_close(packed_logits[row, start : start + n], alone)
                        found = True
            assert found


def test_packed_and_padded_batches_give_the_same_loss():
    tokenizer = make_tokenizer(CHATML)
    examples = _examples(tokenizer)
    model = tiny_decoder(len(tokenizer))
    packed = collate_packed(examples, block_size=256, pad_token_id=tokenizer.pad_token_id, pad_to_block=True)
    assert packed["input_ids"].shape == (1, 256)
    padded = collate_padded(examples, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        packed_loss, packed_count = causal_lm_loss(
            model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits, packed["labels"]
        )
        padded_loss, padded_count = causal_lm_loss(
            model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits, padded["labels"]
        )
    assert packed_count == padded_count == sum(int((e["labels"] != IGNORE_INDEX).sum()) for e in examples)
    torch.testing.assert_close(packed_loss, padded_loss)


@pytest.mark.parametrize("packing", [False, True])
def test_adapter_encodes_collates_and_scores_chat_rows(packing):
    tokenizer = make_tokenizer()
    adapter = head_for(CHAT_TASK)
    assert isinstance(adapter, CausalLMHead)
    long_prompt = [{"role": "user", "content": "What is the capital of France? " * 20}, CONVERSATION[2]]
    rows = [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}, {"messages": long_prompt}]
    encoded = adapter.encode(rows, tokenizer, (), 64, TrainConfig(packing=packing))
    assert tokenizer.chat_template == BUILTIN_CHAT_TEMPLATE  # saved with the artifact
    assert len(encoded.features) == 2  # the long prompt leaves no answer within 64 tokens
    assert encoded.truncated == 1
    batch = adapter.collate(encoded.features, tokenizer.pad_token_id)
    assert ("position_ids" in batch) is packing
    assert ("attention_mask" in batch) is not packing
    model = tiny_decoder(len(tokenizer))
    logits = adapter.forward(model, batch)
    loss = adapter.loss(logits, batch)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(math.log(len(tokenizer)), rel=0.2)  # untrained: near uniform
    out = adapter.eval_output(adapter.decode(logits, batch, ()), (), loss.item(), rows)
    assert out.kind is TaskKind.CAUSAL_LM
    assert out.eval_loss == loss.item()


def test_adapter_refuses_data_with_nothing_to_learn_within_max_length():
    tokenizer = make_tokenizer()
    adapter = head_for(CHAT_TASK)
    with pytest.raises(DataError, match="max_length"):
        adapter.encode([{"messages": CONVERSATION}], tokenizer, (), 8, TrainConfig())


def test_conversation_the_template_rejects_is_a_data_error_naming_the_row():
    strict = (
        "{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
        "{% endif %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    tokenizer = make_tokenizer(strict)
    adapter = head_for(CHAT_TASK)
    rows = [{"messages": CONVERSATION[1:3]}, {"messages": CONVERSATION}]  # the second starts with "system"
    with pytest.raises(DataError, match=r"conversation 2: .*must alternate"):
        adapter.encode(rows, tokenizer, (), 128, TrainConfig())
    assert len(adapter.encode(rows[:1], tokenizer, (), 128, TrainConfig()).features) == 1
