"""A deployed model whose pack is uninstalled afterwards keeps serving its plain decoding: a
prediction is answered (no 500), only the pack's post-processing is gone."""

from __future__ import annotations

import httpx
import pytest

from tests.serving import pack

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


def test_prediction_after_the_pack_is_uninstalled(
    live_server, serving_pack, make_tenant, make_model, redis_rate_limits, artifacts
):
    from tunery.verticals import registry
    from tunery_contract import discovery

    acme = make_tenant("acme", verticals=(pack.PACK_ID,))
    model = make_model(acme.tenant, artifacts["intents"], "intents")
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {acme.key}"}, timeout=60) as client:
        assert client.post("/v1/deployments", json={"model": model.id}).status_code in (200, 201)
        before = client.post("/v1/predictions", json={"model": model.id, "inputs": ["I was charged twice"]})
        assert before.status_code == 200, before.text
        assert "reply" in before.json()["data"][0]

        discovery._extra.pop(pack.PACK_ID)  # uninstall the pack while the model stays deployed
        registry.reload()

        after = client.post("/v1/predictions", json={"model": model.id, "inputs": ["I was charged twice"]})
        assert after.status_code == 200, after.text
        result = after.json()["data"][0]
        assert set(result["probabilities"]) == set(pack.INTENTS)
        assert result["label"] == before.json()["data"][0]["label"]
        assert "reply" not in result
        assert "handoff" not in result
        # a body in the pack's own column names cannot be read without the pack: a clear 400
        by_pack_column = client.post("/v1/predictions", json={"model": model.id, "inputs": [{"message": "hi"}]})
        assert by_pack_column.status_code == 400, by_pack_column.text
        assert by_pack_column.json()["error"]["message"]
        assert client.get(f"/v1/models/{model.id}").status_code == 200
