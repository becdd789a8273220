"""Best-evaluation selection: the selection metric first, the validation loss on a tie."""

from __future__ import annotations

import io
import json

from tunery_contract import TaskKind
from tunery_engine import JobSpec, TrainConfig, train
from tunery_engine.engine import _improved
from tunery_engine.process import EventWriter
from tunery_engine.tiny_models import tiny_task, write_synthetic


def test_a_tie_of_the_selection_metric_goes_to_the_lower_validation_loss():
    assert _improved(0.5, 0.40, 0.5, 0.60, greater=True)
    assert not _improved(0.5, 0.70, 0.5, 0.60, greater=True)
    assert not _improved(0.5, 0.60, 0.5, 0.60, greater=True)  # an exact repeat is no improvement
    assert _improved(0.3, 0.40, 0.3, 0.60, greater=False)


def test_the_selection_metric_still_decides_when_it_differs():
    assert _improved(0.6, 0.90, 0.5, 0.10, greater=True)
    assert not _improved(0.4, 0.01, 0.5, 0.60, greater=True)
    assert _improved(0.2, 0.90, 0.3, 0.10, greater=False)
    assert _improved(0.1, None, None, None, greater=True)  # the first evaluation is always the best so far


def test_evaluate_events_carry_the_current_learning_rate(tmp_path, tiny_bert):
    stream = io.StringIO()
    spec = JobSpec(
        base_model=tiny_bert,
        task=tiny_task(TaskKind.SEQUENCE_CLASSIFICATION),
        train_file=write_synthetic(tmp_path / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 100, seed=1),
        output_dir=tmp_path / "out",
        config=TrainConfig(
            n_epochs=3, batch_size=32, learning_rate=1e-3, warmup_ratio=0.0, log_every_steps=1, lr_scheduler="linear"
        ),
    )
    train(spec, [EventWriter(stream)])
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    progress = {e["step"]: e["learning_rate"] for e in events if e["event"] == "progress"}
    evaluations = [e for e in events if e["event"] == "evaluate" and not e.get("model")]
    assert evaluations
    probe = [e for e in events if e["event"] == "evaluate" and e.get("model") == "linear_probe"]
    assert len(probe) == 1  # the linear probe: the first evaluation, at step 0
    assert probe[0]["step"] == 0
    assert "accuracy" in probe[0]["metrics"]
    assert events.index(probe[0]) < events.index(evaluations[0])
    for evaluation in evaluations:
        assert evaluation["learning_rate"] == progress[evaluation["step"]]
    assert evaluations[0]["learning_rate"] > 0  # mid-run: the linear decay has not reached zero
