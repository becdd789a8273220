"""Out-of-scope detection on simulated OOS: a quarter of the intents of BANKING77 and HWU64
(seeded) is held out as "out of scope". Their training rows are either dropped (variant ``drop``:
the model knows only the in-scope intents, and only a low calibrated confidence flags a request) or
relabelled ``oos`` (variant ``relabel``: CLINC150-style data, the customer_service pack's
``out_of_scope_label`` "auto" takes the label); their test rows are the OOS test set, the other
intents' test rows the in-scope test set.

Each run takes the path a job takes (the pack's default hyperparameters, ``tunery_engine.train``,
the artifact, the serving runtime and the pack's post-processing, with a reply template for every
in-scope intent so that only ``low_confidence`` and ``out_of_scope`` hand off) and reports on test:
in-scope accuracy, OOS recall and precision at the calibrated hand-off threshold (a request is
flagged when it is handed off as low confidence or out of scope), and the coverage of in-scope rows
against the job's target; beside them the job's own validation numbers.

usage (from the repository root; few-shot regimes sample per original intent, then hold out):
  nice -n 19 python bench/oos_suite.py --sets banking77 hwu64 --regimes 10 20 --variants relabel drop
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_suite import DATA, Progress, intent_job, packaged_base, read_rows, sample

OOS = "oos"
#: the share of intents held out as out of scope
HELD_OUT_SHARE = 0.25


def held_out_intents(labels: list[str], seed: int) -> set[str]:
    names = sorted(set(labels))
    return set(random.Random(f"oos-{seed}").sample(names, round(len(names) * HELD_OUT_SHARE)))


def run_one(name: str, variant: str, regime: str, seed: int, base: Path, work: Path) -> dict[str, Any]:
    from tunery_customer_service import pack

    from tunery_contract import out_of_scope as oos
    from tunery_engine import train
    from tunery_engine.artifact import read_artifact
    from tunery_serving import InferenceRuntime, PredictionInput

    task = pack.task("intent")
    full = read_rows(DATA / name / "train.csv")
    held = held_out_intents([r["label"] for r in full], seed)
    rows = sample(full, None if regime == "full" else int(regime), seed)
    if variant == "drop":
        train_rows = [r for r in rows if r["label"] not in held]
    else:
        train_rows = [{"text": r["text"], "label": OOS if r["label"] in held else r["label"]} for r in rows]
    test = read_rows(DATA / name / "test.csv")
    test_oos = [r["label"] in held for r in test]
    out = work / f"{name}-{variant}-{regime}-{seed}"
    in_scope_labels = sorted({r["label"] for r in train_rows} - {OOS})
    tenant = {**pack.config_defaults, "reply_templates": {label: f"reply for {label}" for label in in_scope_labels}}
    spec = intent_job(train_rows, out, base, seed, tenant)
    started, cpu_started = time.monotonic(), time.process_time()
    result = train(spec, [Progress()])
    seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu_started
    info = read_artifact(result.artifact_dir)
    runtime = InferenceRuntime(max_batch_size=64)
    try:
        predictions = runtime.predict("oos", result.artifact_dir, [PredictionInput(text=r["text"]) for r in test])
    finally:
        runtime.close()
    reasons: dict[str, int] = {}
    flagged_served = []
    for row, prediction in zip(test, predictions, strict=True):
        reply = task.postprocess(prediction, row, tenant) if task.postprocess else {}
        reason = str(reply.get("handoff_reason"))
        reasons[reason] = reasons.get(reason, 0) + 1
        flagged_served.append(reason in ("low_confidence", "out_of_scope"))
    names = list(info.label_names)
    index = {label: i for i, label in enumerate(names)}
    oos_index = index.get(OOS) if result.resolved_config.out_of_scope_label == OOS else None
    threshold = info.handoff_threshold if info.handoff_threshold is not None else 0.5
    y_true = [
        index.get(r["label"], -1) if not is_oos else (oos_index if oos_index is not None else -1)
        for r, is_oos in zip(test, test_oos)
    ]
    scores = oos.scores_at(
        y_true, [p.probabilities or [] for p in predictions], oos_index, threshold, oos_rows=test_oos
    )
    served_recall = sum(f for f, o in zip(flagged_served, test_oos) if o) / max(1, sum(test_oos))
    handoff = info.manifest.get("handoff") or {}
    return {
        "set": name,
        "variant": variant,
        "regime": regime,
        "seed": seed,
        "held_out_intents": len(held),
        "in_scope_intents": len(in_scope_labels),
        "train_rows": len(train_rows),
        "test_in_scope": scores.in_scope_rows,
        "test_oos": scores.oos_rows,
        "out_of_scope_label": result.resolved_config.out_of_scope_label,
        "shipped": info.manifest.get("shipped"),
        "handoff_threshold": threshold,
        "handoff_target": handoff.get("target"),
        "test": scores.to_json(),
        "test_oos_recall_served": served_recall,
        "served_reasons": reasons,
        "validation": {k: v for k, v in result.metrics.items() if not k.startswith("recall/")},
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "warnings": result.warnings,
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| set | variant | per intent | seed | intents in / out | train rows | OOS label | shipped | threshold | "
        "in-scope acc. (test) | OOS recall (test) | OOS precision (test) | in-scope coverage (test) / target | "
        "acc. answered (test) | val. OOS recall | wall s | CPU s |",
        "|---|---|---:|---:|---|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        t, v = r["test"], r["validation"]
        target = (r["handoff_target"] or {}).get("coverage")
        val_recall = v.get("oos_recall")
        lines.append(
            f"| {r['set']} | {r['variant']} | {r['regime']} | {r['seed']} | {r['in_scope_intents']} / "
            f"{r['held_out_intents']} | {r['train_rows']} | {r['out_of_scope_label']} | {r['shipped']} | "
            f"{r['handoff_threshold']:.3f} | {t['in_scope_accuracy']:.4f} | {t['oos_recall']:.4f} | "
            f"{t['oos_precision']:.4f} | {t['in_scope_coverage']:.4f} / {target} | "
            f"{t['in_scope_accuracy_answered']:.4f} | {'-' if val_recall is None else f'{val_recall:.4f}'} | "
            f"{r['seconds']:.0f} | {r['cpu_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["banking77", "hwu64"], choices=["banking77", "hwu64"])
    parser.add_argument("--regimes", nargs="+", default=["10", "20"], choices=["10", "20", "full"])
    parser.add_argument("--variants", nargs="+", default=["relabel", "drop"], choices=["relabel", "drop"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    args.model_dir = packaged_base(args.threads, args.model_dir)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="tunery-oos-"))
    results = []
    for variant in args.variants:
        for name in args.sets:
            for regime in args.regimes:
                for seed in args.seeds:
                    result = run_one(name, variant, regime, seed, args.model_dir, work)
                    results.append(result)
                    print(
                        json.dumps({k: result[k] for k in ("set", "variant", "regime", "seed", "test")}),
                        file=sys.stderr,
                    )
                    if args.json:
                        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
