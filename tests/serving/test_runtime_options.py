"""The runtime's speed options on tiny real models: parallel batch runners and int8 serving
(dynamic quantization at load). Both must leave the answers what they were."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
from transformers import BertForSequenceClassification

from tests.serving import builders
from tunery_contract import TaskKind
from tunery_serving import ArtifactError, InferenceRuntime, PredictionInput
from tunery_serving.models import forward_by_length, length_groups, model_inputs
from tunery_serving.runtime import default_batch_runners, usable_cpus

LABELS = ("billing", "shipping", "refund")
TAGS = ("O", "B-ORG", "I-ORG", "B-PER", "I-PER")
TEXTS = [
    "where is my parcel?",
    "refund please",
    "I was charged twice for the same order",
    "hello",
    "cancel my card now, it was stolen yesterday in the train",
    "the delivery is late again",
    "why did the exchange rate change",
    "top up failed",
]


def decisive_classifier(directory: Path) -> Path:
    """A tiny classifier with large random weights, so its probabilities are far from uniform and
    quantization errors show (the default 0.02 init gives near-uniform outputs)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(3)
    config = builders.tiny_bert_config(
        initializer_range=0.2, **builders.head_arguments(TaskKind.SEQUENCE_CLASSIFICATION, LABELS)
    )
    BertForSequenceClassification(config).save_pretrained(str(directory))
    builders.tokenizer().save_pretrained(str(directory))
    builders.write_manifest(directory, TaskKind.SEQUENCE_CLASSIFICATION, LABELS)
    return directory


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    base = builders.base_model(root / "base")
    return {
        "classifier": decisive_classifier(root / "cls"),
        "tagger": builders.full_artifact(root / "ner", TaskKind.TOKEN_CLASSIFICATION, TAGS),
        "chat": builders.full_artifact(root / "chat", TaskKind.CAUSAL_LM),
        "lora": builders.lora_artifact(root / "lora", base, LABELS, seed=5),
        "lora2": builders.lora_artifact(root / "lora2", base, LABELS, seed=6),
    }


