"""The engine process protocol as the contract types it: the job spec and the events survive a
JSON round trip, and a malformed spec or line is refused, never guessed at."""

from __future__ import annotations

import json

import pytest

from tunery_contract import protocol
from tunery_contract.discovery import discover
from tunery_contract.protocol import EVENTS, EngineEvent, EventError, ExitCode, JobSpecFile, ParentSpec
from tunery_contract.vocabulary import ConfigError, TrainConfig

SPEC = JobSpecFile(
    base_model="/models/minilm",
    vertical="customer_service",
    vertical_version="1.2.0",
    task="intent",
    train_file="/data/train.jsonl",
    validation_file="/data/valid.jsonl",
    output_dir="/jobs/ftjob-1",
    config={"n_epochs": 3, "lora_r": 8},
    tenant_config={"handoff_threshold": 0.4},
    teacher_model=None,
    column_mapping={"message": "text"},
)


def test_the_job_spec_survives_a_json_round_trip():
    data = json.loads(json.dumps(SPEC.to_json()))
    assert set(data) == {
        "base_model",
        "vertical",
        "vertical_version",
        "task",
        "train_file",
        "validation_file",
        "output_dir",
        "config",
        "tenant_config",
        "teacher_model",
        "column_mapping",
        "object_store_prefix",
        "parent",
    }
    assert JobSpecFile.from_json(data) == SPEC


def test_a_parent_names_one_weights_source_and_a_replay_fraction_from_0_to_1():
    parent = ParentSpec(artifact="/a/final", replay_file="/data/old.jsonl", replay_fraction=0.5)
    data = json.loads(json.dumps({**SPEC.to_json(), "parent": parent.to_json()}))
    assert ParentSpec.from_json(JobSpecFile.from_json(data).parent) == parent
    with pytest.raises(ConfigError, match="parent"):
        JobSpecFile.from_json({**data, "parent": "/a/final"})
    with pytest.raises(ConfigError, match="exactly one"):
        ParentSpec.from_json({"artifact": "/a/final", "checkpoint": "/a/checkpoints/step-1"})
    with pytest.raises(ConfigError, match="replay_fraction"):
        ParentSpec.from_json({"artifact": "/a/final", "replay_fraction": 1.5})
    with pytest.raises(ConfigError, match="unknown parent keys"):
        ParentSpec.from_json({"artifact": "/a/final", "weights": "x"})


def test_an_object_store_prefix_must_be_a_string():
    data = SPEC.to_json()
    assert JobSpecFile.from_json({**data, "object_store_prefix": "acme/ftjob-1"}).object_store_prefix == "acme/ftjob-1"
    with pytest.raises(ConfigError, match="object_store_prefix"):
        JobSpecFile.from_json({**data, "object_store_prefix": ["acme"]})


def test_a_spec_with_unknown_or_missing_keys_is_a_permanent_config_error():
    data = SPEC.to_json()
    with pytest.raises(ConfigError, match=r"unknown keys \['epochs'\], missing keys \[\]"):
        JobSpecFile.from_json({**data, "epochs": 3})
    del data["train_file"]
    with pytest.raises(ConfigError, match=r"missing keys \['train_file'\]") as refused:
        JobSpecFile.from_json(data)
    assert refused.value.permanent
    with pytest.raises(ConfigError, match="JSON object"):
        JobSpecFile.from_json([1])


