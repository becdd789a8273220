"""The adapter's tokenizer hook runs before the token cache, and the tiny test models reload as saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tunery_engine import JobSpec, Paused, TrainConfig, TrainingCallback, train
from tunery_engine.data import _tokenizer_fingerprint
from tunery_engine.heads.causal_lm import BUILTIN_CHAT_TEMPLATE
from tunery_engine.modeling import load_tokenizer
from tunery_engine.tiny_models import CHAT_TASK, make_tiny_llama, write_jsonl


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_tiny_decoder_tokenizers_reload_as_the_word_level_tokenizer_they_saved(tmp_path, architecture):
    path = make_tiny_llama(tmp_path / architecture, architecture=architecture)
    reloaded = AutoTokenizer.from_pretrained(str(path))
    ids = reloaded("red w1 blue grey").input_ids
    tokens = reloaded.convert_ids_to_tokens(ids)
    for word in ("red", "blue", "grey"):  # whole words survive the reload as single tokens
        assert word in tokens or f"Ġ{word}" in tokens, tokens
    assert reloaded.unk_token_id not in ids
    assert reloaded.decode(ids, skip_special_tokens=True).strip() == "red w1 blue grey"


def without_chat_template(path: Path) -> Path:
    for name in ("chat_template.jinja", "chat_template.json"):
        (path / name).unlink(missing_ok=True)
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config))
    assert not load_tokenizer(path).chat_template
    return path


class PauseAt(TrainingCallback):
    def __init__(self, step: int) -> None:
        self.step, self.state = step, None

    def on_train_begin(self, state):
        self.state = state

    def control(self):
        return "pause" if self.state is not None and self.state.step >= self.step else None


def test_a_run_resumed_from_the_token_cache_still_saves_the_builtin_chat_template(tmp_path):
    base = without_chat_template(make_tiny_llama(tmp_path / "llama"))
    rows = [
        {"messages": [{"role": "user", "content": f"w{i % 9} red"}, {"role": "assistant", "content": "paris"}]}
        for i in range(40)
    ]
    spec = JobSpec(
        base_model=base,
        task=CHAT_TASK,
        train_file=write_jsonl(tmp_path / "chat.jsonl", rows),
        output_dir=tmp_path / "out",
        config=TrainConfig(n_epochs=2, batch_size=8, max_length=32, early_stopping_patience=None, validation_split=0.0),
    )
    with pytest.raises(Paused):
        train(spec, [PauseAt(2)])
    assert list((tmp_path / "out" / "cache").glob("tokens-*.npz"))
    result = train(spec)  # features come from the cache: nothing is encoded again
    assert load_tokenizer(result.artifact_dir).chat_template == BUILTIN_CHAT_TEMPLATE


def test_the_tokenizer_fingerprint_includes_the_chat_template(tmp_path):
    tokenizer = load_tokenizer(without_chat_template(make_tiny_llama(tmp_path / "llama")))
    before = _tokenizer_fingerprint(tokenizer)
    tokenizer.chat_template = BUILTIN_CHAT_TEMPLATE
    assert _tokenizer_fingerprint(tokenizer) != before