def concurrent_predictions(runtime: InferenceRuntime, artifact: Path, rounds: int = 6) -> dict[str, list[float]]:
    """Every text asked by its own thread, several rounds at once: batches of mixed lengths."""
    found: dict[str, list[float]] = {}
    lock = threading.Lock()

    def ask(text: str) -> None:
        (prediction,) = runtime.predict("ft:cls", artifact, [PredictionInput(text)])
        assert prediction.probabilities is not None
        with lock:
            assert found.setdefault(text, prediction.probabilities) == pytest.approx(prediction.probabilities, abs=1e-5)

    threads = [threading.Thread(target=ask, args=(text,)) for _ in range(rounds) for text in TEXTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found


def test_parallel_runners_answer_like_one_runner(artifacts):
    serial = InferenceRuntime(batch_runners=1, max_wait_seconds=0.002)
    parallel = InferenceRuntime(batch_runners=3, max_wait_seconds=0.002)
    try:
        one = concurrent_predictions(serial, artifacts["classifier"])
        three = concurrent_predictions(parallel, artifacts["classifier"])
        assert parallel.stats()["batch_runners"] == 3
    finally:
        serial.close()
        parallel.close()
    assert set(one) == set(three) == set(TEXTS)
    for text in TEXTS:
        assert three[text] == pytest.approx(one[text], abs=1e-5)


def test_int8_predictions_agree_with_fp32(artifacts):
    runtime = InferenceRuntime(max_wait_seconds=0.002)
    items = [PredictionInput(text) for text in TEXTS]
    try:
        fp32 = runtime.predict_unbatched("ft:cls", artifacts["classifier"], items)
        fp32_model = runtime.load("ft:cls", artifacts["classifier"])
        int8 = runtime.predict("ft:cls", artifacts["classifier"], items, precision="int8")
        int8_model = runtime.load("ft:cls", artifacts["classifier"], "int8")
    finally:
        runtime.close()
    assert fp32_model.precision == "fp32"
    assert int8_model.precision == "int8"
    assert int8_model.module is None  # closed with the runtime; it was quantized in memory only
    assert int8_model.nbytes < fp32_model.nbytes
    differences = []
    for exact, quantized in zip(fp32, int8):
        assert exact.probabilities is not None
        assert quantized.probabilities is not None
        # far from uniform, so the comparison means something
        assert max(exact.probabilities) - min(exact.probabilities) > 0.2
        top, second = sorted(exact.probabilities, reverse=True)[:2]
        if top - second > 0.03:  # a clear decision stays the same
            assert quantized.top_label()[0] == exact.top_label()[0]
        differences += [abs(a - b) for a, b in zip(exact.probabilities, quantized.probabilities)]
    assert max(differences) < 0.05
    assert max(differences) > 0  # the int8 side really ran quantized


def test_bf16_serves_under_autocast_where_the_cpu_has_bf16_units(artifacts, monkeypatch):
    from tunery_engine import modeling

    items = [PredictionInput(text) for text in TEXTS]
    monkeypatch.setattr(modeling, "cpu_has_bf16_units", lambda: True)  # oneDNN runs bf16 on any CPU
    runtime = InferenceRuntime(max_wait_seconds=0.002)
    try:
        fp32 = runtime.predict_unbatched("ft:cls", artifacts["classifier"], items)
        bf16 = runtime.predict("ft:cls", artifacts["classifier"], items, precision="bf16")
        bf16_model = runtime.load("ft:cls", artifacts["classifier"], "bf16")
        assert runtime.load("ft:lora", artifacts["lora"], "bf16").precision == "fp32"
        assert runtime.load("ft:chat", artifacts["chat"], "bf16").precision == "fp32"
    finally:
        runtime.close()
    assert bf16_model.precision == "bf16"
    differences = []
    for exact, autocast in zip(fp32, bf16):
        assert exact.probabilities is not None
        assert autocast.probabilities is not None
        top, second = sorted(exact.probabilities, reverse=True)[:2]
        if top - second > 0.03:
            assert autocast.top_label()[0] == exact.top_label()[0]
        differences += [abs(a - b) for a, b in zip(exact.probabilities, autocast.probabilities)]
    assert 0 < max(differences) < 0.05  # it really ran in bf16, and stayed close

    monkeypatch.setattr(modeling, "cpu_has_bf16_units", lambda: False)  # emulated bf16: slower than fp32
    runtime = InferenceRuntime(precision="bf16")
    try:
        assert runtime.load("ft:cls", artifacts["classifier"]).precision == "fp32"
        fallback = runtime.predict("ft:cls", artifacts["classifier"], items)
    finally:
        runtime.close()
    for served, exact in zip(fallback, fp32, strict=True):
        assert served.probabilities == pytest.approx(exact.probabilities, abs=1e-6)


def test_int8_quantizes_the_encoder_in_memory_and_keeps_the_head(artifacts):
    before = sorted(p.name for p in artifacts["classifier"].iterdir())
    runtime = InferenceRuntime(precision="int8")
    try:
        model = runtime.load("ft:cls", artifacts["classifier"])
        assert model.module is not None
        quantized = [name for name, m in model.module.named_modules() if isinstance(m, DynamicQuantizedLinear)]
        assert quantized
        assert all(name.startswith("bert.") for name in quantized)
        assert isinstance(model.module.classifier, torch.nn.Linear)
        assert not isinstance(model.module.classifier, DynamicQuantizedLinear)
    finally:
        runtime.close()
    assert sorted(p.name for p in artifacts["classifier"].iterdir()) == before  # nothing written


def test_a_quantized_tagger_still_places_entities(artifacts):
    text = "Ada Lovelace joined Acme Corporation in London"
    runtime = InferenceRuntime(precision="int8")
    try:
        (prediction,) = runtime.predict("ft:ner", artifacts["tagger"], [PredictionInput(text)])
        assert runtime.load("ft:ner", artifacts["tagger"]).precision == "int8"
    finally:
        runtime.close()
    assert prediction.tokens == text.split()
    for entity in prediction.entities or []:
        assert text[entity["start"] : entity["end"]] == entity["text"]


def test_lora_adapters_and_causal_lms_stay_fp32_under_int8(artifacts):
    runtime = InferenceRuntime(precision="int8")
    try:
        assert runtime.load("ft:lora", artifacts["lora"]).precision == "fp32"
        assert runtime.load("ft:chat", artifacts["chat"]).precision == "fp32"
        (prediction,) = runtime.predict("ft:lora", artifacts["lora"], [PredictionInput("refund please")])
        assert prediction.probabilities is not None
        loaded = runtime.loaded()
        runtime.load("ft:chat", artifacts["chat"], "fp32")  # the same effective precision: no reload
        assert runtime.loaded()[-1] == "ft:chat"
        assert sorted(runtime.loaded()) == sorted(loaded)
    finally:
        runtime.close()


def test_asking_another_precision_reloads_the_model(artifacts):
    evicted: list[str] = []
    loaded: list[str] = []
    from tunery_serving import RuntimeObserver

    runtime = InferenceRuntime(observer=RuntimeObserver(on_evict=evicted.append, on_load=loaded.append))
    try:
        assert runtime.load("ft:cls", artifacts["classifier"]).precision == "fp32"
        assert runtime.load("ft:cls", artifacts["classifier"], "int8").precision == "int8"
        assert evicted == ["ft:cls"]
        assert loaded == ["ft:cls", "ft:cls"]
        assert runtime.load("ft:cls", artifacts["classifier"], "int8").precision == "int8"
        assert evicted == ["ft:cls"]
        assert loaded == ["ft:cls", "ft:cls"]  # served from the cache: nothing new to settle
    finally:
        runtime.close()


def test_an_unknown_precision_is_refused(artifacts):
    with pytest.raises(ValueError, match="precision"):
        InferenceRuntime(precision="int4")
    runtime = InferenceRuntime()
    try:
        with pytest.raises(ArtifactError, match="precision"):
            runtime.load("ft:cls", artifacts["classifier"], "fp16")
        assert runtime.loaded() == []
    finally:
        runtime.close()


def test_default_batch_runners_follow_the_cores():
    cores = usable_cpus()
    assert default_batch_runners(torch.device("cpu"), torch_threads=1) == cores
    assert default_batch_runners(torch.device("cpu"), torch_threads=cores) == 1
    assert default_batch_runners(torch.device("cpu"), torch_threads=cores * 4) == 1
    assert default_batch_runners(torch.device("cuda"), torch_threads=1) == 1


def test_serving_processes_on_one_host_share_its_cores_out(monkeypatch):
    from tunery.serving.process_runtime import get_runtime, reset_runtime
    from tunery_serving import runtime

    monkeypatch.setattr(runtime, "usable_cpus", lambda: 16)
    cpu = torch.device("cpu")
    assert default_batch_runners(cpu, torch_threads=1, processes=4) == 4
    assert default_batch_runners(cpu, torch_threads=2, processes=3) == 2
    assert default_batch_runners(cpu, torch_threads=1, processes=64) == 1
    # gunicorn's WEB_CONCURRENCY reaches the web process's runtime; TUNERY_BATCH_RUNNERS still wins
    monkeypatch.setenv("WEB_CONCURRENCY", "8")
    monkeypatch.setenv("TUNERY_TORCH_THREADS", "1")
    reset_runtime()
    try:
        assert get_runtime().batch_runners == 2
        reset_runtime()
        monkeypatch.setenv("TUNERY_BATCH_RUNNERS", "5")
        assert get_runtime().batch_runners == 5
    finally:
        reset_runtime()


def test_length_groups_cover_every_row_once_and_split_only_when_it_pays():
    short_and_long = [12] * 31 + [82]
    groups = length_groups(short_and_long)
    assert groups == [list(range(31)), [31]]  # the long row no longer pads the 31 short ones
    assert length_groups([9] * 32) == [list(range(32))]  # equal lengths: one pass
    mixed = [9, 8, 13, 7, 12, 8, 9, 10] * 4
    groups = length_groups(mixed)
    assert sorted(r for g in groups for r in g) == list(range(32))
    for earlier, later in itertools.pairwise(groups):
        assert max(mixed[r] for r in earlier) <= min(mixed[r] for r in later)
    assert length_groups([5]) == [[0]]


@pytest.mark.parametrize("name", ["classifier", "tagger"])
def test_forward_by_length_gives_the_logits_of_one_padded_pass(artifacts, name):
    runtime = InferenceRuntime()
    try:
        model = runtime.load(f"ft:{name}", artifacts[name])
        texts = ["hi", *TEXTS, "a long one " * 30]
        encoded = model.encode([PredictionInput(t) for t in texts])
        inputs = model_inputs(encoded, torch.device("cpu"))
        assert len(length_groups(inputs["attention_mask"].sum(dim=1).tolist())) > 1
        with torch.inference_mode():
            whole = model.module(**inputs).logits.float()
            grouped = forward_by_length(model.module, inputs)
    finally:
        runtime.close()
    assert grouped.shape == whole.shape
    mask = inputs["attention_mask"].bool()
    if whole.dim() == 3:  # token level: only real positions carry meaning
        assert torch.allclose(grouped[mask], whole[mask], atol=1e-5)
    else:
        assert torch.allclose(grouped, whole, atol=1e-5)


def test_mixed_adapter_batches_in_length_groups_answer_like_each_adapter_alone(artifacts):
    runtime = InferenceRuntime()
    try:
        first = runtime.load("ft:lora", artifacts["lora"])
        second = runtime.load("ft:lora2", artifacts["lora2"])
        base = first.base
        assert base is not None
        assert second.base is base
        texts = ["hi", "a long one " * 30, "refund please", "where is my parcel? " * 5, "top up failed"]
        requests = [(first if i % 2 == 0 else second, PredictionInput(t)) for i, t in enumerate(texts)]
        lengths = first.encode([item for _, item in requests])["attention_mask"].sum(dim=1).tolist()
        assert len(length_groups(lengths)) > 1
        mixed = base.predict_mixed(requests)
        alone = [
            runtime.predict_unbatched(model.model_id, artifacts["lora" if model is first else "lora2"], [item])[0]
            for model, item in requests
        ]
        other = runtime.predict_unbatched("ft:lora2", artifacts["lora2"], [requests[0][1]])
    finally:
        runtime.close()
    for together, single in zip(mixed, alone):
        assert not isinstance(together, Exception)
        assert together.probabilities == pytest.approx(single.probabilities, abs=1e-5)
    # the two adapters answer differently, so each row must have gone through its own
    assert mixed[0].probabilities != pytest.approx(other[0].probabilities, abs=1e-4)