EXAMPLES = [
    protocol.TrainBegin(
        step=4,
        total_steps=40,
        steps_per_epoch=10,
        resumed_from="/ck/step-00000004",
        resolved_config={"n_epochs": 2, "batch_size": 16, "learning_rate": 3e-4},
    ),
    protocol.Progress(4, 40, 0.4, 0.7, 1e-4, 8.0, 512.0, 12.5),
    protocol.Evaluate(step=10, eval_loss=0.31, metrics={"accuracy": 0.9}, learning_rate=5e-5),
    protocol.Continued(parent="artifact", added_labels=["hot"], replayed_rows=50, replay_source_rows=200),
    protocol.Checkpoint(step=10, path="/ck/step-00000010", metrics={"accuracy": 0.9}, is_best=True),
    protocol.Heartbeat(),
    protocol.SearchTrial(index=1, overrides={"learning_rate": 3e-4}, metric="accuracy", value=0.8, seconds=12.5),
    protocol.SearchEnd(chosen=1, trials=3, overrides={"learning_rate": 3e-4}, metric="accuracy", value=0.8),
    protocol.Failed(code="invalid_data", message="line 3: bad", permanent=True, row_errors=[{"row": 3}]),
    protocol.Paused(step=7, checkpoint="/ck/step-00000007"),
    protocol.Cancelled(step=7, checkpoint=None),
    protocol.Succeeded(artifact_dir="/a", metrics={"accuracy": 1.0}, resolved_config={"n_epochs": 2}, steps=20),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.name)
def test_every_event_survives_a_json_line_round_trip(event):
    line = event.to_line()
    assert json.loads(line)["event"] == event.name
    assert EngineEvent.from_line(line) == event


def test_every_event_kind_has_an_example_and_outcomes_are_final():
    assert {e.name for e in EXAMPLES} == set(EVENTS)
    assert {name for name, kind in EVENTS.items() if kind.final} == {"failed", "paused", "cancelled", "succeeded"}


def test_non_finite_numbers_become_null_and_a_failed_event_without_rows_has_none():
    assert json.loads(protocol.Progress(step=1, loss=float("nan")).to_line())["loss"] is None
    assert protocol.Failed(code="x", message="m", permanent=False).to_json() == {
        "event": "failed",
        "code": "x",
        "message": "m",
        "permanent": False,
    }


def test_a_train_begin_line_of_an_older_engine_has_no_resolved_config():
    event = EngineEvent.from_line('{"event": "train_begin", "step": 0, "total_steps": 12, "steps_per_epoch": 6}')
    assert event == protocol.TrainBegin(step=0, total_steps=12, steps_per_epoch=6)
    assert event.resolved_config is None


def test_the_evaluate_event_has_one_key_for_the_validation_loss():
    event = EngineEvent.from_json({"event": "evaluate", "step": 2, "metrics": {"loss": 0.5}, "valid_loss": 0.4})
    assert isinstance(event, protocol.Evaluate)
    assert event.eval_loss is None  # neither "loss" nor "valid_loss" is taken for it
    assert event.metrics == {"loss": 0.5}


def test_lines_that_are_no_event_are_refused():
    for line in (b"not json", b"[1]", b'{"event": "telemetry"}', b'{"step": 1}'):
        with pytest.raises(EventError):
            EngineEvent.from_line(line)


def test_exit_codes():
    assert [(c.name, int(c)) for c in ExitCode] == [
        ("SUCCEEDED", 0),
        ("TRANSIENT", 1),
        ("PERMANENT", 2),
        ("PAUSED", 3),
        ("CANCELLED", 4),
    ]


def test_every_installed_pack_default_fits_the_vocabulary():
    found = discover()
    assert not found.failures, found.failures
    for pack in found.packs.values():
        for task in pack.tasks:
            config = TrainConfig.from_dict(dict(task.default_hyperparameters))
            assert config.to_dict().keys() >= task.default_hyperparameters.keys()


def test_a_pack_default_outside_its_knob_range_is_a_pack_problem():
    import dataclasses

    from .dummy import make_dummy_pack

    pack = make_dummy_pack()
    task = dataclasses.replace(pack.tasks[0], default_hyperparameters={"lora_r": 4096, "n_epochs": "auto"})
    problems = dataclasses.replace(pack, tasks=(task, *pack.tasks[1:])).problems()
    assert problems == [f"task {task.id!r}: default hyperparameter lora_r must be in [1, 1024]; got 4096"]
