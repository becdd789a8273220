"""Fixtures for serving: tiny artifacts (built once per session), the serving test pack, tenants
with keys and fine-tuned model rows pointing at the artifacts, a real Redis for rate limits."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from django.core.servers import basehttp

from tests.serving import builders, pack
from tunery_contract import TaskKind

# Django's test server listens with a backlog of 10; 50 simultaneous clients would see resets
# (gunicorn's default is 2048). Set before the session's live server binds.
basehttp.WSGIServer.request_queue_size = 128


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # The machine is shared: keep each test process to one intra-op thread.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving-artifacts")
    base = builders.base_model(root / "base")
    return {
        "intents": builders.full_artifact(
            root / "intents", TaskKind.SEQUENCE_CLASSIFICATION, pack.INTENTS, vertical=pack.PACK_ID, task="intents"
        ),
        "entities": builders.full_artifact(
            root / "entities", TaskKind.TOKEN_CLASSIFICATION, pack.TAGS, vertical=pack.PACK_ID, task="entities"
        ),
        "ranking": builders.full_artifact(
            root / "ranking", TaskKind.TEXT_PAIR_REGRESSION, vertical=pack.PACK_ID, task="ranking"
        ),
        "assistant": builders.full_artifact(
            root / "assistant", TaskKind.CAUSAL_LM, vertical=pack.PACK_ID, task="assistant"
        ),
        "lora": builders.lora_artifact(
            root / "lora", base, pack.INTENTS, seed=7, vertical=pack.PACK_ID, task="intents"
        ),
    }


@pytest.fixture
def serving_pack() -> Iterator[object]:
    from tunery.verticals import registry
    from tunery_contract.discovery import registered

    with registered(pack.make_pack()) as registered_pack:
        registry.reload()
        yield registered_pack
    registry.reload()


@pytest.fixture
def redis_rate_limits(settings) -> str:
    """Rate limits in the real Redis, under a prefix of this test's own."""
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    settings.TUNERY_RATE_LIMIT_PREFIX = f"tunery-test:{uuid.uuid4().hex}"
    return settings.TUNERY_RATE_LIMIT_PREFIX


@pytest.fixture
def make_model(db) -> Callable[..., object]:
    """``make_model(tenant, artifact_dir, task)``: a fine-tuned model row of a succeeded job."""
    from tunery.catalog.models import BaseModel, FineTunedModel
    from tunery.files.models import File
    from tunery.jobs.models import FineTuningJob, JobStatus

    def make(tenant, artifact: Path, task: str):
        base, _ = BaseModel.objects.get_or_create(tenant=None, name="tiny-bert", defaults={"local_path": str(artifact)})
        training_file = File.objects.create(
            tenant=tenant,
            filename="train.jsonl",
            purpose="fine-tune",
            format="jsonl",
            bytes=1,
            sha256="0" * 64,
            content="files/train.jsonl",
        )
        job = FineTuningJob.objects.create(
            tenant=tenant,
            base_model=base,
            training_file=training_file,
            vertical=pack.PACK_ID,
            task=task,
            status=JobStatus.SUCCEEDED,
        )
        return FineTunedModel.objects.create(
            id=f"ft:tiny-bert:{tenant.slug}:{task}:{job.id}",
            tenant=tenant,
            job=job,
            base_model=base,
            artifact_path=str(artifact),
            vertical=pack.PACK_ID,
            task=task,
        )

    return make


@pytest.fixture(autouse=True, scope="module")
def _fresh_runtime():
    yield
    from tunery.serving.process_runtime import reset_runtime

    reset_runtime()
