"""Champion and challenger on one deployment, through the real HTTP API and runtime on tiny models:
shadow traffic never changes an answer, the canary share is honoured, promote and roll back keep
the history, every new endpoint is 404 for another tenant, and bad bodies are clear 400s."""

from __future__ import annotations

import itertools
import random

import httpx
import pytest

from tests.serving import builders, pack
from tunery_contract import TaskKind

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

TEXTS = [
    "I was charged twice",
    "where is my parcel?",
    "I want my money back",
    "the invoice is wrong",
    "my package never arrived",
    "please refund the order",
    "card declined again",
    "tracking number does not work",
]


@pytest.fixture(scope="module")
def rival_artifact(tmp_path_factory):
    """Another intents model (other random weights): answers differ from the champion's."""
    return builders.full_artifact(
        tmp_path_factory.mktemp("rival") / "intents",
        TaskKind.SEQUENCE_CLASSIFICATION,
        pack.INTENTS,
        seed=11,
        vertical=pack.PACK_ID,
        task="intents",
    )


@pytest.fixture
def setup(live_server, serving_pack, make_tenant, make_model, redis_rate_limits, artifacts, rival_artifact, settings):
    settings.TUNERY_TRAFFIC_PREFIX = f"{redis_rate_limits}:traffic"
    acme = make_tenant("acme", verticals=(pack.PACK_ID,), max_deployments=10)
    champion = make_model(acme.tenant, artifacts["intents"], "intents")
    challenger = make_model(acme.tenant, rival_artifact, "intents")
    client = httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {acme.key}"}, timeout=60)
    created = client.post("/v1/deployments", json={"model": champion.id, "name": "support-bot"})
    assert created.status_code == 201, created.text
    yield {
        "url": live_server.url,
        "acme": acme,
        "champion": champion,
        "challenger": challenger,
        "deployment": created.json(),
        "client": client,
    }
    client.close()


def predict(client: httpx.Client, model: str, texts=TEXTS) -> dict:
    response = client.post("/v1/predictions", json={"model": model, "inputs": list(texts)})
    assert response.status_code == 200, response.text
    return response.json()


