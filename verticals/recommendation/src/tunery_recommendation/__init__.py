"""Recommendation vertical: relevance of an item to a user from text (the user's profile or recent
history as text, the item's description), trained on ratings or likes, and a ranking call that
orders many scored candidates for one user.

Ratings are on a 0-10 scale; a rating of 8 or more counts as a like (MovieTweetings' convention).
Tenant configuration: ``{"like_threshold": 8}`` (used in answers; metrics use the pack's 8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tunery_contract import (
    Column,
    ColumnType,
    DatasetSchema,
    EvalOutput,
    Prediction,
    RowError,
    TaskDefinition,
    TaskKind,
    VerticalPack,
)
from tunery_contract import metrics as m
from tunery_contract.cards import ENCODER_ARCHITECTURES, encoder_defaults, section

__version__ = "1.0.0"

RATING_SCALE = (0.0, 10.0)
LIKE_THRESHOLD = 8.0
NDCG_K = 10
LIKE_LABELS = ("dislike", "like")


def rank(scores: Sequence[float], items: Sequence[Any], k: int | None = 10) -> list[dict[str, Any]]:
    """The ``k`` best candidates for one user, best first: ``[{"rank", "item", "score"}]``.

    ``scores[i]`` is the model's score for ``items[i]`` (an id or any JSON value); ties keep the
    candidates' order; ``k=None`` ranks them all. Raises ValueError on mismatched lengths."""
    if len(scores) != len(items):
        raise ValueError(f"{len(scores)} scores for {len(items)} items")
    if k is not None and k < 1:
        raise ValueError("k must be at least 1")
    order = sorted(range(len(items)), key=lambda i: -float(scores[i]))
    return [{"rank": n + 1, "item": items[i], "score": float(scores[i])} for n, i in enumerate(order[:k])]


def relevance_metrics(out: EvalOutput) -> dict[str, float]:
    """rmse and mae of the predicted rating; auc of "like" (rating >= 8) from the predicted rating;
    ndcg@10 (gains = true ratings) and mrr (first liked item) per user when groups are given."""
    truth, predicted = [float(v) for v in out.y_true], [float(v) for v in out.y_pred]
    result = {"rmse": m.rmse(truth, predicted), "mae": _mae(truth, predicted)}
    liked = [int(t >= LIKE_THRESHOLD) for t in truth]
    _put(result, "auc", m.roc_auc(liked, predicted))
    if out.groups is not None:
        _put(result, f"ndcg@{NDCG_K}", m.ndcg_at_k(out.groups, truth, predicted, NDCG_K))
        _put(result, "mrr", m.mean_reciprocal_rank(out.groups, liked, predicted))
    return result


def like_metrics(out: EvalOutput) -> dict[str, float]:
    """accuracy, macro_f1, mcc, recall per class; auc, ndcg@10 and mrr from the like probability."""
    result = m.classification_summary(out)
    if out.scores is not None and "like" in out.label_names:
        index = out.label_names.index("like")
        like_prob = [float(s[index]) for s in out.scores]
        liked = [int(t == index) for t in out.y_true]
        _put(result, "auc", m.roc_auc(liked, like_prob))
        if out.groups is not None:
            _put(result, f"ndcg@{NDCG_K}", m.ndcg_at_k(out.groups, liked, like_prob, NDCG_K))
            _put(result, "mrr", m.mean_reciprocal_rank(out.groups, liked, like_prob))
    return result


def _mae(truth: list[float], predicted: list[float]) -> float:
    return sum(abs(t - p) for t, p in zip(truth, predicted)) / len(truth) if truth else 0.0


def _put(result: dict[str, float], key: str, value: float | None) -> None:
    if value is not None:  # undefined (one class, no rankable user): leave it out, do not invent it
        result[key] = value


def rating_in_scale(row: dict[str, Any], line: int, config: Mapping[str, Any]) -> list[RowError]:
    low, high = RATING_SCALE
    rating = row.get("rating")
    if rating is not None and not low <= rating <= high:
        return [RowError(line, f"rating {rating:g} is outside the {low:g}-{high:g} scale", "rating")]
    return []


