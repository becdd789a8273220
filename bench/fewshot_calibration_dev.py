"""Few-shot calibration rules measured on a dev split (never the test split): how a temperature and
hand-off threshold fitted on out-of-fold scores (the probe's 10-fold logistic regressions, the
cross-validated stage's fold models) carry over to the shipped model, whose head is refitted on every
labelled row and is sharper than the fold models.

``collect`` runs the job's own steps (``FineTuneRecipe``: suite sampling, engine split, probe,
stage, cross-validated floor) up to calibration and saves, per case (the probe always; the stage
when it ships), the shipped head's features of every labelled row, of the dev split (``--dev-rows``
unsampled rows of train.csv) and of the test split, the out-of-fold logits and each fold's logits of
its own training rows. ``evaluate`` applies the calibration rules to those files and prints coverage
(and precision of answered rows) on dev, test only for the record.

usage (from the repository root):
  nice -n 19 python bench/fewshot_calibration_dev.py collect --sets banking77 hwu64 --per-class 10 20 \
      --seeds 0 1 --threads 1 --out /tmp/calib
  python bench/fewshot_calibration_dev.py evaluate --out /tmp/calib
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


def collect(name: str, per_class: int, seed: int, dev_rows: int, base: Path, out: Path) -> dict[str, Any]:
    import torch

    from tunery_engine import probe as lp
    from tunery_engine.engine import PROBE_FOLDS

    started, cpu = time.monotonic(), time.process_time()
    recipe, dev, test = qs.dev_recipe(name, per_class, seed, dev_rows, base)
    captured: dict[str, Any] = {}
    original = recipe.calibrate

    def calibrate(refit: Any = None) -> None:
        head, device = recipe.head, torch.device("cpu")
        splits = {"dev": qs.encode_rows(recipe, dev), "test": qs.encode_rows(recipe, test)}
        labels = {k: qs.row_labels(v) for k, v in splits.items()}

        def features(model: Any) -> dict[str, torch.Tensor]:
            layer = lp.linear_head(model)
            return {
                k: lp.forward_rows(model, v, head.collate, head.forward, device, 64, recipe.pad_id, layer)
                for k, v in splits.items()
            }

        assert refit is not None
        all_x, all_y = refit
        n = len(recipe.label_names)
        cases: dict[str, Any] = {}
        if recipe.shipped == "linear_probe":
            probe_x = {"all": all_x, **features(recipe.model)}
        else:
            cv = recipe.floor_cv
            assert cv is not None
            cases["stage"] = {
                "x": {"all": all_x, **features(recipe.model)},
                "y": {"all": all_y, **labels},
                "oof": cv.stage_logits,
                "fitted": cv.stage_fitted_logits,
                "fold_of": lp.stratified_folds(cv.labels, cv.folds, int(recipe.config.seed)),
                "folds": cv.folds,
            }
            frozen = head.build_model(base, recipe.label_names, pooling=recipe.pooling)
            layer = lp.linear_head(frozen)
            data = type(recipe.train_data)(features=[*recipe.train_data.features, *recipe.val_data.features])
            probe_x = {
                "all": lp.forward_rows(frozen, data, head.collate, head.forward, device, 64, recipe.pad_id, layer),
                **features(frozen),
            }
        fitted: list[torch.Tensor] = []
        oof = lp.cross_validated_logits(probe_x["all"], all_y, n, PROBE_FOLDS, int(recipe.config.seed), fitted=fitted)
        cases["probe"] = {
            "x": probe_x,
            "y": {"all": all_y, **labels},
            "oof": oof,
            "fitted": fitted,
            "fold_of": lp.stratified_folds(all_y, PROBE_FOLDS, int(recipe.config.seed)),
            "folds": PROBE_FOLDS,
        }
        captured.update(cases)
        captured["shipped"] = recipe.shipped
        original(refit)

    recipe.calibrate = calibrate  # type: ignore[method-assign]
    recipe.train()
    for which in ("probe", "stage"):
        if which in captured:
            torch.save(captured[which], out / f"{name}-{per_class}-{seed}-{which}.pt")
    return {
        "set": name,
        "per_class": per_class,
        "seed": seed,
        "shipped": captured["shipped"],
        "seconds": time.monotonic() - started,
        "cpu_seconds": time.process_time() - cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["collect", "evaluate"])
    parser.add_argument("--sets", nargs="+", default=["banking77", "hwu64"])
    parser.add_argument("--per-class", nargs="+", type=int, default=[10, 20])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--dev-rows", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pattern", default="*.pt", help="evaluate: which collected cases")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "collect":
        base = qs.packaged_base(args.threads)
        for name in args.sets:
            for per_class in args.per_class:
                for seed in args.seeds:
                    print(json.dumps(collect(name, per_class, seed, args.dev_rows, base, args.out)), flush=True)
        return 0
    import calibration_rules

    calibration_rules.report(sorted(args.out.glob(args.pattern)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
