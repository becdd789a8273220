"""Few-shot levers measured on a dev split (never the test split; test printed for the record).

``probe``: the frozen probe with each label's name as one more training row ("card_arrival" ->
"card arrival", 0 / 1 / 3 copies), on L2-normalised features (C 1-100), and at C 0.5 / 2.
``stage``: the contrastive stage's encoder tuned on the training split (as shipped) or on every
labelled row (training + validation), heads refitted on every row as the engine does, on raw or
L2-normalised features, and the average of the probe's and the stage's probabilities.
``sweep``: the stage's constants (learning rate, temperature, epochs, batch and rows per class in a
batch), each from the base model on the training split, head on every labelled row.

The job's own steps build the candidates (``FineTuneRecipe.setup``: the suite's sampling, the
engine's validation split, the probe, the stage). The dev split is ``--dev-rows`` rows of train.csv
that were not sampled.

usage (from the repository root; one JSON line per case on stdout):
  python bench/fewshot_levers_dev.py probe --sets banking77 hwu64 --per-class 10 20 --seeds 0 1
  python bench/fewshot_levers_dev.py stage --sets banking77 --per-class 10 20 --seeds 1 2 3
  python bench/fewshot_levers_dev.py sweep --sets banking77 --per-class 10 --seeds 1 2
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_suite as qs

#: the stage's constants tried by ``sweep`` ("now" is contrastive.py's)
SWEEP = {
    "now": {"lr": 1e-4, "tau": 0.05, "epochs": 2, "per_class": 4, "batch": 64},
    "lr2e-4": {"lr": 2e-4, "tau": 0.05, "epochs": 2, "per_class": 4, "batch": 64},
    "lr5e-5_ep3": {"lr": 5e-5, "tau": 0.05, "epochs": 3, "per_class": 4, "batch": 64},
    "tau0.1": {"lr": 1e-4, "tau": 0.1, "epochs": 2, "per_class": 4, "batch": 64},
    "per_class2": {"lr": 1e-4, "tau": 0.05, "epochs": 2, "per_class": 2, "batch": 64},
    "batch128": {"lr": 1e-4, "tau": 0.05, "epochs": 2, "per_class": 4, "batch": 128},
    "ep3": {"lr": 1e-4, "tau": 0.05, "epochs": 3, "per_class": 4, "batch": 64},
}


def humanise(label: str) -> str:
    """A label as words: "card_arrival" -> "card arrival", "getBalance" -> "get balance"."""
    spaced = re.sub(r"[_\-./:]+", " ", re.sub(r"([a-z])([A-Z])", r"\1 \2", label))
    return " ".join(spaced.lower().split())


class Case:
    """One set, size and seed: the recipe's setup, the encoded splits and their labels."""

    def __init__(self, name: str, per_class: int, seed: int, dev_rows: int, base: Path, **config: Any) -> None:
        import torch

        self.recipe, dev, test = qs.dev_recipe(name, per_class, seed, dev_rows, base, **config)
        self.base, self.seed, self.names = base, seed, self.recipe.label_names
        self.splits = {"train": self.recipe.train_data, "val": self.recipe.val_data}
        self.splits |= {"dev": self.encode(dev), "test": self.encode(test)}
        self.labels = {k: qs.row_labels(v) for k, v in self.splits.items()}
        self.every = torch.cat([self.labels["train"], self.labels["val"]])
        self.out: dict[str, Any] = {"set": name, "per_class": per_class, "seed": seed}

    def encode(self, rows: list[dict[str, str]]) -> Any:
        return qs.encode_rows(self.recipe, rows)

    def model(self) -> Any:
        return self.recipe.head.build_model(self.base, self.names, pooling=self.recipe.pooling)

    def features(self, model: Any, splits: dict[str, Any] | None = None) -> dict[str, Any]:
        import torch

        from tunery_engine import probe as lp

        r, layer = self.recipe, lp.linear_head(model)
        return {
            k: lp.forward_rows(model, v, r.head.collate, r.head.forward, torch.device("cpu"), 64, r.pad_id, layer)
            for k, v in (splits or self.splits).items()
        }

    def refit(self, feats: dict[str, Any], c: float = 1.0) -> tuple[Any, Any]:
        import torch

        from tunery_engine import probe as lp

        return lp.fit_logistic_regression(torch.cat([feats["train"], feats["val"]]), self.every, len(self.names), c=c)

    def accuracy(self, feats: dict[str, Any], weight: Any, bias: Any, splits: tuple[str, ...] = ("dev", "test")) -> Any:
        return {
            s: round(float(((feats[s] @ weight.T + bias).argmax(-1) == self.labels[s]).double().mean()), 4)
            for s in splits
        }


