"""Deleting a fine-tuned model undeploys it in the same call: the deployment row, its quota slot
and its loaded weights are released, and predictions for it are refused."""

from __future__ import annotations

import httpx
import pytest

from tests.serving import pack

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


def test_deleting_a_model_undeploys_it(
    live_server, serving_pack, make_tenant, make_model, redis_rate_limits, artifacts
):
    from tunery.serving.models import Deployment
    from tunery.serving.process_runtime import get_runtime
    from tunery.tenants.models import AuditLog

    acme = make_tenant("acme", verticals=(pack.PACK_ID,), max_deployments=1)
    doomed = make_model(acme.tenant, artifacts["intents"], "intents")
    kept = make_model(acme.tenant, artifacts["ranking"], "ranking")
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {acme.key}"}, timeout=60) as client:
        deployment_id = client.post("/v1/deployments", json={"model": doomed.id}).json()["id"]
        assert doomed.id in get_runtime().loaded()
        full = client.post("/v1/deployments", json={"model": kept.id})
        assert full.status_code == 429, full.text  # the one slot is taken

        deleted = client.delete(f"/v1/models/{doomed.id}")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["deleted"] is True

        assert not Deployment.objects.filter(model_id=doomed.id).exists()
        assert doomed.id not in get_runtime().loaded()
        assert client.get(f"/v1/deployments/{deployment_id}").status_code == 404
        assert deployment_id not in [d["id"] for d in client.get("/v1/deployments").json()["data"]]
        refused = client.post("/v1/predictions", json={"model": doomed.id, "inputs": ["hello"]})
        assert refused.status_code == 404, refused.text
        assert AuditLog.objects.filter(action="deployment.delete", target=deployment_id).exists()
        assert AuditLog.objects.filter(action="model.delete", target=doomed.id).exists()
        # the freed slot can be used
        assert client.post("/v1/deployments", json={"model": kept.id}).status_code in (200, 201)
