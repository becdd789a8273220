"""A deployed model whose vertical pack is uninstalled afterwards (or no longer has the model's
task) is refused with a clear 409 instead of silently answering without the pack's
post-processing (replies, hand-offs, redaction); the model and its deployment stay readable,
and reinstalling the pack brings the predictions back."""

from __future__ import annotations

import dataclasses

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
        deployed = client.post("/v1/deployments", json={"model": model.id})
        assert deployed.status_code in (200, 201), deployed.text
        before = client.post("/v1/predictions", json={"model": model.id, "inputs": ["I was charged twice"]})
        assert before.status_code == 200, before.text
        assert "reply" in before.json()["data"][0]

        discovery._extra.pop(pack.PACK_ID)  # uninstall the pack while the model stays deployed
        registry.reload()

        after = client.post("/v1/predictions", json={"model": model.id, "inputs": ["I was charged twice"]})
        assert after.status_code == 409, after.text
        error = after.json()["error"]
        assert error["code"] == "vertical_not_installed"
        assert error["param"] == "model"
        assert error["type"] == "conflict_error"  # what the openai client maps a 409 to
        assert pack.PACK_ID in error["message"]
        assert "not installed" in error["message"]
        assert client.get(f"/v1/models/{model.id}").status_code == 200
        assert client.get(f"/v1/deployments/{deployed.json()['id']}").json()["status"] == "ready"

        discovery._extra[pack.PACK_ID] = serving_pack  # reinstalled: served with the pack again
        registry.reload()
        again = client.post("/v1/predictions", json={"model": model.id, "inputs": ["I was charged twice"]})
        assert again.status_code == 200, again.text
        assert again.json()["data"][0]["reply"] == before.json()["data"][0]["reply"]


def test_prediction_when_the_pack_no_longer_has_the_task(
    live_server, serving_pack, make_tenant, make_model, redis_rate_limits, artifacts
):
    from tunery.verticals import registry
    from tunery_contract import discovery

    acme = make_tenant("acme", verticals=(pack.PACK_ID,))
    model = make_model(acme.tenant, artifacts["intents"], "intents")
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {acme.key}"}, timeout=60) as client:
        assert client.post("/v1/deployments", json={"model": model.id}).status_code in (200, 201)
        upgraded = dataclasses.replace(
            serving_pack, version="0.2.0", tasks=tuple(t for t in serving_pack.tasks if t.id != "intents")
        )
        discovery._extra[pack.PACK_ID] = upgraded  # a new pack version without the model's task
        registry.reload()
        refused = client.post("/v1/predictions", json={"model": model.id, "inputs": ["I was charged twice"]})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "vertical_task_not_found"
        assert "'intents'" in refused.json()["error"]["message"]
