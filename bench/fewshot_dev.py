"""Few-shot decisions measured on a dev split (never the test split): the probe and the contrastive
stage's model, each with its head fitted on the training split only (what the engine shipped before)
or refitted on training + validation, and how the calibration rules' hand-off coverage holds.

The job's own steps build the candidates (``FineTuneRecipe.setup``: the suite's sampling, the
engine's validation split, the probe, the stage); the heads are then fitted here on the frozen and
on the tuned features. The dev split is ``--dev-rows`` rows of train.csv that were not sampled;
test accuracy is printed for the record only.

usage (from the repository root; one JSON line per set and seed on stdout):
  nice -n 19 python bench/fewshot_dev.py --sets banking77 hwu64 --per-class 10 --seeds 0 1
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
    parser.add_argument("--dev-rows", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    base = qs.packaged_base(args.threads)
    for name in args.sets:
        for seed in args.seeds:
            print(json.dumps(run(name, args.per_class, seed, args.dev_rows, base)), flush=True)
    return 0


def run(name: str, per_class: int, seed: int, dev_rows: int, base: Path) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from tunery_engine import probe as lp
    from tunery_engine.engine import PROBE_FOLDS

    started, cpu = time.monotonic(), time.process_time()
    recipe, dev, test = qs.dev_recipe(name, per_class, seed, dev_rows, base)
    setup_seconds, setup_cpu = time.monotonic() - started, time.process_time() - cpu
    head, cpu_device = recipe.head, torch.device("cpu")
    names = recipe.label_names
    splits = {
        "train": recipe.train_data,
        "val": recipe.val_data,
        "dev": qs.encode_rows(recipe, dev),
        "test": qs.encode_rows(recipe, test),
    }
    labels = {k: qs.row_labels(v) for k, v in splits.items()}
    frozen = head.build_model(base, names, pooling=recipe.pooling)
    models = {"probe": frozen, "stage": recipe.model}
    out: dict[str, Any] = {
        "set": name,
        "per_class": per_class,
        "seed": seed,
        "rows": {k: len(v) for k, v in labels.items()},
        "setup_seconds": setup_seconds,
        "setup_cpu_seconds": setup_cpu,
    }
    n = len(names)
    for which, model in models.items():
        layer = lp.linear_head(model)
        feats = {
            k: lp.forward_rows(model, v, head.collate, head.forward, cpu_device, 64, recipe.pad_id, layer)
            for k, v in splits.items()
        }
        w, b = lp.fit_logistic_regression(feats["train"], labels["train"], n)
        both_x = torch.cat([feats["train"], feats["val"]])
        both_y = torch.cat([labels["train"], labels["val"]])
        wa, ba = lp.fit_logistic_regression(both_x, both_y, n)

        def logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            return x @ weight.T + (bias if bias is not None else 0.0)

        def acc(z: torch.Tensor, y: torch.Tensor) -> float:
            return float((z.argmax(-1) == y).double().mean())

        val_z = logits(feats["val"], w, b)
        t_val = lp.fit_temperature(val_z, labels["val"]) or 1.0
        r: dict[str, Any] = {
            "val_acc": acc(val_z, labels["val"]),
            "val_nll": float(F.cross_entropy(val_z, labels["val"])),
            "val_nll_at_T": float(F.cross_entropy(val_z / t_val, labels["val"])),
            "val_correct": (val_z.argmax(-1) == labels["val"]).tolist(),
            "val_true_logprob_at_T": F.log_softmax(val_z / t_val, -1)
            .gather(1, labels["val"][:, None])
            .flatten()
            .tolist(),
        }
        for split in ("dev", "test"):
            r[f"{split}_acc_train_head"] = acc(logits(feats[split], w, b), labels[split])
            r[f"{split}_acc_refit_head"] = acc(logits(feats[split], wa, ba), labels[split])
        # calibration rules, 0.9 coverage target
        rules: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]] = {
            "val_only__train_head": (val_z, labels["val"], w, b),
            "val_only__refit_head": (val_z, labels["val"], wa, ba),
        }
        if which == "probe":
            oof_train = lp.cross_validated_logits(feats["train"], labels["train"], n, PROBE_FOLDS, seed)
            rules["val+oof_train__train_head"] = (
                torch.cat([val_z, oof_train]),
                torch.cat([labels["val"], labels["train"]]),
                w,
                b,
            )
            oof_all = lp.cross_validated_logits(both_x, both_y, n, PROBE_FOLDS, seed)
            rules["oof_all__refit_head"] = (oof_all, both_y, wa, ba)
        for rule, (z, y, weight, bias) in rules.items():
            t = lp.fit_temperature(z, y) or 1.0
            handoff = lp.choose_handoff((z / t).softmax(-1), y, 0.9, None)
            assert handoff is not None
            cov = {}
            for split in ("dev", "test"):
                conf = (logits(feats[split], weight, bias) / t).softmax(-1).max(-1).values
                cov[split] = float((conf >= handoff.threshold).double().mean())
            r[f"coverage__{rule}"] = {"T": t, "threshold": handoff.threshold, **cov}
        out[which] = r
    return out


if __name__ == "__main__":
    raise SystemExit(main())
