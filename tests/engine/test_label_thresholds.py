"""Multi-label decision thresholds: fitted per label on validation with the selected weights,
recorded in the resolved config and the artifact, used by the engine's metrics and by serving."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tunery_contract import TaskKind
from tunery_contract.metrics import multilabel_prf
from tunery_engine import ConfigError, JobSpec, TrainConfig, train
from tunery_engine.heads import LabelThresholds, fit_label_thresholds
from tunery_engine.heads.multi_label import decision_logits, served_probabilities
from tunery_engine.tiny_models import FILLER, tiny_task, write_jsonl
from tunery_serving import ArtifactError, PredictionInput, read_artifact
from tunery_serving.models import load_model

LABELS = ("cold", "warm", "neutral", "absent")


def test_each_label_gets_the_threshold_with_its_best_f1():
    y_true = [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]]
    scores = [[0.30, 0.3, 0.2], [0.25, 0.9, 0.1], [0.20, 0.6, 0.3], [0.10, 0.7, 0.4], [0.05, 0.2, 0.9]]
    first, second, third = fit_label_thresholds(y_true, scores)
    assert first == pytest.approx(0.225)  # both positives on top: halfway to the best negative
    # second: the rows at 0.9, 0.7, 0.6 (2 right, 1 wrong, F1 0.8) beat 0.9 alone (0.67) and every other cut
    assert second == pytest.approx(0.45)
    assert third == 0.5  # no positive row: the fallback


def test_equal_scores_are_never_split_and_thresholds_stay_inside_0_1():
    # the two 0.6 rows (one positive, one not) must get the same decision
    (cut,) = fit_label_thresholds([[1], [0], [1], [0]], [[0.6], [0.6], [0.4], [0.1]])
    assert cut == pytest.approx(0.25)  # the three top rows (F1 0.8) beat the 0.6 pair alone (0.5)
    (everything,) = fit_label_thresholds([[1], [1]], [[0.0], [0.0]])
    assert 0.0 < everything < 1.0


def test_thresholds_shift_the_logits_so_that_probability_at_threshold_is_the_decision_point():
    thresholds = LabelThresholds((0.2, 0.5, 0.9))
    probabilities = torch.tensor([0.21, 0.49, 0.95])
    shifted = torch.sigmoid(torch.logit(probabilities) - torch.tensor(thresholds.logit_offsets()))
    assert (shifted >= 0.5).tolist() == [True, False, True]
    manifest = {"label_names": ["a", "b", "c"], "label_thresholds": thresholds.to_json(("a", "b", "c"))}
    assert LabelThresholds.from_manifest(manifest) == thresholds
    assert LabelThresholds.from_manifest({"label_names": ["a"]}).logit_offsets() == []


def test_a_label_a_hair_below_its_threshold_is_served_below_half_as_evaluation_decides():
    thresholds = LabelThresholds((0.459646075963974, 0.3))
    logits = torch.tensor([[thresholds.logit_offsets()[0] - 2.5e-7, thresholds.logit_offsets()[1]]])
    given = (decision_logits(logits, thresholds) >= 0).int().tolist()
    served = served_probabilities(logits, thresholds).tolist()
    assert [[int(p >= 0.5) for p in row] for row in served] == given
    assert served[0][0] < 0.5  # float32 sigmoid of the shifted logit would round to 0.5


def test_bad_threshold_settings_are_refused():
    for bad in ([], [0.0, 0.5], [1.0], "high", [True], [float("nan")]):
        with pytest.raises(ConfigError, match="label_thresholds"):
            TrainConfig(label_thresholds=bad)
    assert TrainConfig(label_thresholds=[0.3, 0.7]).label_thresholds == [0.3, 0.7]


def imbalanced_rows(n: int, seed: int, absent: bool) -> list[dict]:
    """'cold' (keyword red) in 8% of rows, 'warm' (blue) in 10%, 'neutral' (grey) in 50%;
    'absent' (green) only in training rows."""
    rng = random.Random(seed)
    rows = []
    plan = [("red", "cold", 0.08), ("blue", "warm", 0.10), ("grey", "neutral", 0.5)]
    if absent:
        plan.append(("green", "absent", 0.05))
    for _ in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 10))]
        labels = []
        for keyword, label, rate in plan:
            if rng.random() < rate:
                words.insert(rng.randrange(len(words) + 1), keyword)
                labels.append(label)
        rows.append({"text": " ".join(words), "labels": labels})
    return rows


def run(tmp_path, tiny_bert, name: str, label_thresholds, kind=TaskKind.MULTI_LABEL_CLASSIFICATION, **task):
    validation = imbalanced_rows(200, seed=2, absent=False)
    spec = JobSpec(
        base_model=tiny_bert,
        task=tiny_task(kind, labels=LABELS, **task),
        train_file=write_jsonl(tmp_path / "train.jsonl", imbalanced_rows(320, seed=1, absent=True)),
        validation_file=write_jsonl(tmp_path / "validation.jsonl", validation),
        output_dir=tmp_path / name,
        config=TrainConfig(
            n_epochs=6,
            batch_size=16,
            learning_rate=3e-3,
            warmup_ratio=0.0,
            early_stopping_patience=None,
            eval_every_steps=1000,  # one evaluation, after the last step: the trained weights
            label_thresholds=label_thresholds,
        ),
    )
    return train(spec), validation


def served_decisions(artifact_dir, rows) -> list[list[int]]:
    """What the serving runtime answers: a label is given when its reported probability reaches 0.5."""
    info = read_artifact(artifact_dir)
    loaded = load_model("m", info, torch.device("cpu"))
    predictions = loaded.predict_batch([PredictionInput(r["text"]) for r in rows])
    return [[int(p >= 0.5) for p in prediction.probabilities] for prediction in predictions]


def truth(rows) -> list[list[int]]:
    return [[int(name in r["labels"]) for name in LABELS] for r in rows]


def test_fitted_thresholds_are_recorded_measured_and_served(tmp_path, tiny_bert):
    result, validation = run(tmp_path, tiny_bert, "fitted", "auto")
    fitted = result.resolved_config.label_thresholds
    assert isinstance(fitted, list)
    assert len(fitted) == len(LABELS)
    assert all(0.0 < t < 1.0 for t in fitted)
    assert fitted[LABELS.index("absent")] == 0.5  # no validation positive: the fallback
    assert fitted != [0.5] * len(LABELS)
    manifest = json.loads((result.artifact_dir / "tunery_artifact.json").read_text())
    assert manifest["label_thresholds"] == dict(zip(LABELS, fitted, strict=True))
    assert json.loads((result.artifact_dir / "training_config.json").read_text())["label_thresholds"] == fitted
    assert read_artifact(result.artifact_dir).label_thresholds == LabelThresholds(tuple(fitted))

    # the served answers are the decisions the recorded metrics were measured with
    served = served_decisions(result.artifact_dir, validation)
    micro, _, _ = multilabel_prf(truth(validation), served, LABELS)
    assert micro.f1 == pytest.approx(result.metrics["micro_f1"], abs=1e-9)


def test_fitted_thresholds_do_at_least_as_well_on_validation_as_half(tmp_path, tiny_bert):
    fitted, validation = run(tmp_path, tiny_bert, "fitted", "auto")
    half, _ = run(tmp_path, tiny_bert, "half", None)
    assert half.resolved_config.label_thresholds is None
    assert "label_thresholds" not in json.loads((half.artifact_dir / "tunery_artifact.json").read_text())
    assert half.metrics["eval_loss"] == pytest.approx(fitted.metrics["eval_loss"])  # the same weights
    _, _, per_fitted = multilabel_prf(truth(validation), served_decisions(fitted.artifact_dir, validation), LABELS)
    _, _, per_half = multilabel_prf(truth(validation), served_decisions(half.artifact_dir, validation), LABELS)
    gains = [per_fitted[name].f1 - per_half[name].f1 for name in ("cold", "warm", "neutral")]
    assert min(gains) >= 0.0  # 0.5 is one of the cuts each label's fit chose from
    assert max(gains) > 0.0
    assert fitted.metrics["micro_f1"] >= half.metrics["micro_f1"]


def agreement_with_half(out) -> dict[str, float]:
    """A selection metric that only a flat 0.5 maximises: the share of decisions a 0.5 cut would make."""
    cells = [(p, s >= 0.5) for pred, scores in zip(out.y_pred, out.scores, strict=True) for p, s in zip(pred, scores)]
    return {"agreement": sum(bool(p) == half for p, half in cells) / len(cells)}


def test_fitted_thresholds_that_lower_the_tasks_selection_metric_are_dropped(tmp_path, tiny_bert):
    kept, _ = run(tmp_path, tiny_bert, "kept", "auto")
    assert kept.resolved_config.label_thresholds != [0.5] * len(LABELS)  # the fit does move the cuts here
    result, _ = run(tmp_path, tiny_bert, "dropped", "auto", metrics=agreement_with_half, selection_metric="agreement")
    assert result.resolved_config.label_thresholds is None
    assert result.metrics["agreement"] == 1.0
    assert "label_thresholds" not in json.loads((result.artifact_dir / "tunery_artifact.json").read_text())


def test_fixed_thresholds_of_the_job_are_used_as_given(tmp_path, tiny_bert):
    given = [0.3, 0.4, 0.6, 0.7]
    result, _ = run(tmp_path, tiny_bert, "fixed", given)
    assert result.resolved_config.label_thresholds == given
    assert read_artifact(result.artifact_dir).label_thresholds == LabelThresholds(tuple(given))
    with pytest.raises(ConfigError, match="label_thresholds has 2 values for 4 labels"):
        run(tmp_path, tiny_bert, "wrong", [0.3, 0.4])


def test_single_label_tasks_resolve_thresholds_to_none(tmp_path, tiny_bert):
    rows = [
        {"text": r["text"], "label": "cold" if "cold" in r["labels"] else "other"}
        for r in imbalanced_rows(80, 3, False)
    ]
    spec = JobSpec(
        base_model=tiny_bert,
        task=tiny_task(TaskKind.SEQUENCE_CLASSIFICATION),
        train_file=write_jsonl(tmp_path / "train.jsonl", rows),
        output_dir=tmp_path / "single",
        config=TrainConfig(n_epochs=1, batch_size=16),
    )
    result = train(spec)
    assert result.resolved_config.label_thresholds is None
    assert "label_thresholds" not in json.loads((result.artifact_dir / "tunery_artifact.json").read_text())


def test_an_artifact_with_thresholds_for_other_labels_is_refused(tmp_path, tiny_bert):
    result, _ = run(tmp_path, tiny_bert, "fitted", [0.3, 0.4, 0.6, 0.7])
    path = result.artifact_dir / "tunery_artifact.json"
    manifest = json.loads(path.read_text())
    manifest["label_thresholds"] = {"cold": 0.3}
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="label_thresholds must name each of the labels"):
        read_artifact(result.artifact_dir)


def test_the_quality_report_scores_served_answers_at_the_fitted_thresholds_and_at_half(tmp_path, tiny_bert):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "quality_report.py"
    spec = importlib.util.spec_from_file_location("quality_report", path)
    report = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = report  # dataclasses look their module up while the file executes
    spec.loader.exec_module(report)

    fitted, validation = run(tmp_path, tiny_bert, "fitted", "auto")
    half, _ = run(tmp_path, tiny_bert, "half", None)
    task = tiny_task(TaskKind.MULTI_LABEL_CLASSIFICATION, labels=LABELS)
    served, at_half = report._served_multilabel_metrics(task, fitted.artifact_dir, validation)
    assert served["micro_f1"] == pytest.approx(fitted.metrics["micro_f1"], abs=1e-9)
    assert served["macro_f1"] == pytest.approx(fitted.metrics["macro_f1"], abs=1e-9)
    assert at_half["micro_f1"] == pytest.approx(half.metrics["micro_f1"], abs=1e-9)
    assert at_half["macro_f1"] == pytest.approx(half.metrics["macro_f1"], abs=1e-9)
