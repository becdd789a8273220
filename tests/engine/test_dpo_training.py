"""DPO through the engine's loop: a tiny random Llama with LoRA learns to prefer the right city for
a colour word over a wrong one; the reference is the base with the adapter disabled."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunery_contract import TaskKind
from tunery_contract.preferences import validate_preferences
from tunery_engine import ConfigError, DataError, JobSpec, TrainConfig, TrainingCallback, train
from tunery_engine.artifact import load_artifact, read_artifact
from tunery_engine.heads.preference import PreferenceHead, encode_answer, sequence_logps
from tunery_engine.tiny_models import CHAT_TASK, FILLER, make_tiny_llama, tiny_task, write_jsonl

ANSWERS = {"red": "paris", "blue": "oslo", "green": "rome"}


def preference_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        colour = rng.choice(sorted(ANSWERS))
        wrong = rng.choice([city for c, city in ANSWERS.items() if c != colour])
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 5))]
        words.insert(rng.randrange(len(words) + 1), colour)
        rows.append(
            {
                "input": {"messages": [{"role": "user", "content": " ".join(words)}], "tools": []},
                "preferred_output": [{"role": "assistant", "content": f"{ANSWERS[colour]} new york"}],
                "non_preferred_output": [{"role": "assistant", "content": f"{wrong} new york"}],
            }
        )
    return rows


class Progress(TrainingCallback):
    def __init__(self) -> None:
        self.events: list = []
        self.evaluations: list[dict[str, float]] = []

    def on_progress(self, event):
        self.events.append(event)

    def on_evaluate(self, step, metrics):
        self.evaluations.append(dict(metrics))


def logp_margin(model: torch.nn.Module, tokenizer, rows: list[dict]) -> float:
    """Mean over pairs of log p(chosen) - log p(rejected) under ``model`` (no adapter tricks)."""
    head = PreferenceHead(CHAT_TASK, beta=0.1)
    pairs = validate_preferences(CHAT_TASK, enumerate(rows, start=1)).rows
    encoded = head.encode(pairs, tokenizer, (), 64, TrainConfig())
    batch = head.collate(encoded.features, tokenizer.pad_token_id)
    with torch.inference_mode():
        logits = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps = sequence_logps(logits, batch["labels"])
    n = len(pairs)
    return float((logps[:n] - logps[n:]).mean())


def test_dpo_with_lora_raises_the_preferred_answers_margin(tmp_path):
    torch.set_num_threads(1)
    base = make_tiny_llama(tmp_path / "base")
    train_file = write_jsonl(tmp_path / "train.jsonl", preference_rows(48, seed=0))
    held_out = preference_rows(24, seed=1)
    validation_file = write_jsonl(tmp_path / "validation.jsonl", held_out)
    progress = Progress()
    config = TrainConfig(
        training_method="dpo",
        dpo_beta=1.0,
        training_type="lora",
        lora_r=8,
        n_epochs=10,
        batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        max_length=64,
        warmup_ratio=0.0,
        log_every_steps=1,
        early_stopping_patience=None,
    )
    result = train(
        JobSpec(base, CHAT_TASK, train_file, tmp_path / "job", config, validation_file=validation_file), [progress]
    )

    # per-step training metrics reach the callbacks: the loss falls, the reward accuracy rises
    first, last = progress.events[0], progress.events[-1]
    assert set(first.metrics) == {"reward_accuracy", "reward_margin"}
    assert last.loss < first.loss - 0.3
    assert last.metrics["reward_accuracy"] > first.metrics["reward_accuracy"]
    assert last.metrics["reward_margin"] > first.metrics["reward_margin"]
    # validation on the held-out pairs reports the same, plus the policy's log-prob margin
    assert progress.evaluations[-1]["reward_accuracy"] >= 0.9
    assert result.metrics["eval_loss"] < 0.69  # log 2: the loss of a policy equal to the reference
    assert result.metrics["logp_margin"] > 0

    # the artifact (base + adapter) prefers the chosen answers on held-out pairs, the base does not
    model, tokenizer, _ = load_artifact(result.artifact_dir)
    base_model = AutoModelForCausalLM.from_pretrained(str(base))
    tuned, before = logp_margin(model, tokenizer, held_out), logp_margin(base_model, tokenizer, held_out)
    assert tuned > before + 1.0
    assert read_artifact(result.artifact_dir).training_type == "lora"


def test_only_the_final_answer_is_supervised(tmp_path):
    base = make_tiny_llama(tmp_path / "base")
    from tunery_engine.modeling import load_tokenizer

    tokenizer = load_tokenizer(base)
    prompt = [
        {"role": "user", "content": "w1 red"},
        {"role": "assistant", "content": "rome new york"},
        {"role": "user", "content": "w2 blue"},
    ]
    encoded, cut = encode_answer(prompt, "oslo new york", tokenizer, 64)
    assert encoded is not None
    assert not cut
    supervised = [
        tokenizer.convert_ids_to_tokens(i) for i, label in zip(encoded.input_ids, encoded.labels) if label != -100
    ]
    assert supervised[:3] == ["oslo", "new", "york"]
    assert "rome" not in supervised


def test_dpo_refuses_full_training_and_other_task_kinds(tmp_path):
    base = make_tiny_llama(tmp_path / "base")
    train_file = write_jsonl(tmp_path / "train.jsonl", preference_rows(8, seed=0))
    full = TrainConfig(training_method="dpo", training_type="full", n_epochs=1, batch_size=4, max_length=64)
    with pytest.raises(ConfigError, match="LoRA"):
        train(JobSpec(base, CHAT_TASK, train_file, tmp_path / "full", full))
    classifier = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION)
    with pytest.raises(ConfigError, match="causal-LM"):
        train(JobSpec(base, classifier, train_file, tmp_path / "cls", TrainConfig(training_method="dpo")))


def test_malformed_preference_lines_fail_naming_line_and_field(tmp_path):
    base = make_tiny_llama(tmp_path / "base")
    rows = preference_rows(4, seed=0)
    rows[2]["non_preferred_output"] = [{"role": "user", "content": "x"}]
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    config = TrainConfig(training_method="dpo", training_type="lora", n_epochs=1, batch_size=2, max_length=64)
    with pytest.raises(DataError, match=r"line 3, column 'non_preferred_output'.*assistant"):
        train(JobSpec(base, CHAT_TASK, train_file, tmp_path / "job", config))


def test_preference_validation_messages():
    good = preference_rows(1, seed=0)[0]
    cases = [
        ({k: v for k, v in good.items() if k != "input"}, "input", "missing input"),
        ({**good, "preferred_output": "paris"}, "preferred_output", "exactly one assistant message"),
        ({**good, "non_preferred_output": good["preferred_output"]}, "non_preferred_output", "same answer"),
        (
            {**good, "input": {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}},
            "input",
            "tools",
        ),
        ({**good, "input": {"messages": [{"role": "robot", "content": "hi"}]}}, "input", "role 'robot'"),
    ]
    for record, column, message in cases:
        report = validate_preferences(CHAT_TASK, [(7, record)])
        first = report.errors[0]
        assert (first.row, first.column) == (7, column), record
        assert message in first.message, report.errors
