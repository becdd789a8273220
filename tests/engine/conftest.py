"""Shared fixtures of the engine tests: tiny random models built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunery_engine.tiny_models import make_tiny_bert, make_tiny_llama


@pytest.fixture(autouse=True, scope="session")
def _few_threads() -> None:
    # the CI box is shared: tiny models gain nothing from many threads
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_sentence_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT declared a sentence encoder (mean pooling), as the packaged MiniLM is."""
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-sentence-encoder", mean_pooling=True)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-qwen", architecture="qwen2")
