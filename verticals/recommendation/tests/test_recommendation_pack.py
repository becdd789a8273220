"""The recommendation pack honours the contract; ranking and ranking metrics behave as documented."""

from __future__ import annotations

import pytest
from tunery_recommendation import LIKE_LABELS, like_metrics, pack, rank, relevance_metrics

from tunery_contract import EvalOutput, TaskKind
from tunery_contract.testing import check_pack


def test_pack_honours_the_contract():
    check_pack(pack)


def test_rank_orders_candidates_best_first_and_keeps_ties_in_order():
    ranked = rank([0.2, 0.9, 0.5, 0.9], ["a", "b", "c", "d"], k=3)
    assert [(r["rank"], r["item"]) for r in ranked] == [(1, "b"), (2, "d"), (3, "c")]
    assert len(rank([1.0, 2.0], ["x", "y"], k=None)) == 2


@pytest.mark.parametrize(
    ("scores", "items", "k", "message"),
    [([1.0], ["a", "b"], 1, "1 scores for 2 items"), ([1.0], ["a"], 0, "k must be at least 1")],
)
def test_rank_refuses_bad_calls(scores, items, k, message):
    with pytest.raises(ValueError, match=message):
        rank(scores, items, k)


def test_relevance_metrics_rank_per_user():
    out = EvalOutput(
        kind=TaskKind.TEXT_PAIR_REGRESSION,
        y_true=[9.0, 3.0, 8.0, 2.0, 7.0],
        y_pred=[8.0, 4.0, 5.0, 6.0, 7.0],
        groups=["u1", "u1", "u2", "u2", "u3"],
    )
    metrics = relevance_metrics(out)
    assert metrics["rmse"] == pytest.approx(((1 + 1 + 9 + 16 + 0) / 5) ** 0.5)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2) / 2)  # u3 has a single row and is left out
    assert metrics["auc"] == pytest.approx(4 / 6)  # liked 8 and 5 vs others 4, 6, 7: 4 of 6 pairs right
    assert 0 < metrics["ndcg@10"] < 1


def test_undefined_ranking_metrics_are_left_out_not_invented():
    out = EvalOutput(kind=TaskKind.TEXT_PAIR_REGRESSION, y_true=[5.0, 6.0], y_pred=[5.0, 6.0], groups=["u", "u"])
    assert set(relevance_metrics(out)) == {"rmse", "mae", "ndcg@10"}  # nobody liked anything: no auc, no mrr


def test_like_metrics_use_the_like_probability():
    out = EvalOutput(
        kind=TaskKind.TEXT_PAIR_CLASSIFICATION,
        label_names=LIKE_LABELS,
        y_true=[1, 0, 1, 0],
        y_pred=[1, 0, 0, 0],
        scores=[[0.1, 0.9], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3]],
        groups=["a", "a", "b", "b"],
    )
    metrics = like_metrics(out)
    assert metrics["auc"] == 1.0
    assert metrics["mrr"] == 1.0
    assert metrics["recall/like"] == 0.5


def test_ratings_outside_the_scale_and_missing_users_are_row_errors():
    task = pack.task("relevance")
    report = task.validate(
        [
            (1, {"user_id": "u", "history": "A -> 9/10", "item": "B", "rating": 11}),
            (2, {"history": "A -> 9/10", "item": "B", "rating": 5}),
            (3, {"user_id": "u", "history": "A -> 9/10", "item": "", "rating": 5}),
        ]
    )
    assert [str(e) for e in report.errors] == [
        "line 1, column 'rating': rating 11 is outside the 0-10 scale",
        "line 2, column 'user_id': missing value",
        "line 3, column 'item': missing value",
    ]


def test_like_labels_accept_clicks_and_ones():
    report = pack.task("like").validate(
        [
            (1, {"user_id": "u", "history": "h", "item": "i", "liked": 1}),
            (2, {"user_id": "u", "history": "h", "item": "j", "liked": "skip"}),
        ]
    )
    assert [r["liked"] for r in report.rows] == ["like", "dislike"]


def test_bad_tenant_configuration_is_explained():
    assert pack.config_problems({"like_threshold": 11}) == ["like_threshold must be a rating from 0 to 10, got 11"]
    assert pack.config_problems({"like_threshold": 7}) == []
