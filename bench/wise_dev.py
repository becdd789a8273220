"""Weight-space interpolation (WiSE-FT) between the base encoder and the contrastive stage's tuned
encoder, measured on a dev split (never the test split): for each ``a`` the model
``(1 - a) * base + a * tuned`` with a logistic-regression head fitted on its features (training only,
and training + validation as the engine ships it). ``a = 0`` is the linear probe, ``a = 1`` the stage.

The job's own steps build the stage (``FineTuneRecipe.setup``: the suite's sampling, the engine's
validation split, the probe, the stage). The dev split is ``--dev-rows`` rows of train.csv that were
not sampled; test accuracy is printed for the record only.

No cross-validated choice of ``a`` is run here: the table's last column ("best a vs stage", the dev
gain of the best ``a`` of the sweep in each case) bounds what any choice of ``a`` could gain.

usage (from the repository root; one JSON line per set and seed on stdout):
  nice -n 19 python bench/wise_dev.py --sets banking77 hwu64 --per-class 10 20 --seeds 0 1
  nice -n 19 python bench/wise_dev.py --sets hwu64 --per-class 20 --seeds 0 --alphas 0 0.7 0.85 1 --no-test
  python bench/wise_dev.py --table runs.jsonl        # the dev table (markdown) of such JSON lines
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

ALPHAS = (0.0, 0.5, 0.7, 0.85, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["banking77", "hwu64"])
    parser.add_argument("--per-class", nargs="+", type=int, default=[10])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--alphas", nargs="+", type=float, default=list(ALPHAS))
    parser.add_argument("--dev-rows", type=int, default=1000)
    parser.add_argument("--no-test", action="store_true", help="skip the test split (saves forward passes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", type=Path, help="print the markdown dev table of these JSON lines and exit")
    args = parser.parse_args(argv)
    if args.table is not None:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return 0

    base = qs.packaged_base(args.threads)
    for per_class in args.per_class:
        for name in args.sets:
            for seed in args.seeds:
                result = run(name, per_class, seed, args.dev_rows, base, args.alphas, not args.no_test)
                print(json.dumps(result), flush=True)
    return 0


def encoder_state(model: Any, head_layer: Any) -> dict[str, Any]:
    """A detached copy of ``model``'s floating-point parameters, the head's excepted."""
    head = {id(p) for p in head_layer.parameters()}
    return {
        name: p.detach().clone() for name, p in model.named_parameters() if id(p) not in head and p.is_floating_point()
    }


def interpolate_into(model: Any, base: dict[str, Any], tuned: dict[str, Any], alpha: float) -> None:
    """WiSE-FT: write ``(1 - alpha) * base + alpha * tuned`` into ``model``'s parameters named in both
    (the encoder; the head is refitted on the result's features)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in base and name in tuned:
                param.copy_(torch.lerp(base[name].float(), tuned[name].float(), alpha).to(param.dtype))


def run(
    name: str, per_class: int, seed: int, dev_rows: int, base: Path, alphas: list[float], with_test: bool
) -> dict[str, Any]:
    import torch

    from tunery_engine import probe as lp

    started, cpu = time.monotonic(), time.process_time()
    recipe, dev, test = qs.dev_recipe(name, per_class, seed, dev_rows, base)
    setup_seconds, setup_cpu = time.monotonic() - started, time.process_time() - cpu
    head, device = recipe.head, torch.device("cpu")
    names = recipe.label_names
    n = len(names)
    splits = {"train": recipe.train_data, "val": recipe.val_data, "dev": qs.encode_rows(recipe, dev)}
    if with_test:
        splits["test"] = qs.encode_rows(recipe, test)
    labels = {k: qs.row_labels(v) for k, v in splits.items()}
    work = head.build_model(base, names, pooling=recipe.pooling)
    layer = lp.linear_head(work)
    tuned_layer = lp.linear_head(recipe.model)
    assert layer is not None
    assert tuned_layer is not None
    base_state = encoder_state(work, layer)
    tuned_state = encoder_state(recipe.model, tuned_layer)
    assert base_state.keys() == tuned_state.keys(), "base and tuned parameter names differ"
    del recipe.model

    def acc(z: torch.Tensor, y: torch.Tensor) -> float:
        return float((z.argmax(-1) == y).double().mean())

    out: dict[str, Any] = {
        "set": name,
        "per_class": per_class,
        "seed": seed,
        "rows": {k: len(v) for k, v in labels.items()},
        "setup_seconds": round(setup_seconds, 1),
        "setup_cpu_seconds": round(setup_cpu, 1),
        "alphas": {},
    }
    forward_started, forward_cpu = time.monotonic(), time.process_time()
    for alpha in alphas:
        interpolate_into(work, base_state, tuned_state, alpha)
        feats = {
            k: lp.forward_rows(work, v, head.collate, head.forward, device, 64, recipe.pad_id, layer)
            for k, v in splits.items()
        }
        w, b = lp.fit_logistic_regression(feats["train"], labels["train"], n)
        both_x = torch.cat([feats["train"], feats["val"]])
        both_y = torch.cat([labels["train"], labels["val"]])
        wa, ba = lp.fit_logistic_regression(both_x, both_y, n)
        r: dict[str, float] = {"val_acc": acc(feats["val"] @ w.T + b, labels["val"])}
        for split in splits.keys() - {"train", "val"}:
            r[f"{split}_acc_train_head"] = acc(feats[split] @ w.T + b, labels[split])
            r[f"{split}_acc_refit_head"] = acc(feats[split] @ wa.T + ba, labels[split])
        out["alphas"][str(alpha)] = r
    out["sweep_seconds"] = round(time.monotonic() - forward_started, 1)
    out["sweep_cpu_seconds"] = round(time.process_time() - forward_cpu, 1)
    return out


def table(results: list[dict[str, Any]]) -> str:
    """Dev accuracy (head refitted on training + validation, as shipped) per ``a``, and each
    interpolation's gain over the stage (``a = 1``) in points."""
    alphas = sorted({a for r in results for a in r["alphas"]}, key=float)
    mixed = [a for a in alphas if float(a) not in (0.0, 1.0)]
    head = [
        "set",
        "per intent",
        "seed",
        *(f"a={float(a):g}" for a in alphas),
        *(f"a={float(a):g} vs stage" for a in mixed),
        "best a vs stage",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    gains: dict[str, list[float]] = {a: [] for a in mixed}
    best: list[float] = []  # the most any choice of a (cross-validated or not) could gain here
    for r in sorted(results, key=lambda r: (r["set"], r["per_class"], r["seed"])):
        dev = {a: r["alphas"][a]["dev_acc_refit_head"] for a in alphas if a in r["alphas"]}
        stage = dev.get("1.0")
        cells = [r["set"], str(r["per_class"]), str(r["seed"]), *(f"{dev[a]:.3f}" if a in dev else "" for a in alphas)]
        for a in mixed:
            if a in dev and stage is not None:
                gains[a].append(100 * (dev[a] - stage))
                cells.append(f"{gains[a][-1]:+.1f}")
            else:
                cells.append("")
        if stage is not None:
            best.append(100 * (max(dev.values()) - stage))
            cells.append(f"{best[-1]:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    summary = ["mean", "", "", *([""] * len(alphas))]
    summary += [f"{sum(g) / len(g):+.2f} (worst {min(g):+.1f})" if g else "" for g in gains.values()]
    summary.append(f"{sum(best) / len(best):+.2f}" if best else "")
    lines.append("| " + " | ".join(summary) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
