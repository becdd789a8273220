"""The contract's stdlib metrics agree with scikit-learn and seqeval on random inputs."""

from __future__ import annotations

import math
import random

import pytest
from seqeval.metrics import classification_report as seqeval_report
from sklearn import metrics as skm

from tunery_contract import metrics as m

SEEDS = range(5)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_match_scikit_learn(seed):
    rng = random.Random(seed)
    y_true = [rng.randrange(5) for _ in range(200)]
    y_pred = [t if rng.random() < 0.6 else rng.randrange(6) for t in y_true]
    assert close(m.accuracy(y_true, y_pred), skm.accuracy_score(y_true, y_pred))
    assert close(m.macro_f1(y_true, y_pred), skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert close(m.matthews_corrcoef(y_true, y_pred), skm.matthews_corrcoef(y_true, y_pred))
    recalls = skm.recall_score(y_true, y_pred, labels=list(range(5)), average=None, zero_division=0)
    ours = m.per_class_prf(y_true, y_pred, labels=range(5))
    assert all(close(ours[i].recall, recalls[i]) for i in range(5))


def test_mcc_is_zero_when_undefined_and_one_when_perfect():
    assert m.matthews_corrcoef([1, 1, 1], [1, 1, 1]) == 0.0
    assert m.matthews_corrcoef([0, 1, 2], [0, 1, 2]) == 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_auc_and_rmse_match_scikit_learn(seed):
    rng = random.Random(seed)
    truth = [rng.random() < 0.4 for _ in range(300)]
    scores = [round(rng.random() + 0.5 * t, 1) for t in truth]  # rounding makes ties
    assert close(m.roc_auc(truth, scores), skm.roc_auc_score(truth, scores))
    ratings = [rng.uniform(0, 10) for _ in range(100)]
    guesses = [r + rng.gauss(0, 2) for r in ratings]
    assert close(m.rmse(ratings, guesses), math.sqrt(skm.mean_squared_error(ratings, guesses)))


def test_auc_is_undefined_with_one_class():
    assert m.roc_auc([1, 1], [0.2, 0.9]) is None


@pytest.mark.parametrize("seed", SEEDS)
def test_ndcg_matches_scikit_learn_per_group(seed):
    rng = random.Random(seed)
    groups, relevance, scores, per_group = [], [], [], []
    for user in range(8):
        rel = [rng.randrange(0, 11) for _ in range(6)]
        sc = [rng.random() for _ in range(6)]  # distinct: no tie handling differences
        groups += [f"u{user}"] * 6
        relevance += rel
        scores += sc
        per_group.append(skm.ndcg_score([rel], [sc], k=3) if any(rel) else None)
    expected = [v for v in per_group if v is not None]
    assert close(m.ndcg_at_k(groups, relevance, scores, k=3), sum(expected) / len(expected))


def test_mrr_uses_the_first_relevant_item_per_group():
    groups = ["a", "a", "a", "b", "b", "c"]
    liked = [0, 1, 0, 1, 0, 1]
    scores = [0.9, 0.8, 0.1, 0.7, 0.2, 0.5]
    # a: first liked item ranked 2nd; b: 1st; c has a single candidate and is skipped
    assert m.mean_reciprocal_rank(groups, liked, scores) == pytest.approx((1 / 2 + 1) / 2)
    assert m.mean_reciprocal_rank(["a"], [0], [0.5]) is None


@pytest.mark.parametrize("seed", SEEDS)
def test_entity_scores_match_seqeval(seed):
    rng = random.Random(seed)
    tags = ["O", "O", "O", "B-Disease", "I-Disease", "B-Chemical", "I-Chemical"]
    true_seqs = [[rng.choice(tags) for _ in range(rng.randrange(1, 15))] for _ in range(60)]
    pred_seqs = [[t if rng.random() < 0.7 else rng.choice(tags) for t in seq] for seq in true_seqs]
    report = seqeval_report(true_seqs, pred_seqs, output_dict=True, zero_division=0)
    micro, per_type = m.entity_prf(true_seqs, pred_seqs)
    assert close(micro.f1, report["micro avg"]["f1-score"])
    assert close(micro.precision, report["micro avg"]["precision"])
    for kind in ("Disease", "Chemical"):
        assert close(per_type[kind].f1, report[kind]["f1-score"])
        assert per_type[kind].support == report[kind]["support"]


def test_bio_entities_reads_spans():
    assert m.bio_entities(["B-D", "I-D", "O", "I-C", "B-D", "B-D", "I-C"]) == [
        ("D", 0, 1),
        ("C", 3, 3),
        ("D", 4, 4),
        ("D", 5, 5),
        ("C", 6, 6),
    ]


@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_scores_match_scikit_learn(seed):
    rng = random.Random(seed)
    truth = [[int(rng.random() < 0.2) for _ in range(4)] for _ in range(150)]
    pred = [[v if rng.random() < 0.8 else 1 - v for v in row] for row in truth]
    micro, macro, per_label = m.multilabel_prf(truth, pred, ["a", "b", "c", "d"])
    assert close(micro.f1, skm.f1_score(truth, pred, average="micro", zero_division=0))
    assert close(macro.f1, skm.f1_score(truth, pred, average="macro", zero_division=0))
    assert close(per_label["c"].f1, skm.f1_score([r[2] for r in truth], [r[2] for r in pred], zero_division=0))
    # LexGLUE's implicit "none" class: one more column that is on when a row has no label
    with_none = [[*r, int(not any(r))] for r in truth]
    pred_none = [[*r, int(not any(r))] for r in pred]
    micro_n, _, per_label_n = m.multilabel_prf(truth, pred, ["a", "b", "c", "d"], none_label="fair")
    assert close(micro_n.f1, skm.f1_score(with_none, pred_none, average="micro", zero_division=0))
    assert "fair" in per_label_n


def test_coverage_and_accuracy_at_threshold():
    probs = [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.55, 0.45]]
    coverage, acc = m.coverage_and_accuracy_at([0, 1, 0, 0], probs, threshold=0.7)
    assert coverage == 0.5  # rows 0 and 2 are confident enough
    assert acc == 0.5  # row 0 right, row 2 wrong
    assert m.coverage_and_accuracy_at([0], [[0.5, 0.5]], 0.9) == (0.0, 0.0)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 true values but 1 predictions"):
        m.accuracy([1, 2], [1])


