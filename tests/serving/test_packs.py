"""Every installed vertical pack's tasks (encoders and causal LMs), served through the real HTTP API on tiny models:
the response carries the runtime's decoding overlaid with the pack's own post-processing, computed
with the tenant's pack configuration."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from tests.serving import builders
from tunery.serving.services import decoded
from tunery_contract import Prediction, TaskKind
from tunery_contract.discovery import discover
from tunery_serving import GenerationRequest, PredictionInput

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]  # rate limits in the real Redis

INSTALLED = discover().packs
CASES = [
    (pack_id, task.id)
    for pack_id, pack in sorted(INSTALLED.items())
    for task in pack.tasks
    if task.postprocess is not None
]
SAMPLE_TEXT = "Anna Smith of Acme Corp was charged twice for aspirin in Paris on 3 May"


def labels_for(task) -> tuple[str, ...]:
    if task.kind is TaskKind.TEXT_PAIR_REGRESSION:
        return ()
    names = tuple(task.labels or ("alpha", "beta", "gamma"))
    if task.kind is TaskKind.TOKEN_CLASSIFICATION:
        return ("O", *(f"{p}-{n}" for n in names for p in ("B", "I")))
    return names


def close(actual: Any, expected: Any) -> bool:
    """Equal, with floats compared to 1e-6 (JSON round trip, batch padding)."""
    if isinstance(expected, float) or isinstance(actual, float):
        return isinstance(actual, (int, float)) and math.isclose(actual, expected, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(close(actual[k], v) for k, v in expected.items())
        )
    if isinstance(expected, (list, tuple)):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(close(a, e) for a, e in zip(actual, expected))
        )
    return actual == expected


def test_every_installed_pack_is_covered():
    assert {pack_id for pack_id, _ in CASES} >= {
        "customer_service",
        "finance_sentiment",
        "recommendation",
        "medical",
        "legal",
    }


@pytest.mark.parametrize(("pack_id", "task_id"), CASES)
def test_pack_prediction_through_the_api(
    request, pack_id, task_id, live_server, make_tenant, make_model, redis_rate_limits, tmp_path
):
    from tunery.serving.process_runtime import artifact_dir, get_runtime
    from tunery.verticals import registry

    registry.reload()
    pack = INSTALLED[pack_id]
    task = pack.task(task_id)
    artifact = builders.full_artifact(tmp_path / task_id, task.kind, labels_for(task), vertical=pack_id, task=task_id)
    tenant = make_tenant(f"t-{pack_id}".replace("_", "-"), verticals=(pack_id,))
    model = make_model(tenant.tenant, artifact, task_id)
    model.vertical = pack_id
    model.save(update_fields=["vertical"])
    client = httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {tenant.key}"}, timeout=60)
    request.addfinalizer(client.close)
    deployed = client.post("/v1/deployments", json={"model": model.id})
    assert deployed.json()["status"] == "ready", deployed.text

    text_column = task.schema.column_for("text")
    pair_column = task.schema.column_for("text_pair")
    text_name = text_column.name if text_column else "text"
    if task.kind is TaskKind.CAUSAL_LM:
        row = {"messages": [{"role": "user", "content": SAMPLE_TEXT}]}
        response = client.post(
            "/v1/predictions", json={"model": model.id, "inputs": [row], "max_tokens": 6, "temperature": 0}
        )
        assert response.status_code == 200, response.text
        (got,) = response.json()["data"]
        generated = get_runtime().generate(
            model.id,
            artifact_dir(model),
            GenerationRequest(messages=tuple(row["messages"]), max_new_tokens=6, temperature=0),
        )
        prediction = Prediction(kind=TaskKind.CAUSAL_LM, text=generated.text)
        config = registry.enabled_pack(tenant.tenant, pack_id).config
        assert got["text"] == generated.text
        for key, value in task.postprocess(prediction, row, config).items():
            assert close(got[key], value), (key, got[key], value)
        return
    if task.kind is TaskKind.TEXT_PAIR_REGRESSION:  # a ranking call: one user, several items
        items = [
            {"item_id": f"sku-{i}", pair_column.name: name}
            for i, name in enumerate(["trail shoes", "a sofa", "green tea"])
        ]
        response = client.post("/v1/predictions", json={"model": model.id, "user": "likes hiking", "items": items})
        rows = [{text_name: "likes hiking", pair_column.name: i[pair_column.name], **i} for i in items]
    else:
        row = {text_name: SAMPLE_TEXT, "ticker": "ACME", "published_at": "2026-05-03T09:00:00Z"}
        if pair_column is not None:
            row[pair_column.name] = "a waterproof hiking jacket"
        response = client.post("/v1/predictions", json={"model": model.id, "inputs": [row]})
        rows = [row]
    assert response.status_code == 200, response.text
    data = response.json()["data"]

    config = registry.enabled_pack(tenant.tenant, pack_id).config
    runtime_inputs = [PredictionInput(r[text_name], r.get(pair_column.name) if pair_column else None) for r in rows]
    predictions = get_runtime().predict_unbatched(model.id, artifact_dir(model), runtime_inputs)
    expected = [{**decoded(p), **task.postprocess(p, r, config)} for p, r in zip(predictions, rows)]
    if task.kind is TaskKind.TEXT_PAIR_REGRESSION:
        order = sorted(range(len(expected)), key=lambda i: -expected[i]["score"])
        assert [d["index"] for d in data] == order
        assert [d["rank"] for d in data] == [1, 2, 3]
        expected = [expected[i] for i in order]
    for got, want in zip(data, expected):
        for key, value in want.items():
            assert close(got[key], value), (key, got[key], value)