def probe_levers(case: Case) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from tunery_engine import probe as lp

    feats = case.features(case.model())
    names = case.encode([{"text": humanise(n), "label": n} for n in case.names])
    named = case.features(case.model(), {"names": names})["names"]
    name_labels = torch.arange(len(case.names))
    for copies in (0, 1, 3):
        x = torch.cat([feats["train"], feats["val"], *[named] * copies])
        y = torch.cat([case.every, *[name_labels] * copies])
        w, b = lp.fit_logistic_regression(x, y, len(case.names))
        case.out[f"label_names_x{copies}"] = case.accuracy(feats, w, b)
    normalised = {k: F.normalize(v, dim=-1) for k, v in feats.items()}
    for c in (1.0, 10.0, 30.0, 100.0):
        case.out[f"normalised_C{c:g}"] = case.accuracy(normalised, *case.refit(normalised, c))
    for c in (0.5, 2.0):
        case.out[f"C{c:g}"] = case.accuracy(feats, *case.refit(feats, c))
    return case.out


def stage_levers(case: Case) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from tunery_engine import contrastive as ct
    from tunery_engine import probe as lp
    from tunery_engine.heads import Encoded

    r = case.recipe
    every_row = case.model()
    started = time.monotonic()
    ct.tune_embeddings(
        every_row,
        lp.linear_head(every_row),
        Encoded(features=[*r.train_data.features, *r.val_data.features]),
        r.head.collate,
        r.head.forward,
        device=torch.device("cpu"),
        pad_id=r.pad_id,
        epochs=int(r.config.contrastive_epochs),
        learning_rate=ct.LEARNING_RATE,
        temperature=ct.TEMPERATURE,
        batch_size=ct.BATCH_SIZE,
        seed=case.seed,
        weight_decay=float(r.config.weight_decay),
    )
    case.out["stage_on_every_row_seconds"] = round(time.monotonic() - started, 1)
    probabilities = {}
    for which, model in (("probe", case.model()), ("stage", r.model), ("stage_on_every_row", every_row)):
        feats = case.features(model)
        weight, bias = case.refit(feats)
        case.out[which] = case.accuracy(feats, weight, bias)
        probabilities[which] = {s: (feats[s] @ weight.T + bias).softmax(-1) for s in ("dev", "test")}
        if which != "probe":
            normalised = {k: F.normalize(v, dim=-1) for k, v in feats.items()}
            case.out[f"{which}_normalised_C30"] = case.accuracy(normalised, *case.refit(normalised, 30.0))
    case.out["probe_plus_stage_average"] = {
        s: round(
            float(
                ((probabilities["probe"][s] + probabilities["stage"][s]).argmax(-1) == case.labels[s]).double().mean()
            ),
            4,
        )
        for s in ("dev", "test")
    }
    return case.out


def sweep(case: Case) -> dict[str, Any]:
    import torch

    from tunery_engine import contrastive as ct
    from tunery_engine import probe as lp

    r = case.recipe
    default_per_class = ct.class_balanced_batches.__defaults__
    for name, c in SWEEP.items():
        model = case.model()
        started = time.monotonic()
        ct.class_balanced_batches.__defaults__ = (c["per_class"],)  # rows of a class in a batch
        try:
            result = ct.tune_embeddings(
                model,
                lp.linear_head(model),
                r.train_data,
                r.head.collate,
                r.head.forward,
                device=torch.device("cpu"),
                pad_id=r.pad_id,
                epochs=c["epochs"],
                learning_rate=c["lr"],
                temperature=c["tau"],
                batch_size=c["batch"],
                seed=case.seed,
                weight_decay=float(r.config.weight_decay),
            )
        finally:
            ct.class_balanced_batches.__defaults__ = default_per_class
        feats = case.features(model, {k: case.splits[k] for k in ("train", "val", "dev")})
        case.out[name] = {
            **case.accuracy(feats, *case.refit(feats), splits=("dev",)),
            "seconds": round(time.monotonic() - started, 1),
            "steps": result.steps,
        }
    return case.out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["probe", "stage", "sweep"])
    parser.add_argument("--sets", nargs="+", default=["banking77", "hwu64"])
    parser.add_argument("--per-class", nargs="+", type=int, default=[10])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--dev-rows", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    base = qs.packaged_base(args.threads)
    run = {"probe": probe_levers, "stage": stage_levers, "sweep": sweep}[args.what]
    # the probe and sweep cases need no stage of the recipe's own
    config = {} if args.what == "stage" else {"contrastive_epochs": 0}
    for per_class in args.per_class:
        for name in args.sets:
            for seed in args.seeds:
                print(json.dumps(run(Case(name, per_class, seed, args.dev_rows, base, **config))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
