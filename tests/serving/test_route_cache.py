"""A warm prediction asks the database nothing about the key, the model or its deployment; an
undeploy stops the model at once in its process and within TUNERY_LOOKUP_CACHE_SECONDS elsewhere."""

from __future__ import annotations

import time

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tests.serving.test_api import deploy, setup  # noqa: F401  (setup: the live server fixture)


def test_a_warm_prediction_makes_no_query(setup, settings):  # noqa: F811
    from tunery.core import writebehind
    from tunery.dashboard.models import PredictionUsage

    settings.TUNERY_WRITE_BEHIND_SECONDS = 60  # buffered, as served (the tests otherwise write through)
    client, model = setup["client"], setup["models"]["intents"]
    deploy(client, model)
    local = Client(HTTP_AUTHORIZATION=client.headers["Authorization"])
    body = {"model": model.id, "inputs": ["where is my parcel?"]}
    assert local.post("/v1/predictions", body, content_type="application/json").status_code == 200
    with CaptureQueriesContext(connection) as queries:
        answered = local.post("/v1/predictions", body, content_type="application/json")
    assert answered.status_code == 200, answered.content
    assert [q["sql"] for q in queries.captured_queries if "ratelimitwindow" not in q["sql"]] == []
    assert writebehind.flush()  # the usage count is written behind, not lost
    assert PredictionUsage.objects.get(tenant=setup["acme"].tenant).requests == 2


def test_undeploying_stops_the_model_at_once_here_and_within_the_ttl_elsewhere(setup, settings):  # noqa: F811
    from tunery.serving.models import Deployment

    settings.TUNERY_LOOKUP_CACHE_SECONDS = 0.5
    client, model = setup["client"], setup["models"]["intents"]
    deployment = deploy(client, model)
    body = {"model": model.id, "inputs": ["refund please"]}
    assert client.post("/v1/predictions", json=body).status_code == 200  # cached now
    # another process marks it failed (a bare UPDATE, no signal here): served until the TTL ends
    Deployment.objects.filter(pk=deployment["id"]).update(status=Deployment.Status.FAILED)
    assert client.post("/v1/predictions", json=body).status_code == 200
    time.sleep(0.6)
    assert client.post("/v1/predictions", json=body).status_code == 409
    Deployment.objects.filter(pk=deployment["id"]).update(status=Deployment.Status.READY)
    assert client.post("/v1/predictions", json=body).status_code == 200
    # undeployed through the API (this process): refused at once
    assert client.delete(f"/v1/deployments/{deployment['id']}").status_code == 200
    refused = client.post("/v1/predictions", json=body)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "model_not_deployed"
