"""SFT end to end through the engine: a tiny Llama/Qwen2 learns a repetitive chat data set, and the
artifact it writes answers a new prompt."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunery_engine import DataError, JobSpec, TrainConfig, TrainingCallback, train
from tunery_engine.artifact import load_artifact
from tunery_engine.data import load_rows
from tunery_engine.heads import head_for
from tunery_engine.heads.causal_lm import CausalLMHead
from tunery_engine.tiny_models import CHAT_TASK, FILLER, make_tiny_llama, write_jsonl

#: The colour word in the question decides the answer's first word; the rest is fixed.
ANSWERS = {"red": "paris", "blue": "oslo", "green": "rome"}


def chat_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        colour = rng.choice(sorted(ANSWERS))
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randrange(len(words) + 1), colour)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": " ".join(words)},
                    {"role": "assistant", "content": f"{ANSWERS[colour]} new york"},
                ]
            }
        )
    return rows


class Losses(TrainingCallback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_progress(self, event):
        self.values.append(event.loss)


def eval_loss(model: torch.nn.Module, tokenizer, path: Path) -> float:
    """Token-weighted loss over the assistant tokens of a file, with the adapter's pieces."""
    adapter = head_for(CHAT_TASK)
    encoded = adapter.encode(load_rows(path, CHAT_TASK), tokenizer, (), 64, TrainConfig())
    batch = adapter.collate(encoded.features, tokenizer.pad_token_id)
    with torch.inference_mode():
        return float(adapter.loss(adapter.forward(model.eval(), batch), batch))


def generate(model: torch.nn.Module, tokenizer, question: str) -> str:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            ids,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :])


def run_job(tmp_path: Path, architecture: str, **config) -> tuple[Path, Path, list[float]]:
    base = make_tiny_llama(tmp_path / "base", architecture=architecture)
    train_file = write_jsonl(tmp_path / "train.jsonl", chat_rows(96, seed=0))
    validation_file = write_jsonl(tmp_path / "validation.jsonl", chat_rows(24, seed=1))
    losses = Losses()
    settings = dict(batch_size=8, max_length=64, early_stopping_patience=None, warmup_ratio=0.0, log_every_steps=4)
    result = train(
        JobSpec(
            base_model=base,
            task=CHAT_TASK,
            train_file=train_file,
            validation_file=validation_file,
            output_dir=tmp_path / "job",
            config=TrainConfig(**settings, **config),
        ),
        [losses],
    )
    assert result.metrics["eval_loss"] < losses.values[0]
    return base, result.artifact_dir, losses.values


def test_lora_sft_with_packing_learns_and_its_artifact_answers(tmp_path):
    torch.set_num_threads(1)
    base, artifact, losses = run_job(
        tmp_path, "llama", training_type="lora", n_epochs=10, learning_rate=1e-2, lora_r=8, packing=True
    )
    assert losses[-1] < losses[0] - 0.3
    model, tokenizer, info = load_artifact(artifact)
    assert info.training_type == "lora"
    assert isinstance(head_for(CHAT_TASK), CausalLMHead)
    base_model = AutoModelForCausalLM.from_pretrained(str(base))
    base_tokenizer = AutoTokenizer.from_pretrained(str(base))
    validation = tmp_path / "validation.jsonl"
    assert eval_loss(model, tokenizer, validation) < eval_loss(base_model, base_tokenizer, validation) - 0.3
    for row in chat_rows(6, seed=2):
        question, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        assert generate(model, tokenizer, question).startswith(answer + " </s>")


def test_full_sft_without_packing_lowers_the_loss(tmp_path):
    # Llama: its WordLevel tokenizer keeps whole words, which the answer checks below rely on.
    torch.set_num_threads(1)
    _, artifact, losses = run_job(tmp_path, "llama", training_type="full", n_epochs=6, learning_rate=1e-2)
    assert losses[-1] < losses[0] / 4
    model, tokenizer, info = load_artifact(artifact)
    assert info.training_type == "full"
    # The fixed part of every answer is learned whatever the colour.
    answer = generate(model, tokenizer, "w1 w2 blue w3")
    assert answer.split()[1:4] == ["new", "york", "</s>"]
    assert answer.split()[0] in ANSWERS.values()


def test_sft_job_whose_answers_fall_past_max_length_fails_clearly(tmp_path):
    base = make_tiny_llama(tmp_path / "base")
    train_file = write_jsonl(tmp_path / "train.jsonl", chat_rows(16, seed=0))
    spec = JobSpec(
        base_model=base,
        task=CHAT_TASK,
        train_file=train_file,
        output_dir=tmp_path / "job",
        config=TrainConfig(max_length=4, n_epochs=1, batch_size=4),
    )
    with pytest.raises(DataError, match="max_length"):
        train(spec)
    assert not (tmp_path / "job" / "final").exists()
