"""Calibration rules for the few-shot shipped head, applied to the files that
bench/fewshot_calibration_dev.py collects (dev coverage decides; test is printed for the record)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tunery_engine import probe as lp

Rule = Callable[[dict[str, Any], float], tuple[float, torch.Tensor]]


def _solve(f: Callable[[float], float], target: float, low: float = 0.05, high: float = 20.0) -> float:
    """Scale s in [low, high] (log bisection) with f(s) = target, f decreasing in s."""
    lo, hi = math.log(low), math.log(high)
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(math.exp(mid)) > target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def mean_confidence(logits: torch.Tensor, temperature: float) -> float:
    return float((logits.double() / temperature).softmax(-1).max(-1).values.mean())


def spread(logits: torch.Tensor) -> float:
    return float(logits.double().std(dim=-1).mean())


def margin(logits: torch.Tensor) -> float:
    top = logits.double().topk(2, dim=-1).values
    return float((top[:, 0] - top[:, 1]).mean())


def prepare(case: dict[str, Any], c: float = lp.PROBE_C) -> dict[str, Any]:
    x, y = case["x"], case["y"]
    weight, bias = lp.fit_logistic_regression(x["all"], y["all"], int(case["oof"].shape[1]), c=c)

    def logits(features: torch.Tensor) -> torch.Tensor:
        return features @ weight.T + (bias if bias is not None else 0.0)

    return {**case, "z": {k: logits(v) for k, v in x.items()}}


def ratio_rule(statistic: Callable[[torch.Tensor], float]) -> Callable[[dict[str, Any], float], float]:
    def ratio(case: dict[str, Any], temperature: float) -> float:
        fold = sum(statistic(f) for f in case["fitted"]) / len(case["fitted"])
        return statistic(case["z"]["all"]) / fold

    return ratio


def confidence_ratio(case: dict[str, Any], temperature: float) -> float:
    """The scale of T at which the shipped head's mean in-sample confidence equals the folds'."""
    fold = sum(mean_confidence(f, temperature) for f in case["fitted"]) / len(case["fitted"])
    return _solve(lambda s: mean_confidence(case["z"]["all"], temperature * s), fold)


def nll_ratio(case: dict[str, Any], temperature: float) -> float:
    """The scale of T at which the shipped head's in-sample NLL equals the folds' (NLL grows with
    sharpness when the rows are mostly right: match by -NLL, decreasing in s)."""
    y_all, fold_of = case["y"]["all"], case["fold_of"]
    fold = 0.0
    for k, f in enumerate(case["fitted"]):
        fold += float(torch.nn.functional.cross_entropy(f.double() / temperature, y_all[fold_of != k]))
    fold /= len(case["fitted"])
    z = case["z"]["all"].double()
    return _solve(lambda s: -float(torch.nn.functional.cross_entropy(z / (temperature * s), y_all)), -fold)


def slope_ratio(case: dict[str, Any], temperature: float) -> float:
    """Least-squares slope of the shipped head's centred logits on each fold's, same rows."""
    fold_of, z = case["fold_of"], case["z"]["all"].double()
    num = den = 0.0
    for k, f in enumerate(case["fitted"]):
        a = z[fold_of != k]
        b = f.double()
        a = a - a.mean(-1, keepdim=True)
        b = b - b.mean(-1, keepdim=True)
        num += float((a * b).sum())
        den += float((b * b).sum())
    return num / den


RATIOS: dict[str, Callable[[dict[str, Any], float], float] | None] = {
    "oof (now)": None,
    "a: spread ratio": ratio_rule(spread),
    "a: margin ratio": ratio_rule(margin),
    "a: slope ratio": slope_ratio,
    "a: confidence match": confidence_ratio,
    "a: nll match": nll_ratio,
}


def quantile_threshold(case: dict[str, Any], temperature: float, threshold: float) -> float:
    """c: the shipped head's threshold with the in-sample coverage the folds have at ``threshold``."""
    covered = [
        float(((f.double() / temperature).softmax(-1).max(-1).values >= threshold).double().mean())
        for f in case["fitted"]
    ]
    share = sum(covered) / len(covered)
    conf = (case["z"]["all"].double() / temperature).softmax(-1).max(-1).values.sort(descending=True).values
    k = min(len(conf) - 1, max(0, math.ceil(share * len(conf)) - 1))
    below = float(conf[k + 1]) if k + 1 < len(conf) else 0.0
    return (float(conf[k]) + below) / 2


