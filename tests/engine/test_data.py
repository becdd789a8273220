"""Data side of the engine: readers with column mapping, the stratified split, batching, the cache format."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tunery_contract import TaskKind
from tunery_engine import DataError, TrainConfig
from tunery_engine.data import _load_encoded, _save_encoded, epoch_batches, eval_batches, load_rows, split_validation
from tunery_engine.heads import Encoded
from tunery_engine.tiny_models import synthetic_rows, tiny_task


def test_csv_with_column_mapping_is_read_and_validated(tmp_path):
    path = tmp_path / "upload.csv"
    path.write_text("utterance,intent\nw1 red,warm\nw2 blue,cold\n", encoding="utf-8")
    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION)
    rows = load_rows(path, task, column_mapping={"utterance": "text", "intent": "label"})
    assert rows == [{"text": "w1 red", "label": "warm"}, {"text": "w2 blue", "label": "cold"}]
    with pytest.raises(DataError, match=r"line 2.*missing value"):
        load_rows(path, task)  # without the mapping the schema's columns are missing


def test_unparseable_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "w1 red", "label": "warm"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2: invalid JSON"):
        load_rows(path, tiny_task(TaskKind.SEQUENCE_CLASSIFICATION))


def test_validation_split_is_stratified_and_deterministic():
    task = tiny_task(TaskKind.SEQUENCE_CLASSIFICATION)
    rows = [*synthetic_rows(TaskKind.SEQUENCE_CLASSIFICATION, 300, seed=2), {"text": "rare", "label": "once"}]
    train, validation = split_validation(rows, task, 0.2, seed=7)
    assert len(train) + len(validation) == len(rows)
    share = {k: v / len(rows) for k, v in Counter(r["label"] for r in rows).items()}
    held = Counter(r["label"] for r in validation)
    for label in ("warm", "cold", "neutral"):
        assert abs(held[label] / len(validation) - share[label]) < 0.05
    assert held["once"] == 0  # a label seen once stays in training
    assert split_validation(rows, task, 0.2, seed=7) == (train, validation)


def test_length_grouped_batches_cover_every_row_once_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 120, size=1000)
    grouped = epoch_batches(lengths, 32, seed=1, epoch=0, group_by_length=True)
    plain = epoch_batches(lengths, 32, seed=1, epoch=0, group_by_length=False)
    for batches in (grouped, plain):
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    assert padded(grouped) < 0.7 * padded(plain)
    assert all(np.array_equal(a, b) for a, b in zip(grouped, epoch_batches(lengths, 32, 1, 0, True)))
    assert not all(np.array_equal(a, b) for a, b in zip(grouped, epoch_batches(lengths, 32, 1, 1, True)))
    ordered = np.concatenate(eval_batches(lengths, 50))
    assert (np.diff(lengths[ordered]) <= 0).all()


def test_token_cache_round_trips_without_pickle(tmp_path):
    features = [
        {"input_ids": np.array([2, 7, 3]), "labels": np.asarray(1)},
        {"input_ids": np.array([2, 3]), "labels": np.asarray(0)},
    ]
    path = tmp_path / "tokens-x.npz"
    _save_encoded(path, Encoded(features, truncated=1))
    loaded = _load_encoded(path)
    assert loaded.truncated == 1
    for a, b in zip(features, loaded.features):
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(a[key], b[key])
            assert a[key].shape == b[key].shape


def test_train_config_documents_every_field():
    help_text = TrainConfig.help()
    assert help_text
    assert all(help_text.values())