def set_challenger(client: httpx.Client, deployment_id: str, **body) -> dict:
    response = client.patch(f"/v1/deployments/{deployment_id}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def traffic_of(client: httpx.Client, deployment_id: str) -> dict[str, dict]:
    from tunery.serving import routing

    assert routing.wait_for_shadows()
    rows = client.get(f"/v1/deployments/{deployment_id}").json()["traffic"]
    return {row["role"]: row for row in rows}


def test_the_deployment_answers_by_name_and_id_and_the_model_id_still_works(setup):
    client, deployment, champion = setup["client"], setup["deployment"], setup["champion"]
    assert deployment["name"] == "support-bot"
    assert deployment["champion"] == champion.id
    assert deployment["challenger"] is None
    by_model = predict(client, champion.id)
    for name in ("support-bot", deployment["id"]):
        answer = predict(client, name)
        assert answer["model"] == champion.id
        assert answer["deployment"] == deployment["id"]
        assert answer["served_by"] == "champion"
        assert answer["data"] == by_model["data"]
    unknown = client.post("/v1/predictions", json={"model": "no-such-bot", "inputs": ["hi"]})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


def test_shadow_traffic_never_changes_the_answer_and_is_counted(setup):
    client, deployment = setup["client"], setup["deployment"]
    champion, challenger = setup["champion"], setup["challenger"]
    before = predict(client, "support-bot")["data"]

    changed = set_challenger(client, deployment["id"], challenger=challenger.id, mode="shadow")
    assert (changed["challenger"], changed["mode"]) == (challenger.id, "shadow")
    rounds = 5
    for _ in range(rounds):
        for name in ("support-bot", champion.id):  # the champion's own id gets shadowed too
            answer = predict(client, name)
            assert answer["model"] == champion.id
            assert answer["served_by"] == "champion"
            assert answer["data"] == before

    counted = traffic_of(client, deployment["id"])
    assert counted["champion"]["model"] == champion.id
    assert counted["champion"]["requests"] == 1 + 2 * rounds
    shadow = counted["shadow"]
    assert shadow["model"] == challenger.id
    assert shadow["requests"] == 2 * rounds
    assert shadow["shadow_compared"] == 2 * rounds * len(TEXTS)
    assert 0 < shadow["mean_confidence"] <= 1
    assert shadow["handoff_rate"] is not None
    assert counted["champion"]["mean_latency_ms"] > 0

    # the challenger's own answers, once it serves, give the same agreement independently
    promoted = client.post(f"/v1/deployments/{deployment['id']}/promote")
    assert promoted.status_code == 200, promoted.text
    after = predict(client, "support-bot")
    assert after["model"] == challenger.id
    agreeing = sum(a["label"] == b["label"] for a, b in zip(after["data"], before))
    assert shadow["agreement"] == pytest.approx(agreeing / len(TEXTS))
    assert after["data"] != before  # other weights: the test would not see a leak otherwise

    scraped = httpx.get(f"{setup['url']}/metrics").text
    labels = f'deployment="{deployment["id"]}",model="{challenger.id}",role="shadow"'
    assert f"tunery_deployment_requests_total{{{labels}}} {float(2 * rounds)}" in scraped
    assert f"tunery_deployment_shadow_compared_total{{{labels}}} {float(shadow['shadow_compared'])}" in scraped
    agreed = round(shadow["agreement"] * shadow["shadow_compared"])
    assert f"tunery_deployment_shadow_agreed_total{{{labels}}} {float(agreed)}" in scraped


def test_canary_share_is_honoured_with_a_seed(setup):
    from tunery.serving import routing

    client, deployment = setup["client"], setup["deployment"]
    champion, challenger = setup["champion"], setup["challenger"]
    set_challenger(client, deployment["id"], challenger=challenger.id, mode="canary", canary_share=0.3)
    requests = 120
    routing.seed(2024)
    served = [predict(client, "support-bot", TEXTS[:1]) for _ in range(requests)]
    by_challenger = [a for a in served if a["served_by"] == "challenger"]
    assert all(a["model"] == challenger.id for a in by_challenger)
    assert all(a["model"] == champion.id for a in served if a["served_by"] == "champion")
    replay = random.Random(2024)  # the same draws: the split is exactly the seeded one
    assert len(by_challenger) == sum(replay.random() < 0.3 for _ in range(requests))
    assert abs(len(by_challenger) - 0.3 * requests) <= 4 * (requests * 0.3 * 0.7) ** 0.5

    # the model's own id is pinned to that model: no canary
    assert {predict(client, champion.id, TEXTS[:1])["model"] for _ in range(10)} == {champion.id}
    counted = traffic_of(client, deployment["id"])
    assert counted["challenger"]["requests"] == len(by_challenger)
    assert counted["champion"]["requests"] == requests - len(by_challenger) + 10


def test_promote_and_rollback_keep_the_history(setup):
    from tunery.tenants.models import AuditLog

    client, deployment = setup["client"], setup["deployment"]
    champion, challenger = setup["champion"], setup["challenger"]
    url = f"/v1/deployments/{deployment['id']}"
    nothing = client.post(f"{url}/promote")
    assert nothing.status_code == 409
    assert nothing.json()["error"]["code"] == "no_challenger"
    assert client.post(f"{url}/rollback").json()["error"]["code"] == "nothing_to_roll_back"

    set_challenger(client, deployment["id"], challenger=challenger.id, mode="canary", canary_share=0.5)
    promoted = client.post(f"{url}/promote").json()
    assert (promoted["champion"], promoted["challenger"], promoted["mode"]) == (challenger.id, None, None)
    assert predict(client, "support-bot")["model"] == challenger.id
    old = client.post("/v1/predictions", json={"model": champion.id, "inputs": ["hi"]})
    assert old.status_code == 409
    assert old.json()["error"]["code"] == "model_not_deployed"

    rolled = client.post(f"{url}/rollback").json()
    assert rolled["champion"] == champion.id
    assert predict(client, "support-bot")["model"] == champion.id

    history = client.get(f"{url}/history").json()["data"]
    assert [(h["model"], h["action"]) for h in history] == [
        (champion.id, "deploy"),
        (challenger.id, "promote"),
        (champion.id, "rollback"),
    ]
    actor = f"key:{setup['acme'].api_key.prefix}"
    assert {h["actor"] for h in history} == {actor}
    assert [h["ended_at"] is None for h in history] == [False, False, True]
    for earlier, later in itertools.pairwise(history):
        assert earlier["ended_at"] == later["started_at"]
    actions = AuditLog.objects.filter(target=deployment["id"]).values_list("action", flat=True)
    assert {"deployment.challenger", "deployment.promote", "deployment.rollback"} <= set(actions)


def test_another_tenants_deployment_is_404_everywhere(setup, make_tenant, make_model, artifacts):
    deployment, challenger = setup["deployment"], setup["challenger"]
    other = make_tenant("globex", verticals=(pack.PACK_ID,), max_deployments=10)
    own_model = make_model(other.tenant, artifacts["intents"], "intents")
    with httpx.Client(base_url=setup["url"], headers={"Authorization": f"Bearer {other.key}"}, timeout=60) as globex:
        url = f"/v1/deployments/{deployment['id']}"
        for response in (
            globex.get(url),
            globex.patch(url, json={"challenger": own_model.id, "mode": "shadow"}),
            globex.post(f"{url}/promote"),
            globex.post(f"{url}/rollback"),
            globex.get(f"{url}/history"),
            globex.delete(url),
        ):
            assert response.status_code == 404, response.text
        for name in ("support-bot", deployment["id"]):
            refused = globex.post("/v1/predictions", json={"model": name, "inputs": ["hi"]})
            assert refused.status_code == 404
        # and acme cannot take globex's model as a challenger
        own = globex.post("/v1/deployments", json={"model": own_model.id, "name": "support-bot"})
        assert own.status_code == 201  # names are per tenant
    taken = setup["client"].patch(
        f"/v1/deployments/{deployment['id']}", json={"challenger": own_model.id, "mode": "shadow"}
    )
    assert taken.status_code == 404
    assert taken.json()["error"]["code"] == "model_not_found"
    assert setup["client"].get(f"/v1/deployments/{deployment['id']}").json()["challenger"] is None
    assert predict(setup["client"], "support-bot")["model"] == setup["champion"].id
    assert challenger.id != own_model.id


@pytest.mark.parametrize(
    ("body", "param", "status", "code"),
    [
        ({"mode": "blue", "challenger": "x"}, "mode", 400, "invalid_value"),
        ({"canary_share": 0}, "canary_share", 400, "invalid_value"),
        ({"canary_share": 1.5}, "canary_share", 400, "invalid_value"),
        ({"canary_share": "half"}, "canary_share", 400, "invalid_value"),
        ({"gate_margin": -0.1}, "gate_margin", 400, "invalid_value"),
        ({"name": "has space"}, "name", 400, "invalid_value"),
        ({"name": "deploy-abc"}, "name", 400, "invalid_value"),
        ({"challenger": 7, "mode": "shadow"}, "challenger", 400, "invalid_value"),
        ({"challenger": "CHALLENGER"}, "mode", 400, "missing_mode"),
        ({"challenger": "CHAMPION", "mode": "shadow"}, "challenger", 409, "already_champion"),
        ({"challenger": "ENTITIES", "mode": "shadow"}, "challenger", 409, "challenger_mismatch"),
        ({"challenger": "ft:nope", "mode": "shadow"}, "model", 404, "model_not_found"),
        ({"evaluation_file": "file-nope"}, "evaluation_file", 400, "file_not_found"),
        ({"mode": "canary", "canary_share": 0.5}, "challenger", 400, "missing_challenger"),
    ],
)
def test_bad_changes_are_clear_errors_and_change_nothing(setup, make_model, artifacts, body, param, status, code):
    client, deployment = setup["client"], setup["deployment"]
    ids = {
        "CHALLENGER": setup["challenger"].id,
        "CHAMPION": setup["champion"].id,
        "ENTITIES": make_model(setup["acme"].tenant, artifacts["entities"], "entities").id,
    }
    body = {k: ids.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    url = f"/v1/deployments/{deployment['id']}"
    before = client.get(url).json()
    refused = client.patch(url, json=body)
    assert refused.status_code == status, refused.text
    assert refused.json()["error"]["param"] == param
    assert refused.json()["error"]["code"] == code
    after = client.get(url).json()
    assert {k: v for k, v in after.items() if k != "traffic"} == {k: v for k, v in before.items() if k != "traffic"}


def test_a_taken_name_is_a_conflict(setup, make_model, artifacts):
    client = setup["client"]
    other = make_model(setup["acme"].tenant, artifacts["entities"], "entities")
    second = client.post("/v1/deployments", json={"model": other.id})
    assert second.status_code == 201
    refused = client.patch(f"/v1/deployments/{second.json()['id']}", json={"name": "support-bot"})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "deployment_name_taken"
    renamed = client.patch(f"/v1/deployments/{second.json()['id']}", json={"name": "tagger"})
    assert renamed.json()["name"] == "tagger"


def test_agreement_rules():
    from tunery.serving.routing import agrees

    assert agrees({"label": "a", "score": 0.2}, {"label": "a", "score": 0.9})
    assert not agrees({"label": "b"}, {"label": "a"})
    assert agrees({"labels": ["x", "y"]}, {"labels": ["y", "x"]})
    assert not agrees({"tags": ["O", "B-PER"]}, {"tags": ["O", "O"]})
    assert agrees({"score": 3.02}, {"score": 3.0})
    assert not agrees({"score": 0.5}, {"score": 0.0})


def test_only_the_promotion_module_writes_the_champion_and_challenger():
    """tunery.serving.promotion is the one writer of a deployment's model, challenger, mode and
    canary share: no other module that imports Deployment updates, saves or assigns them
    (creating a deployment with its first champion in services.deploy is the one exception)."""
    import ast
    from pathlib import Path

    import tunery

    fields = {"model", "model_id", "challenger", "challenger_id", "mode", "canary_share"}
    platform = Path(tunery.__file__).resolve().parent
    writers = []
    for path in sorted(platform.rglob("*.py")):
        if "migrations" in path.parts or path == platform / "serving" / "promotion.py":
            continue
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
        if "Deployment" not in imported:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else ""
                updates = name in ("update", "bulk_update") and any(k.arg in fields for k in node.keywords)
                saves = any(
                    k.arg in ("fields", "update_fields") and fields & set(ast.literal_eval(k.value))
                    for k in node.keywords
                    if isinstance(k.value, ast.List | ast.Tuple)
                )
                if updates or saves:
                    writers.append(f"{path.name}:{node.lineno}")
            elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Attribute) and target.attr in fields - {"model"}:
                        writers.append(f"{path.name}:{node.lineno}")
    assert writers == [], f"champion/challenger written outside tunery.serving.promotion: {writers}"


def test_the_admin_shows_traffic_and_history_and_rolls_back(setup, admin_client):
    from tunery.serving.models import Deployment

    client, deployment = setup["client"], setup["deployment"]
    champion, challenger = setup["champion"], setup["challenger"]
    set_challenger(client, deployment["id"], challenger=challenger.id, mode="shadow")
    predict(client, "support-bot")
    traffic_of(client, deployment["id"])  # the shadow copy has been counted
    client.post(f"/v1/deployments/{deployment['id']}/promote")
    page = admin_client.get(f"/admin/serving/deployment/{deployment['id']}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Traffic per model" in html
    assert f"{challenger.id} (shadow): 1 requests" in html
    assert f"{champion.id} (champion): 1 requests" in html
    assert "promote" in html  # the history inline
    rolled = admin_client.post(
        "/admin/serving/deployment/", {"action": "roll_back", "_selected_action": [deployment["id"]]}, follow=True
    )
    assert rolled.status_code == 200
    assert Deployment.objects.get(pk=deployment["id"]).model_id == champion.id
    assert client.get(f"/v1/deployments/{deployment['id']}/history").json()["data"][-1]["actor"].startswith("admin:")


def test_deleting_the_challenger_model_takes_it_off_the_deployment(setup):
    client, deployment, challenger = setup["client"], setup["deployment"], setup["challenger"]
    set_challenger(client, deployment["id"], challenger=challenger.id, mode="canary", canary_share=1.0)
    assert predict(client, "support-bot")["served_by"] == "challenger"
    deleted = client.delete(f"/v1/models/{challenger.id}")
    assert deleted.status_code == 200, deleted.text
    after = client.get(f"/v1/deployments/{deployment['id']}").json()
    assert after["challenger"] is None
    assert after["mode"] is None
    assert predict(client, "support-bot")["served_by"] == "champion"


def test_a_create_naming_an_unknown_challenger_deploys_nothing(setup, make_model, artifacts):
    client = setup["client"]
    other = make_model(setup["acme"].tenant, artifacts["intents"], "intents")
    refused = client.post("/v1/deployments", json={"model": other.id, "challenger": "ft:nope", "mode": "shadow"})
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "model_not_found"
    assert [d["model"] for d in client.get("/v1/deployments").json()["data"]] == [setup["champion"].id]


def test_the_openai_client_reaches_a_language_model_by_its_deployment_name(setup, make_model, artifacts):
    import openai

    client = setup["client"]
    model = make_model(setup["acme"].tenant, artifacts["assistant"], "assistant")
    created = client.post("/v1/deployments", json={"model": model.id, "name": "writer"})
    assert created.status_code == 201, created.text
    oa = openai.OpenAI(base_url=f"{setup['url']}/v1", api_key=setup["acme"].key, max_retries=0)
    messages = [{"role": "user", "content": "hello"}]
    by_name = oa.chat.completions.create(model="writer", messages=messages, max_tokens=4, temperature=0)
    by_id = oa.chat.completions.create(model=model.id, messages=messages, max_tokens=4, temperature=0)
    assert by_name.model == model.id
    assert by_name.choices[0].message.content == by_id.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="no-such-writer", messages=messages, max_tokens=4)
