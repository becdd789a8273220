"""bench/quality_report.py turns MovieTweetings ratings into text pairs without leaking the future."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_report_module():
    spec = importlib.util.spec_from_file_location("quality_report", ROOT / "bench" / "quality_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_histories_hold_only_earlier_ratings(tmp_path):
    (tmp_path / "movies.csv").write_text(
        "movie_id,title,year,genres\n1,Alpha (2001),2001,Drama|Comedy\n2,Beta (2002),2002,\n"
    )
    header = "user_id,movie_id,rating,timestamp\n"
    (tmp_path / "ratings_train.csv").write_text(header + "7,2,4,200\n7,1,9,100\n")
    (tmp_path / "ratings_validation.csv").write_text(header + "8,1,6,300\n")
    (tmp_path / "ratings_test.csv").write_text(header + "7,1,8,400\n8,2,5,500\n")
    train, test = load_report_module()._movietweetings(tmp_path)
    assert [r["history"] for r in train] == ["(no history)", "Alpha (2001) -> 9/10"]  # sorted by time
    assert train[0]["item"] == "Alpha (2001) | Drama, Comedy"
    assert train[1]["item"] == "Beta (2002) | unknown genre"
    assert test[0]["history"] == "Beta (2002) -> 4/10; Alpha (2001) -> 9/10"  # most recent first
    assert test[1]["history"] == "Alpha (2001) -> 6/10"  # the validation period counts as history
    assert [r["rating"] for r in test] == [8.0, 5.0]


def test_subsampling_is_seeded_and_keeps_order():
    module = load_report_module()
    rows = [{"i": i} for i in range(100)]
    picked = module._subsample(rows, 10, seed=3)
    assert picked == module._subsample(rows, 10, seed=3)
    assert [r["i"] for r in picked] == sorted(r["i"] for r in picked)
    assert module._subsample(rows, None, seed=3) is rows
