"""The inference runtime on tiny real models: decoding per task kind, LoRA adapters over one base,
the LRU memory bound and generation. No Django here: the runtime is Django-free."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from tests.serving import builders
from tunery_contract import TaskKind
from tunery_serving import (
    ArtifactError,
    GenerationRequest,
    GenerationResult,
    InferenceRuntime,
    PredictionInput,
    RuntimeObserver,
    read_artifact,
)

LABELS = ("billing", "shipping", "refund")
TAGS = ("O", "B-ORG", "I-ORG", "B-PER", "I-PER")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    base = builders.base_model(root / "base")
    return {
        "classifier": builders.full_artifact(root / "cls", TaskKind.SEQUENCE_CLASSIFICATION, LABELS),
        "tagger": builders.full_artifact(root / "ner", TaskKind.TOKEN_CLASSIFICATION, TAGS),
        "ranker": builders.full_artifact(root / "rank", TaskKind.TEXT_PAIR_REGRESSION),
        "multi": builders.full_artifact(root / "multi", TaskKind.MULTI_LABEL_CLASSIFICATION, LABELS),
        "chat": builders.full_artifact(root / "chat", TaskKind.CAUSAL_LM),
        "base": base,
        "adapters": [builders.lora_artifact(root / f"lora{i}", base, LABELS, seed=i + 1) for i in range(3)],
    }


@pytest.fixture
def runtime():
    rt = InferenceRuntime(max_bytes=1024**3, max_wait_seconds=0.002)
    yield rt
    rt.close()


def test_classifier_gives_a_probability_per_label(runtime, artifacts):
    predictions = runtime.predict("ft:cls", artifacts["classifier"], [PredictionInput("where is my parcel?")] * 2)
    assert len(predictions) == 2
    first = predictions[0]
    assert first.label_names == LABELS
    assert first.probabilities is not None
    assert len(first.probabilities) == 3
    assert sum(first.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert first.probabilities == pytest.approx(predictions[1].probabilities)


def test_batched_and_single_predictions_agree(runtime, artifacts):
    texts = ["short", "a much longer text that will need padding in a batch", "refund please"]
    together = runtime.predict_unbatched("ft:cls", artifacts["classifier"], [PredictionInput(t) for t in texts])
    alone = [runtime.predict_unbatched("ft:cls", artifacts["classifier"], [PredictionInput(t)])[0] for t in texts]
    for a, b in zip(together, alone):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)


def test_multi_label_probabilities_are_independent(runtime, artifacts):
    (prediction,) = runtime.predict("ft:multi", artifacts["multi"], [PredictionInput("refund and shipping")])
    assert prediction.probabilities is not None
    assert all(0 < p < 1 for p in prediction.probabilities)
    assert sum(prediction.probabilities) != pytest.approx(1.0, abs=1e-3)


def test_tagger_entities_carry_character_offsets(runtime, artifacts):
    text = "Ada Lovelace joined Acme Corporation in London"
    (prediction,) = runtime.predict("ft:ner", artifacts["tagger"], [PredictionInput(text)])
    assert prediction.tokens == text.split()
    assert len(prediction.tags) == len(prediction.tokens)
    assert set(prediction.tags) <= set(TAGS)
    for entity in prediction.entities:
        assert text[entity["start"] : entity["end"]] == entity["text"]
        assert entity["type"] in ("ORG", "PER")
        assert 0 < entity["score"] <= 1
    entity_words = sum(1 for tag in prediction.tags if tag != "O")
    assert sum(len(e["text"].split()) for e in prediction.entities) == entity_words


def test_pair_regression_scores_each_pair(runtime, artifacts):
    items = [PredictionInput("likes hiking", "trail shoes"), PredictionInput("likes hiking", "a sofa")]
    scores = [p.score for p in runtime.predict("ft:rank", artifacts["ranker"], items)]
    assert all(isinstance(s, float) for s in scores)
    assert scores[0] != scores[1]


def test_causal_lm_generates_and_streams_the_same_text(runtime, artifacts):
    request = GenerationRequest(messages=({"role": "user", "content": "hello"},), max_new_tokens=8, temperature=0)
    whole = runtime.generate("ft:chat", artifacts["chat"], request)
    result = GenerationResult()
    pieces = list(runtime.stream("ft:chat", artifacts["chat"], request, result))
    assert "".join(pieces) == whole.text == result.text
    assert whole.completion_tokens == 8
    assert whole.finish_reason == "length"
    assert whole.prompt_tokens > 0


def test_generation_stops_at_a_stop_sequence(runtime, artifacts):
    request = GenerationRequest(prompt="the", max_new_tokens=12, temperature=0)
    text = runtime.generate("ft:chat", artifacts["chat"], request).text
    assert len(text) > 2
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    stopped = runtime.generate(
        "ft:chat", artifacts["chat"], GenerationRequest(prompt="the", max_new_tokens=12, temperature=0, stop=(stop,))
    )
    assert stopped.text == text[: text.find(stop)]
    assert stopped.finish_reason == "stop"


def test_many_lora_adapters_share_one_base_and_match_merged_models(runtime, artifacts):
    texts = [PredictionInput("I was charged twice"), PredictionInput("my parcel never arrived at all")]
    served = [runtime.predict(f"ft:lora{i}", path, texts) for i, path in enumerate(artifacts["adapters"])]
    assert runtime.shared_bases == 1
    models = [runtime.load(f"ft:lora{i}", path) for i, path in enumerate(artifacts["adapters"])]
    assert len({id(m.base) for m in models}) == 1

    tokenizer = builders.tokenizer()
    encoded = tokenizer([t.text for t in texts], padding=True, return_tensors="pt")
    for predictions, path in zip(served, artifacts["adapters"]):
        base = AutoModelForSequenceClassification.from_pretrained(str(artifacts["base"]), num_labels=len(LABELS))
        merged = PeftModel.from_pretrained(base, str(path / "adapter")).merge_and_unload().eval()
        with torch.inference_mode():
            expected = torch.softmax(merged(**encoded).logits, dim=-1)
        got = torch.tensor([p.probabilities for p in predictions])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # adapters really differ (otherwise the comparison above proves nothing)
    assert not torch.allclose(torch.tensor(served[0][0].probabilities), torch.tensor(served[1][0].probabilities))


def test_lru_eviction_keeps_loaded_bytes_under_the_bound(artifacts):
    probe = InferenceRuntime(max_bytes=1024**3)
    one = probe.load("probe", artifacts["classifier"]).nbytes
    probe.close()
    runtime = InferenceRuntime(max_bytes=int(one * 2.5))
    try:
        runtime.load("a", artifacts["classifier"])
        runtime.load("b", artifacts["multi"])
        runtime.load("a", artifacts["classifier"])  # touch: "b" is now least recently used
        runtime.load("c", artifacts["tagger"])
        assert runtime.loaded() == ["a", "c"]
        assert runtime.cache.total_bytes <= runtime.cache.max_bytes
        # an evicted model loads again on demand
        assert runtime.predict("b", artifacts["multi"], [PredictionInput("x")])
        assert runtime.loaded() == ["c", "b"]
    finally:
        runtime.close()


def test_evicting_adapters_releases_the_shared_base(artifacts):
    runtime = InferenceRuntime(max_bytes=1024**3)
    try:
        for i, path in enumerate(artifacts["adapters"][:2]):
            runtime.load(f"ft:lora{i}", path)
        base_bytes = runtime.load("ft:lora0", artifacts["adapters"][0]).base.nbytes
        adapters_bytes = sum(runtime.load(f"ft:lora{i}", artifacts["adapters"][i]).nbytes for i in range(2))
        assert runtime.cache.total_bytes == base_bytes + adapters_bytes  # the base counted once
        runtime.unload("ft:lora0")
        assert runtime.shared_bases == 1
        assert runtime.predict("ft:lora1", artifacts["adapters"][1], [PredictionInput("x")])
        runtime.unload("ft:lora1")
        assert runtime.shared_bases == 0
        assert runtime.cache.total_bytes == 0
    finally:
        runtime.close()


def test_a_missing_or_broken_artifact_is_a_clear_error(tmp_path, artifacts):
    with pytest.raises(ArtifactError, match=r"tunery_artifact\.json"):
        read_artifact(tmp_path)
    (tmp_path / "tunery_artifact.json").write_text('{"kind": "sorcery"}')
    with pytest.raises(ArtifactError, match="unknown task kind"):
        read_artifact(tmp_path)
    (tmp_path / "tunery_artifact.json").write_text('{"format_version": 99, "kind": "causal_lm"}')
    with pytest.raises(ArtifactError, match="format 99 is not supported"):
        read_artifact(tmp_path)
    (tmp_path / "tunery_artifact.json").write_text('{"kind": "causal_lm", "training_type": "lora"}')
    with pytest.raises(ArtifactError, match="adapter_config"):
        read_artifact(tmp_path)
    runtime = InferenceRuntime(max_bytes=1024**3)
    with pytest.raises(ArtifactError, match="does not generate"):
        runtime.generate("ft:cls", artifacts["classifier"], GenerationRequest(prompt="hi"))
    runtime.close()


def test_requests_for_different_adapters_share_one_forward_pass(artifacts):
    sizes: list[int] = []
    runtime = InferenceRuntime(
        max_bytes=1024**3,
        max_wait_seconds=0.5,
        observer=RuntimeObserver(on_batch=lambda kind, n, s, w: sizes.append(n)),
    )
    try:
        paths = {f"ft:lora{i}": path for i, path in enumerate(artifacts["adapters"])}
        text = PredictionInput("please refund my order")
        # one adapter at a time (set_adapter), as a reference for the mixed batch
        expected = {model_id: runtime.predict_unbatched(model_id, path, [text])[0] for model_id, path in paths.items()}
        base = runtime.load("ft:lora0", paths["ft:lora0"]).base
        assert base is not None
        (batcher,) = runtime._base_batchers.values()
        results: dict[str, object] = {}
        threads = [
            threading.Thread(target=lambda m=m, p=p: results.__setitem__(m, runtime.predict(m, p, [text])[0]))
            for m, p in paths.items()
        ]
        # Keep the base busy with a first request, so the three queue up behind it (a lone
        # request on an idle model runs at once, without waiting for company).
        with base.lock:
            first = threading.Thread(target=runtime.predict, args=("ft:lora0", paths["ft:lora0"], [text]))
            first.start()
            wait_until(lambda: batcher.in_flight == 1)
            for t in threads:
                t.start()
            wait_until(lambda: batcher.queue_depth == 3)
        for t in (first, *threads):
            t.join()
        assert sizes == [1, 3]  # three tenants' requests, one forward pass
        for model_id, prediction in results.items():
            assert prediction.probabilities == pytest.approx(expected[model_id].probabilities, abs=1e-5)
        assert expected["ft:lora0"].probabilities != pytest.approx(expected["ft:lora1"].probabilities, abs=1e-3)
    finally:
        runtime.close()


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)
