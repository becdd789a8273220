"""Serving through the real HTTP API (a live server thread) and the real runtime on tiny models."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
import torch
from django.db import DatabaseError
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.serving import pack
from tunery.core.auth import forget_cached_keys
from tunery.serving.conf import host_default_precision

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]  # rate limits in the real Redis


@pytest.fixture
def setup(live_server, serving_pack, make_tenant, make_model, redis_rate_limits, artifacts):
    """Tenant 'acme' with a key, the serving pack enabled, and a fine-tuned model per task."""
    acme = make_tenant("acme", verticals=(pack.PACK_ID,), max_deployments=10)
    models = {
        task: make_model(acme.tenant, artifacts[task], task) for task in ("intents", "entities", "ranking", "assistant")
    }
    client = httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {acme.key}"}, timeout=60)
    yield {"url": live_server.url, "acme": acme, "models": models, "client": client}
    client.close()


def deploy(client: httpx.Client, model, precision: str | None = "fp32") -> dict:
    """Deployed in fp32 unless asked (None: the host's default): the tests compare with references
    computed in fp32, and a host with bf16 units serves bf16 by default."""
    body = {"model": model.id} if precision is None else {"model": model.id, "precision": precision}
    response = client.post("/v1/deployments", json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


def predict(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/predictions", json=body)


def test_deploy_list_retrieve_undeploy(setup):
    client, model = setup["client"], setup["models"]["intents"]
    assert predict(client, model=model.id, inputs=["hi"]).json()["error"]["code"] == "model_not_deployed"

    created = client.post("/v1/deployments", json={"model": model.id})
    assert created.status_code == 201
    deployment = created.json()
    assert deployment["status"] == "ready"
    assert deployment["kind"] == "sequence_classification"
    again = client.post("/v1/deployments", json={"model": model.id})
    assert again.status_code == 200
    assert again.json()["id"] == deployment["id"]

    listed = client.get("/v1/deployments").json()["data"]
    assert [d["id"] for d in listed] == [deployment["id"]]
    assert client.get(f"/v1/deployments/{deployment['id']}").json()["model"] == model.id
    assert predict(client, model=model.id, inputs=["hi"]).status_code == 200

    deleted = client.delete(f"/v1/deployments/{deployment['id']}")
    assert deleted.json()["deleted"] is True
    assert client.get("/v1/deployments").json()["data"] == []
    gone = predict(client, model=model.id, inputs=["hi"])
    assert gone.status_code == 409
    assert gone.json()["error"]["code"] == "model_not_deployed"
    from tunery.tenants.models import AuditLog

    assert list(AuditLog.objects.filter(target=deployment["id"]).values_list("action", flat=True).order_by("id")) == [
        "deployment.create",
        "deployment.delete",
    ]


def test_deploy_with_int8_precision_and_switch_back(setup):
    client, model = setup["client"], setup["models"]["intents"]
    texts = ["I was charged twice", "where is my parcel", "refund please"]
    created = client.post("/v1/deployments", json={"model": model.id})
    assert created.status_code == 201
    assert created.json()["precision"] == host_default_precision()  # fp32, or bf16 on CPUs with bf16 units
    default = predict(client, model=model.id, inputs=texts).json()["data"]

    switched = client.post("/v1/deployments", json={"model": model.id, "precision": "int8"})
    assert switched.status_code == 200, switched.text
    assert switched.json()["id"] == created.json()["id"]
    assert switched.json()["precision"] == "int8"
    assert client.get(f"/v1/deployments/{created.json()['id']}").json()["precision"] == "int8"
    int8 = predict(client, model=model.id, inputs=texts).json()["data"]
    from tunery.serving.process_runtime import get_runtime

    served = get_runtime().cache.peek(model.id)  # the live server's runtime: this process
    assert served is not None
    assert served.model.precision == "int8"
    for exact, quantized in zip(default, int8):
        assert set(quantized["probabilities"]) == set(pack.INTENTS)
        assert quantized["probabilities"] == pytest.approx(exact["probabilities"], abs=0.05)
        assert "reply" in quantized  # the pack's post-processing still applies

    # deploying again without a precision keeps the deployment's
    assert client.post("/v1/deployments", json={"model": model.id}).json()["precision"] == "int8"
    back = client.post("/v1/deployments", json={"model": model.id, "precision": "fp32"})
    assert back.json()["precision"] == "fp32"
    same_as_default = 1e-5 if host_default_precision() == "fp32" else 0.02  # bf16 keeps 2-3 digits
    assert predict(client, model=model.id, inputs=texts).json()["data"][0]["probabilities"] == pytest.approx(
        default[0]["probabilities"], abs=same_as_default
    )
    from tunery.tenants.models import AuditLog

    precisions = AuditLog.objects.filter(action="deployment.create", target=created.json()["id"]).order_by("id")
    assert [entry.details["precision"] for entry in precisions] == [host_default_precision(), "int8", "fp32"]


def test_an_unknown_precision_is_a_clear_400(setup):
    client, model = setup["client"], setup["models"]["intents"]
    refused = client.post("/v1/deployments", json={"model": model.id, "precision": "int4"})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "precision"
    assert "int8" in refused.json()["error"]["message"]
    assert client.get("/v1/deployments").json()["data"] == []


def test_deployment_quota_is_enforced(setup, make_model, artifacts):
    from tunery.tenants.models import Tenant

    client, models = setup["client"], setup["models"]
    Tenant.objects.filter(pk=setup["acme"].tenant.pk).update(max_deployments=1)
    forget_cached_keys()  # a bare UPDATE: this process's cached tenant would see it only after its TTL
    deploy(client, models["intents"])
    refused = client.post("/v1/deployments", json={"model": models["entities"].id})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "deployment_quota_exceeded"
    assert client.get("/v1/deployments").json()["data"][0]["model"] == models["intents"].id


def test_a_broken_artifact_deploys_as_failed_with_the_reason(setup, make_model, tmp_path):
    client = setup["client"]
    broken = make_model(setup["acme"].tenant, tmp_path / "nothing-here", "intents")
    response = client.post("/v1/deployments", json={"model": broken.id})
    assert response.status_code == 201
    assert response.json()["status"] == "failed"
    assert "tunery_artifact.json" in response.json()["error"]
    assert predict(client, model=broken.id, inputs=["hi"]).status_code == 409


def test_classification_selects_a_reply_or_hands_off(setup):
    from tunery.verticals import registry

    client, model = setup["client"], setup["models"]["intents"]
    deploy(client, model)
    texts = ["I was charged twice", "where is my parcel?", {"message": "I want my money back"}]
    response = predict(client, model=model.id, inputs=texts)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "prediction"
    assert [r["index"] for r in body["data"]] == [0, 1, 2]
    replies = pack.make_pack().config_defaults["replies"]
    for result in body["data"]:
        assert set(result["probabilities"]) == set(pack.INTENTS)
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)
        assert result["handoff"] is False
        assert result["reply"] == replies[result["label"]]

    # the tenant's pack config decides: above this confidence bar every answer is handed off
    registry.enable(setup["acme"].tenant, pack.PACK_ID, {"handoff_below": 0.99})
    handed_off = predict(client, model=model.id, inputs=texts).json()["data"]
    assert all(r["handoff"] is True and r["reply"] is None for r in handed_off)


def test_token_classification_returns_entities_with_character_offsets(setup):
    client, model = setup["client"], setup["models"]["entities"]
    deploy(client, model)
    text = "Grace Hopper met the Acme Corporation board in Paris"
    (result,) = predict(client, model=model.id, inputs=[text]).json()["data"]
    assert result["tokens"] == text.split()
    assert len(result["tags"]) == len(result["tokens"])
    for entity in result["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"]
        assert entity["type"] in ("ORG", "PER")
    tagged_words = sum(tag != "O" for tag in result["tags"])
    assert sum(len(e["text"].split()) for e in result["entities"]) == tagged_words


def test_token_classification_takes_pre_split_words_as_training_rows_hold_them(setup):
    client, model = setup["client"], setup["models"]["entities"]
    deploy(client, model)
    text = "Grace Hopper met the Acme Corporation board in Paris"
    response = predict(client, model=model.id, inputs=[text, {"tokens": text.split()}, {"tokens": ["Paris", ","]}])
    assert response.status_code == 200, response.text
    as_text, as_words, with_comma = response.json()["data"]
    assert as_words["tokens"] == text.split()
    assert as_words["tags"] == as_text["tags"]  # the same words give the same tags either way
    assert as_words["entities"] == as_text["entities"]
    assert with_comma["tokens"] == ["Paris", ","]
    assert len(with_comma["tags"]) == 2  # one tag per given word, as in training


@pytest.mark.parametrize(
    ("item", "param", "code"),
    [
        ({"tokens": []}, "inputs[0].tokens", "invalid_value"),
        ({"tokens": ["Grace", 3]}, "inputs[0].tokens[1]", "invalid_value"),
        ({"tokens": ["Grace Hopper"]}, "inputs[0].tokens[0]", "invalid_value"),
        ({"tokens": ["Grace"], "text": "Grace"}, "inputs[0]", "invalid_value"),
        ({"tokens": ["x" * 6000, "y" * 6000]}, "inputs[0].tokens", "input_too_long"),
    ],
)
def test_bad_pre_split_words_are_a_clear_400(setup, item, param, code):
    client, model = setup["client"], setup["models"]["entities"]
    deploy(client, model)
    response = predict(client, model=model.id, inputs=[item])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


def test_words_are_refused_by_a_model_that_takes_text(setup):
    client, model = setup["client"], setup["models"]["intents"]
    deploy(client, model)
    response = predict(client, model=model.id, inputs=[{"tokens": ["refund", "please"]}])
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("tokens_not_supported", "inputs[0].tokens")
    assert "token-classification" in error["message"]


def test_ranking_returns_items_sorted_by_the_models_score(setup, artifacts):
    client, model = setup["client"], setup["models"]["ranking"]
    deploy(client, model)
    user = "likes trail running and mountains"
    items = [
        {"id": f"sku-{i}", "text": t}
        for i, t in enumerate(["trail shoes", "a sofa", "ski goggles", "tea", "rain jacket"])
    ]
    response = predict(client, model=model.id, user=user, items=items)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [r["rank"] for r in data] == [1, 2, 3, 4, 5]
    assert sorted(r["item_id"] for r in data) == sorted(i["id"] for i in items)

    # the same scores, computed independently with transformers
    tokenizer = AutoTokenizer.from_pretrained(str(artifacts["ranking"]))
    reference = AutoModelForSequenceClassification.from_pretrained(str(artifacts["ranking"])).eval()
    encoded = tokenizer([user] * len(items), [i["text"] for i in items], padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = reference(**encoded).logits[:, 0].tolist()
    expected_order = [items[i]["id"] for i in sorted(range(len(items)), key=lambda i: -expected[i])]
    assert [r["item_id"] for r in data] == expected_order
    assert [r["score"] for r in data] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)


def test_openai_client_chat_completion_plain_and_streamed(setup):
    client, model = setup["client"], setup["models"]["assistant"]
    deploy(client, model)
    oa = openai.OpenAI(base_url=f"{setup['url']}/v1", api_key=setup["acme"].key, max_retries=0)
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Where is my parcel?"}]

    completion = oa.chat.completions.create(model=model.id, messages=messages, max_tokens=8, temperature=0)
    answer = completion.choices[0].message.content
    assert completion.model == model.id
    assert completion.choices[0].message.role == "assistant"
    assert isinstance(answer, str)
    assert answer
    assert completion.usage.completion_tokens == 8
    assert completion.choices[0].finish_reason == "length"

    stream = oa.chat.completions.create(
        model=model.id,
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed, piece by piece
    assert chunks[-1].usage.completion_tokens == 8

    text = oa.completions.create(model=model.id, prompt="Hello", max_tokens=5, temperature=0)
    assert text.choices[0].text
    assert text.usage.completion_tokens == 5
    pieces = list(oa.completions.create(model=model.id, prompt="Hello", max_tokens=5, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in pieces) == text.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"


def test_a_packs_text_filter_screens_chat_and_completions_plain_and_streamed(setup, make_model, artifacts):
    client, raw_model = setup["client"], setup["models"]["assistant"]
    screened_model = make_model(setup["acme"].tenant, artifacts["assistant"], "notes")  # same weights
    deploy(client, raw_model)
    deploy(client, screened_model)
    oa = openai.OpenAI(base_url=f"{setup['url']}/v1", api_key=setup["acme"].key, max_retries=0)
    messages = [{"role": "user", "content": "Summarise the note."}]

    def chat(model, **extra):
        return oa.chat.completions.create(model=model.id, messages=messages, max_tokens=6, temperature=0, **extra)

    raw = chat(raw_model).choices[0].message.content
    assert raw
    assert not raw.startswith("[screened]")
    whole = chat(screened_model)
    assert whole.choices[0].message.content == f"[screened] {raw.upper()}"
    assert whole.usage.completion_tokens == 6
    chunks = list(chat(screened_model, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == [f"[screened] {raw.upper()}"]  # never an unscreened piece on the wire
    assert chunks[-1].usage.completion_tokens == 6
    raw_text = oa.completions.create(model=raw_model.id, prompt="Note:", max_tokens=4, temperature=0)
    text = oa.completions.create(model=screened_model.id, prompt="Note:", max_tokens=4, temperature=0)
    assert text.choices[0].text == f"[screened] {raw_text.choices[0].text.upper()}"

    screened_model.vertical = "not_installed"  # a pack removed later: refused, not served unscreened
    screened_model.save(update_fields=["vertical"])
    with pytest.raises(openai.ConflictError) as refused:
        chat(screened_model)
    assert refused.value.body["code"] == "vertical_not_installed"


def test_a_tenant_cannot_reach_another_tenants_model(setup, make_tenant):
    client, models = setup["client"], setup["models"]
    intents = deploy(client, models["intents"])
    deploy(client, models["assistant"])
    other = make_tenant("globex", verticals=(pack.PACK_ID,))
    intruder = httpx.Client(base_url=setup["url"], headers={"Authorization": f"Bearer {other.key}"}, timeout=30)

    for response in (
        predict(intruder, model=models["intents"].id, inputs=["hi"]),
        intruder.post("/v1/deployments", json={"model": models["entities"].id}),
        intruder.get(f"/v1/deployments/{intents['id']}"),
        intruder.delete(f"/v1/deployments/{intents['id']}"),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["type"] == "not_found_error"
    assert intruder.get("/v1/deployments").json()["data"] == []
    oa = openai.OpenAI(base_url=f"{setup['url']}/v1", api_key=other.key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model=models["assistant"].id, messages=[{"role": "user", "content": "hi"}])
    assert predict(client, model=models["intents"].id, inputs=["still mine"]).status_code == 200


@pytest.mark.parametrize(
    "failure",
    [DatabaseError("database is locked"), TypeError("'NoneType' object is not iterable")],
    ids=["database error", "any other error"],  # the second seen from SQLite shared by the test server's threads
)
def test_a_failure_to_meter_a_served_prediction_does_not_turn_it_into_an_error(setup, monkeypatch, caplog, failure):
    from tunery.dashboard import services

    def fails(tenant):
        raise failure

    client, model = setup["client"], setup["models"]["intents"]
    deploy(client, model)
    monkeypatch.setattr(services, "count_prediction", fails)
    with caplog.at_level("ERROR", logger="tunery.dashboard.middleware"):
        answered = predict(client, model=model.id, inputs=["where is my parcel?"])
    assert answered.status_code == 200, answered.text
    assert answered.json()["data"][0]["label"] in pack.INTENTS
    assert "served prediction not counted" in caplog.text


def test_rate_limit_admits_exactly_the_limit_under_50_concurrent_requests(setup):
    from tunery.serving.ratelimit import limiter, tenant_key
    from tunery.tenants.models import Tenant

    client, model = setup["client"], setup["models"]["intents"]
    deploy(client, model)
    limit = 17
    Tenant.objects.filter(pk=setup["acme"].tenant.pk).update(predictions_per_minute=limit)
    forget_cached_keys()  # a bare UPDATE: this process's cached tenant would see it only after its TTL
    limiter().reset(f"{tenant_key(setup['acme'].tenant.pk)}:predictions")
    responses: list[httpx.Response] = []
    barrier = threading.Barrier(50)

    def call():
        with httpx.Client(base_url=setup["url"], headers=client.headers, timeout=60) as own:
            barrier.wait()
            responses.append(predict(own, model=model.id, inputs=["where is my parcel?"]))

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == limit, statuses
    assert statuses.count(429) == 50 - limit, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"inputs": ["hi"]}, "model", "missing_model"),
        ({"model": "MODEL", "inputs": "just a string"}, "inputs", "invalid_value"),
        ({"model": "MODEL", "inputs": []}, "inputs", "invalid_value"),
        ({"model": "MODEL", "inputs": [42]}, "inputs[0]", "invalid_value"),
        ({"model": "MODEL", "inputs": ["ok", {"message": ["a", "list"]}]}, "inputs[1].message", "invalid_value"),
        ({"model": "MODEL", "inputs": ["x" * 10_001]}, "inputs[0]", "input_too_long"),
        ({"model": "MODEL", "inputs": ["hi"] * 65}, "inputs", "too_many_items"),
        ({"model": "MODEL", "inputs": [{"other": "field"}]}, "inputs[0]", "missing_field"),
        ({"model": "MODEL", "user": "u", "items": ["a"]}, "items", "not_a_ranking_model"),
        ({"model": "MODEL", "inputs": ["hi"], "items": ["a"]}, "inputs", "invalid_value"),
    ],
)
def test_malformed_prediction_input_is_a_clear_400(setup, body, param, code):
    client, model = setup["client"], setup["models"]["intents"]
    deploy(client, model)
    if body.get("model") == "MODEL":
        body = {**body, "model": model.id}
    response = predict(client, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert error["message"]


def test_wrong_bodies_for_the_endpoint_are_refused(setup):
    client, models = setup["client"], setup["models"]
    deploy(client, models["intents"])
    deploy(client, models["assistant"])
    assert (
        client.post("/v1/predictions", content=b"[1, 2]", headers={"Content-Type": "application/json"}).status_code
        == 400
    )
    wrong_kind = predict(client, model=models["assistant"].id, user="u", items=["a"])
    assert wrong_kind.json()["error"]["code"] == "wrong_endpoint"
    too_many = predict(client, model=models["assistant"].id, inputs=["hi"] * 9)
    assert too_many.json()["error"]["code"] == "too_many_items"
    chat = client.post(
        "/v1/chat/completions", json={"model": models["intents"].id, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.json()["error"]["code"] == "wrong_endpoint"
    bad_messages = client.post(
        "/v1/chat/completions",
        json={"model": models["assistant"].id, "messages": [{"role": "wizard", "content": "hi"}]},
    )
    assert bad_messages.status_code == 400
    assert bad_messages.json()["error"]["param"] == "messages[0].role"
    too_many_tokens = client.post(
        "/v1/chat/completions",
        json={"model": models["assistant"].id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6},
    )
    assert too_many_tokens.json()["error"]["param"] == "max_tokens"
    huge = client.post(
        "/v1/predictions",
        content=b'{"model": "x", "inputs": ["' + b"a" * 2_000_000 + b'"]}',
        headers={"Content-Type": "application/json"},
    )
    assert huge.status_code == 413


def test_metrics_expose_requests_predictions_batches_and_jobs(setup):
    client, model = setup["client"], setup["models"]["intents"]
    deploy(client, model)
    assert predict(client, model=model.id, inputs=["a", "b", "c"]).status_code == 200
    predict(client, model=model.id, inputs=[7])  # a 400, counted as an error
    text = httpx.get(f"{setup['url']}/metrics").text
    assert 'tunery_http_requests_total{endpoint="v1/predictions",method="POST",status="200"}' in text
    assert 'tunery_http_request_errors_total{endpoint="v1/predictions",method="POST",status="400"}' in text
    assert 'tunery_http_request_duration_seconds_bucket{endpoint="v1/predictions"' in text
    assert 'tunery_prediction_duration_seconds_count{kind="sequence_classification"}' in text
    assert 'tunery_prediction_batch_size_bucket{kind="sequence_classification"' in text
    assert 'tunery_jobs{state="succeeded"} 4.0' in text  # the four fine-tuned models' jobs
    assert "tunery_queue_depth" in text
    assert "tunery_loaded_models" in text
    assert "tunery_rate_limited_requests_total" in text


def test_metrics_time_the_garbage_collectors_passes(setup):
    """Every GC pass of the process is timed: its callback only records, and the next request
    observes it into tunery_gc_pause_seconds (a pass may start while a metric's lock is held)."""
    import gc

    from tunery.monitoring import prometheus

    def full_passes() -> float:
        prometheus.observe_gc_pauses()  # what the previous requests left to observe
        for line in httpx.get(f"{setup['url']}/metrics").text.splitlines():
            if line.startswith('tunery_gc_pause_seconds_count{generation="2"}'):
                return float(line.split()[-1])
        return 0.0

    before = full_passes()
    gc.collect()
    gc.collect()
    assert full_passes() >= before + 2


def test_healthz_and_readyz(setup, settings):
    assert httpx.get(f"{setup['url']}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{setup['url']}/readyz")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert set(checks) == {"database", "broker", "storage", "model_storage", "packs", "rate_limits"}
    assert pack.PACK_ID in checks["packs"]["detail"]["loaded"]
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    down = httpx.get(f"{setup['url']}/readyz")
    assert down.status_code == 503
    assert down.json()["checks"]["broker"]["ok"] is False
    assert down.json()["checks"]["database"]["ok"] is True


def test_a_model_of_no_pack_serves_the_plain_decoding_and_one_of_a_missing_pack_is_refused(
    setup, make_model, artifacts
):
    client = setup["client"]
    items = [{"id": "a", "text": "trail shoes"}, {"id": "b", "text": "a sofa"}]
    missing = make_model(setup["acme"].tenant, artifacts["ranking"], "ranking")
    missing.vertical = "not_installed"
    missing.save(update_fields=["vertical"])
    deploy(client, missing)
    refused = predict(client, model=missing.id, user="likes hiking", items=items)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "vertical_not_installed"

    orphan = make_model(setup["acme"].tenant, artifacts["ranking"], "ranking")
    orphan.vertical = ""  # not trained for any pack
    orphan.save(update_fields=["vertical"])
    deploy(client, orphan)
    data = predict(client, model=orphan.id, user="likes hiking", items=items).json()["data"]
    assert [r["rank"] for r in data] == [1, 2]
    assert data[0]["score"] >= data[1]["score"]
    assert {r["item"]["id"] for r in data} == {"a", "b"}
    # the same pair scored through the plain inputs form gives the same score
    pairs = [{"text": "likes hiking", "text_pair": i["text"]} for i in items]
    plain = predict(client, model=orphan.id, inputs=pairs).json()["data"]
    assert {r["index"]: r["score"] for r in data} == pytest.approx({r["index"]: r["score"] for r in plain})