def test_slugs_make_metric_keys():
    assert m.slug("Limitation of liability") == "limitation_of_liability"
    assert m.prefixed("recall", {"B-Disease": 0.5}) == {"recall/b_disease": 0.5}


def test_summaries_name_their_keys_by_label():
    from tunery_contract import EvalOutput, TaskKind

    out = EvalOutput(TaskKind.SEQUENCE_CLASSIFICATION, ("card lost", "refund"), [0, 1, 1], [0, 0, 1])
    summary = m.classification_summary(out)
    assert summary["recall/card_lost"] == 1.0
    assert summary["recall/refund"] == 0.5
    assert summary["accuracy"] == pytest.approx(2 / 3)
    ner = EvalOutput(TaskKind.TOKEN_CLASSIFICATION, (), [["B-Disease", "O"]], [["B-Disease", "O"]])
    assert m.entity_summary(ner) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "f1/disease": 1.0}
    lm = m.language_model_summary(EvalOutput(TaskKind.CAUSAL_LM, eval_loss=math.log(4)))
    assert lm["perplexity"] == pytest.approx(4.0)
    assert m.language_model_summary(EvalOutput(TaskKind.CAUSAL_LM)) == {}


def test_model_card_helpers_render_markdown():
    from tunery_contract.cards import metrics_table, settings_list

    table = metrics_table({"f1": 0.8123456, "loss": 1.0, "ignored": 3.0}, keys=["f1", "loss", "absent"])
    assert table.splitlines() == ["| metric | value |", "|---|---|", "| f1 | 0.8123 |", "| loss | 1.0000 |"]
    assert metrics_table({}) == "_No evaluation metrics were recorded._"
    assert settings_list({"lora_r": 8}, ["lora_r", "n_epochs"]) == "- `lora_r`: 8"


def test_model_card_section_and_encoder_defaults():
    from tunery_contract.cards import encoder_defaults, section

    card = section("Pack: task", ["f1"], "Footer.", intro="Intro.")
    assert card({"f1": 0.5}, {"n_epochs": 3, "other": 1}) == (
        "### Pack: task\n\nIntro.\n\n| metric | value |\n|---|---|\n| f1 | 0.5000 |\n\n"
        "Training settings:\n- `n_epochs`: 3\n\nFooter."
    )
    bare = section("Pack: lm", ["loss"], settings_keys=None)
    assert bare({}, {"n_epochs": 3}) == "### Pack: lm\n\n_No evaluation metrics were recorded._"
    defaults = encoder_defaults(max_length=64)
    assert defaults["max_length"] == 64
    assert defaults["n_epochs"] == 5
    assert next(iter(defaults)) == "training_type"
    assert encoder_defaults() is not encoder_defaults()
