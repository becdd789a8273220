"""bench/gpu_suite.py's CPU fallback: tiny shapes, every section's figures land in one JSON file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "bench" / "gpu_suite.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_fallback_writes_lora_and_serving_figures(tmp_path):
    out = tmp_path / "suite.json"
    assert load_suite().main(["--smoke", "--sections", "lora", "serving", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["smoke"] is True
    lora = report["sections"]["lora"]
    assert "error" not in lora, lora
    assert lora["eager"]["tokens_per_s"] > 0
    assert lora["sequence_length"] == 64
    serving = report["sections"]["serving"]
    assert "error" not in serving, serving
    assert serving["c8"]["requests"] == 32
    assert serving["c8"]["predictions_per_s"] > 0


def test_the_full_shapes_are_the_named_models():
    suite = load_suite()
    from transformers import Qwen2Config

    config = Qwen2Config(**suite.QWEN2_5_0_5B)
    # Qwen2.5-0.5B: 494M parameters with tied embeddings
    embed = config.vocab_size * config.hidden_size
    per_layer = (
        config.hidden_size * (config.hidden_size + 2 * config.num_key_value_heads * 64 + config.hidden_size)
        + 3 * config.hidden_size * config.intermediate_size
    )
    assert 480e6 < embed + config.num_hidden_layers * per_layer < 510e6


@pytest.mark.slow
def test_cpu_fallback_runs_the_engine_against_the_tutorial_trainer(tmp_path):
    suite = load_suite()
    if not (suite.SHARED / "data" / "customer_service" / "banking77" / "train.csv").exists():
        pytest.skip("needs ../shared/data (BANKING77)")
    out = tmp_path / "suite.json"
    assert suite.main(["--smoke", "--sections", "classification", "--out", str(out)]) == 0
    section = json.loads(out.read_text())["sections"]["classification"]
    for shape in ("minilm", "bert_base"):
        assert "error" not in section[shape], section[shape]
