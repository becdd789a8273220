"""Choosing between the contrastive stage and the probe on more than the validation split: K-fold
cross-validated accuracy of both over every sampled row (the stage retrained from the base on each
fold's other rows, its logistic-regression head fitted on them; the probe's out-of-fold logistic
regressions on the frozen features), against the dev-split winner (bench/fewshot_dev.py).

usage (from the repository root; one JSON line per set and seed on stdout):
  nice -n 19 python bench/fewshot_select_dev.py --sets banking77 hwu64 --per-class 10 --seeds 0 1 --folds 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_suite as qs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["banking77", "hwu64"])
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    base = qs.packaged_base(args.threads)
    for name in args.sets:
        for seed in args.seeds:
            print(json.dumps(run(name, args.per_class, seed, args.folds, base)), flush=True)
    return 0


def run(name: str, per_class: int, seed: int, folds: int, base: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    from tunery_customer_service import pack

    from tunery_engine import TrainConfig
    from tunery_engine import contrastive as ct
    from tunery_engine import probe as lp
    from tunery_engine.auto import FEW_SHOT_CONTRASTIVE_EPOCHS
    from tunery_engine.heads import head_for
    from tunery_engine.modeling import bernoulli_is_vectorised, load_tokenizer, use_cpu_dropout

    task = pack.task("intent")
    rows = qs.sample(qs.read_rows(qs.DATA / name / "train.csv"), per_class, seed)
    head = head_for(task)
    tokenizer = load_tokenizer(base)
    names = tuple(sorted({r["label"] for r in rows}))
    config = TrainConfig(**{**task.default_hyperparameters, "seed": seed, "max_length": 64})
    encoded = head.encode(rows, tokenizer, names, 64, config)
    labels = torch.as_tensor(np.asarray([int(f["labels"]) for f in encoded.features]))
    pad, cpu = int(tokenizer.pad_token_id), torch.device("cpu")
    fold_of = lp.stratified_folds(labels, folds, seed)

    def subset(mask: torch.Tensor) -> Any:
        idx = torch.nonzero(mask).flatten().tolist()
        return type(encoded)(features=[encoded.features[i] for i in idx])

    started, cpu_started = time.monotonic(), time.process_time()
    frozen = head.build_model(base, names, pooling="mean")
    layer = lp.linear_head(frozen)
    feats = lp.forward_rows(frozen, encoded, head.collate, head.forward, cpu, 64, pad, layer)
    probe_logits = lp.cross_validated_logits(feats, labels, len(names), folds, seed)
    probe_right = (probe_logits.argmax(-1) == labels).tolist()
    stage_right = [False] * len(labels)
    for fold in range(folds):
        held = fold_of == fold
        torch.manual_seed(seed)
        model = head.build_model(base, names, pooling="mean")
        if not bernoulli_is_vectorised():
            use_cpu_dropout(model)
        fold_layer = lp.linear_head(model)
        assert fold_layer is not None
        ct.tune_embeddings(
            model,
            fold_layer,
            subset(~held),
            head.collate,
            head.forward,
            device=cpu,
            pad_id=pad,
            epochs=FEW_SHOT_CONTRASTIVE_EPOCHS,
            learning_rate=ct.LEARNING_RATE,
            temperature=ct.TEMPERATURE,
            batch_size=ct.BATCH_SIZE,
            seed=seed,
            weight_decay=float(config.weight_decay),
        )
        tuned = lp.forward_rows(model, encoded, head.collate, head.forward, cpu, 64, pad, fold_layer)
        w, b = lp.fit_logistic_regression(tuned[~held], labels[~held], len(names))
        predicted = (tuned[held] @ w.T + (b if b is not None else 0.0)).argmax(-1)
        for i, ok in zip(torch.nonzero(held).flatten().tolist(), (predicted == labels[held]).tolist(), strict=True):
            stage_right[i] = ok
    both = sum(p and s for p, s in zip(probe_right, stage_right, strict=True))
    return {
        "set": name,
        "seed": seed,
        "rows": len(labels),
        "folds": folds,
        "cv_probe_acc": float(np.mean(probe_right)),
        "cv_stage_acc": float(np.mean(stage_right)),
        "only_stage_right": sum(stage_right) - both,
        "only_probe_right": sum(probe_right) - both,
        "seconds": time.monotonic() - started,
        "cpu_seconds": time.process_time() - cpu_started,
    }


if __name__ == "__main__":
    raise SystemExit(main())
