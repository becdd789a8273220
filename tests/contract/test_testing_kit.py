"""The contract test-kit finds real contract breaches and passes a sound pack."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from tunery_contract import PackError, VerticalPack
from tunery_contract.testing import check_pack, label_names_for, pack_problems

from .dummy import CHAT, INTENT

ROWS = [{"text": "hello there", "label": "greeting"}, {"text": "I want my money back", "label": "refund"}] * 3


@pytest.fixture
def sample_package(tmp_path, monkeypatch):
    """A package on sys.path holding sample data files, as an installed pack's would."""
    package = tmp_path / "tunery_kitdemo"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "intent.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (package / "chat.jsonl").write_text(json.dumps(chat) + "\n")
    (package / "bad.jsonl").write_text('{"text": "hi", "label": "unknown"}\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tunery_kitdemo", raising=False)
    return "tunery_kitdemo"


def make(package: str, chat_changes: dict | None = None, **task_changes) -> VerticalPack:
    intent = dataclasses.replace(INTENT, **{"sample_data": "intent.jsonl", **task_changes})
    chat = dataclasses.replace(
        CHAT, sample_data="chat.jsonl", suitable_architectures=("llama",), **(chat_changes or {})
    )
    return VerticalPack(id="kitdemo", name="Kit demo", version="1.0", tasks=(intent, chat), package=package)


def test_a_sound_pack_passes(sample_package):
    check_pack(make(sample_package))


def test_sample_records_reads_packaged_data(sample_package):
    pack = make(sample_package)
    assert pack.sample_records("intent")[0] == (1, ROWS[0])
    with pytest.raises(PackError, match="offers no task"):
        pack.sample_records("nope")


def test_every_problem_is_listed(sample_package):
    def broken_postprocess(prediction, item, config):
        raise RuntimeError("template missing")

    pack = make(
        sample_package,
        sample_data="bad.jsonl",
        default_hyperparameters={"epochs": 3},
        suitable_architectures=(),
        postprocess=broken_postprocess,
    )
    problems = pack_problems(pack)
    assert "task 'intent': unknown hyperparameters ['epochs']" in problems
    assert "task 'intent': names no suitable base-model architectures" in problems
    assert any("does not validate: line 1, column 'label': unknown label 'unknown'" in p for p in problems)
    with pytest.raises(AssertionError, match="breaks the contract"):
        check_pack(pack)


def test_metrics_must_return_the_selection_metric_and_prefer_perfect_predictions(sample_package):
    assert any(
        "lacks the selection metric 'f1'" in p for p in pack_problems(make(sample_package, selection_metric="f1"))
    )
    flat = make(sample_package, metrics=lambda out: {"accuracy": 0.5})
    assert any("does not prefer perfect predictions" in p for p in pack_problems(flat))


def test_postprocess_must_return_json(sample_package):
    pack = make(sample_package, postprocess=lambda prediction, item, config: {"when": object()})
    assert "task 'intent': postprocess() returned something that is not JSON-serialisable" in pack_problems(pack)


def test_missing_sample_data_is_reported(sample_package):
    pack = make(sample_package, sample_data="absent.jsonl")
    assert any("not found in package" in p for p in pack_problems(pack))


def test_label_names_for_token_classification_are_bio_tags():
    from .dummy import NER

    assert label_names_for(NER, []) == ("O", "B-Disease", "I-Disease")


def test_engine_knows_every_hyperparameter_a_pack_may_set():
    config = pytest.importorskip("tunery_engine.config")
    from dataclasses import fields

    from tunery_contract import ENGINE_HYPERPARAMETERS

    assert {f.name for f in fields(config.TrainConfig)} >= ENGINE_HYPERPARAMETERS


def test_a_text_filter_must_return_text_and_sit_on_a_language_model_task(sample_package):
    check_pack(make(sample_package, chat_changes={"text_filter": lambda text, config: text.replace("a", "*")}))
    assert "task 'chat': text_filter() returned NoneType, not text" in pack_problems(
        make(sample_package, chat_changes={"text_filter": lambda text, config: None})
    )
    misplaced = pack_problems(make(sample_package, text_filter=lambda text, config: text))
    assert "task 'intent': text_filter must be a callable, on a causal-LM task only" in misplaced