def answered(z: torch.Tensor, y: torch.Tensor, temperature: float, threshold: float) -> tuple[float, float]:
    conf, pred = (z.double() / temperature).softmax(-1).max(-1)
    keep = conf >= threshold
    cov = float(keep.double().mean())
    prec = float((pred[keep] == y[keep]).double().mean()) if bool(keep.any()) else float("nan")
    return cov, prec


def evaluate(case: dict[str, Any], rule: str, coverage: float | None, precision: float | None) -> dict[str, Any]:
    y = case["y"]["all"]
    t0 = lp.fit_temperature(case["oof"], y) or 1.0
    handoff = lp.choose_handoff((case["oof"].double() / t0).softmax(-1), y, coverage, precision)
    assert handoff is not None
    temperature, threshold = t0, handoff.threshold
    if rule in RATIOS and RATIOS[rule] is not None:
        temperature = t0 * RATIOS[rule](case, t0)  # type: ignore[misc]
    elif rule == "c: in-sample quantile":
        threshold = quantile_threshold(case, t0, handoff.threshold)
    out: dict[str, Any] = {"T": temperature}
    for split in ("dev", "test"):
        out[split] = answered(case["z"][split], case["y"][split], temperature, threshold)
    return out


TARGETS = [("coverage", 0.9), ("coverage", 0.8), ("precision", 0.95), ("precision", 0.9)]
RULES = [*RATIOS, "c: in-sample quantile", "b: C x (k-1)/k"]


def report(paths: list[Path]) -> None:
    cases = {}
    for path in paths:
        raw = torch.load(path, weights_only=True)  # tensors, lists and numbers only: no pickle
        cases[path.stem] = {"base": prepare(raw), "b": prepare(raw, lp.PROBE_C * (raw["folds"] - 1) / raw["folds"])}
    for kind, value in TARGETS:
        print(f"\n## target {kind} {value}: dev (test) {kind}")
        header = "| rule | " + " | ".join(cases) + " | dev mean err | dev max abs | dev within 2 | test within 2 |"
        print(header)
        print("|---" * (len(cases) + 5) + "|")
        for rule in RULES:
            cells, dev_err, test_err = [], [], []
            for _, pair in cases.items():
                case = pair["b"] if rule.startswith("b:") else pair["base"]
                rule_name = "oof (now)" if rule.startswith("b:") else rule
                r = evaluate(
                    case, rule_name, value if kind == "coverage" else None, value if kind == "precision" else None
                )
                index = 0 if kind == "coverage" else 1
                d, t = r["dev"][index], r["test"][index]
                dev_err.append(d - value)
                test_err.append(t - value)
                extra = f" c{r['dev'][0]:.2f}" if kind == "precision" else ""
                cells.append(f"{d:.3f} ({t:.3f}){extra}")
            within = sum(abs(e) <= 0.02 for e in dev_err)
            within_t = sum(abs(e) <= 0.02 for e in test_err)
            print(
                f"| {rule} | " + " | ".join(cells) + f" | {sum(dev_err) / len(dev_err):+.4f} | "
                f"{max(abs(e) for e in dev_err):.4f} | {within}/{len(dev_err)} | {within_t}/{len(test_err)} |"
            )
    print("\n## accuracy of the shipped head on dev (test): C=1 vs C x (k-1)/k, and the ratios at target 0.9")
    for key, pair in cases.items():
        accs = []
        for v in ("base", "b"):
            c = pair[v]
            accs.append(
                f"{float((c['z']['dev'].argmax(-1) == c['y']['dev']).double().mean()):.4f}"
                f" ({float((c['z']['test'].argmax(-1) == c['y']['test']).double().mean()):.4f})"
            )
        c = pair["base"]
        t0 = lp.fit_temperature(c["oof"], c["y"]["all"]) or 1.0
        ratios = ", ".join(f"{name.split(': ')[1]} {fn(c, t0):.3f}" for name, fn in RATIOS.items() if fn is not None)
        print(f"- {key}: {accs[0]} -> {accs[1]}; T0 {t0:.3f}; {ratios}")