def score_answer(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    score = float(prediction.score if prediction.score is not None else 0.0)
    return {"score": score, "like": score >= float(config.get("like_threshold", LIKE_THRESHOLD))}


def like_answer(prediction: Prediction, item: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    probabilities = dict(zip(prediction.label_names, prediction.probabilities or []))
    label, confidence = prediction.top_label()
    return {"label": label, "confidence": confidence, "score": probabilities.get("like", 0.0)}


def _card(title: str, keys: list[str]) -> Any:
    return section(
        f"Recommendation: {title}",
        keys,
        "Ranking metrics are per user over that user's evaluation rows; users with a single row or "
        "no liked item are left out. Popularity and exposure bias in the training data carry over.",
        intro="Scores how well an item suits a user from text: the user's recent history or profile and "
        "the item's description. Rank candidates with `tunery_recommendation.rank(scores, items, k)`.",
    )


COMMON_COLUMNS = (
    Column("user_id", ColumnType.STRING, "the user; groups rows for ranking metrics", role="group"),
    Column("history", ColumnType.TEXT, "user profile or recent history as text", role="text"),
    Column("item", ColumnType.TEXT, "item description (title, category, ...)", role="text_pair"),
    Column("item_id", ColumnType.STRING, "the item's id (kept for ranking answers)", required=False),
)
ENCODER_DEFAULTS: dict[str, Any] = encoder_defaults(n_epochs=3, max_length=192, early_stopping_patience=2)
ARCHITECTURES = ENCODER_ARCHITECTURES

RELEVANCE = TaskDefinition(
    id="relevance",
    name="Rating prediction",
    kind=TaskKind.TEXT_PAIR_REGRESSION,
    description="Predicts the user's 0-10 rating of an item; rank candidates by it.",
    schema=DatasetSchema(
        (*COMMON_COLUMNS, Column("rating", ColumnType.NUMBER, "the user's rating, 0 to 10", role="label"))
    ),
    metrics=relevance_metrics,
    selection_metric="rmse",
    greater_is_better=False,
    default_hyperparameters=ENCODER_DEFAULTS,
    row_validator=rating_in_scale,
    postprocess=score_answer,
    sample_data="ratings_sample.jsonl",
    model_card=_card("rating prediction", ["rmse", "mae", "auc", f"ndcg@{NDCG_K}", "mrr"]),
    suitable_architectures=ARCHITECTURES,
)

LIKE = TaskDefinition(
    id="like",
    name="Like / click prediction",
    kind=TaskKind.TEXT_PAIR_CLASSIFICATION,
    description="Predicts whether the user likes (or clicks) the item; rank candidates by the like probability.",
    schema=DatasetSchema((*COMMON_COLUMNS, Column("liked", ColumnType.LABEL, "like or dislike", role="label"))),
    metrics=like_metrics,
    selection_metric="macro_f1",
    labels=LIKE_LABELS,
    label_aliases={"1": "like", "0": "dislike", "yes": "like", "no": "dislike", "click": "like", "skip": "dislike"},
    default_hyperparameters=ENCODER_DEFAULTS,
    postprocess=like_answer,
    sample_data="ratings_sample.jsonl",
    model_card=_card("like prediction", ["auc", f"ndcg@{NDCG_K}", "mrr", "accuracy", "macro_f1"]),
    suitable_architectures=ARCHITECTURES,
)


def check_config(config: Mapping[str, Any]) -> list[str]:
    """Tenant configuration problems (see the module docstring)."""
    value = config.get("like_threshold")
    low, high = RATING_SCALE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        return [f"like_threshold must be a rating from {low:g} to {high:g}, got {value!r}"]
    return []


pack = VerticalPack(
    id="recommendation",
    name="Recommendation",
    version=__version__,
    tasks=(RELEVANCE, LIKE),
    description="Text-based relevance of items to users from ratings or likes, with a ranking call.",
    config_defaults={"like_threshold": LIKE_THRESHOLD},
    license="Apache-2.0; sample data written for the project (CC0)",
    package="tunery_recommendation",
    config_validator=check_config,
)

__all__ = ["LIKE", "RELEVANCE", "like_metrics", "pack", "rank", "relevance_metrics"]
