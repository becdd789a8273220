"""Alert rules fire signed webhooks to a real HTTP receiver running in the test."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.serving import pack
from tests.serving.test_feedback import log_answers, post, predict, served  # noqa: F401  # served: a fixture
from tunery.celery import app

pytestmark = pytest.mark.django_db


class Receiver:
    """A webhook endpoint on loopback answering each POST with the next of ``statuses``."""

    def __init__(self, statuses: list[int]):
        self.statuses = list(statuses)
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/tunery"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    started = Receiver([500, 200])  # fails once, then takes it
    yield started
    started.close()


@pytest.fixture
def webhooks_allowed(settings, monkeypatch):
    settings.TUNERY_WEBHOOKS_ALLOW_PRIVATE = True  # the receiver is on loopback
    monkeypatch.setitem(app.conf, "task_always_eager", True)
    return settings


def create_rule(served, **body):  # noqa: F811
    from tunery.serving.models import Deployment

    deployment = Deployment.objects.get(model=served["models"]["intents"])
    body = {"deployment": deployment.id, **body}
    return served["api"].post("/v1/alert_rules", body, format="json", **served["acme"].headers)


def evaluate(capture):
    from tunery.feedback import alerts

    with capture(execute=True):
        return alerts.evaluate_rules()


def test_a_firing_rule_sends_exactly_one_signed_webhook_and_retries_a_500(
    served,  # noqa: F811
    receiver,
    webhooks_allowed,
    django_capture_on_commit_callbacks,
):
    created = create_rule(served, kind="handoff_rate", threshold=0.5, window_minutes=15, webhook_url=receiver.url)
    assert created.status_code == 201, created.content
    rule = created.json()
    assert rule["secret"].startswith("whsec-")
    assert "secret" not in served["api"].get(f"/v1/alert_rules/{rule['id']}", **served["acme"].headers).json()

    log_answers(served, ["billing"] * 10, handoff=False)
    assert evaluate(django_capture_on_commit_callbacks) == []  # hand-off rate 0: quiet
    assert receiver.received == []

    log_answers(served, ["refund"] * 30, handoff=True)  # 30 of 40 handed off: 0.75 > 0.5
    deliveries = evaluate(django_capture_on_commit_callbacks)
    assert len(deliveries) == 1
    assert len(receiver.received) == 2  # the 500, then the retry
    (first_headers, first_body), (headers, body) = receiver.received
    assert body == first_body
    assert headers["Tunery-Delivery"] == first_headers["Tunery-Delivery"] == deliveries[0]
    timestamp, digest = (part.split("=", 1)[1] for part in headers["Tunery-Signature"].split(","))
    expected = hmac.new(rule["secret"].encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(digest, expected)
    payload = json.loads(body)
    assert payload["kind"] == "handoff_rate"
    assert payload["rule"] == rule["id"]
    assert payload["value"] == pytest.approx(0.75)

    assert evaluate(django_capture_on_commit_callbacks) == []  # still firing: no second alert
    assert len(receiver.received) == 2
    log = served["api"].get(f"/v1/alert_rules/{rule['id']}/deliveries", **served["acme"].headers).json()["data"]
    assert [(d["status"], d["attempts"], d["last_status_code"]) for d in log] == [("delivered", 2, 200)]
    assert served["api"].get(f"/v1/alert_rules/{rule['id']}", **served["acme"].headers).json()["firing"] is True
    theirs = served["api"].get(f"/v1/alert_rules/{rule['id']}/deliveries", **served["globex"].headers)
    assert theirs.status_code == 404


def test_a_receiver_that_never_answers_gets_a_bounded_retry(
    served,  # noqa: F811
    webhooks_allowed,
    django_capture_on_commit_callbacks,
):
    webhooks_allowed.TUNERY_WEBHOOK_TIMEOUT_SECONDS = 0.3
    webhooks_allowed.TUNERY_WEBHOOK_MAX_ATTEMPTS = 3
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections wait in the backlog; nothing ever answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        assert create_rule(served, kind="handoff_rate", threshold=0.1, webhook_url=url).status_code == 201
        log_answers(served, ["refund"] * 10, handoff=True)
        (delivery_id,) = evaluate(django_capture_on_commit_callbacks)
    finally:
        silent.close()
    from tunery.feedback.models import WebhookDelivery

    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert "Timeout" in delivery.last_error


def test_private_webhook_urls_are_refused_unless_the_operator_allows_them(served, settings):  # noqa: F811
    settings.TUNERY_WEBHOOKS_ALLOW_PRIVATE = False
    for url in ("http://127.0.0.1:9/hook", "http://10.0.0.8/hook", "http://169.254.169.254/latest", "ftp://x.org/a"):
        refused = create_rule(served, kind="drift", webhook_url=url)
        assert refused.status_code == 400, url
        assert refused.json()["error"]["param"] == "webhook_url"
    from tunery.feedback.models import AlertRule

    assert not AlertRule.objects.exists()


def test_rules_take_the_packs_defaults_and_bad_rules_are_400(served, webhooks_allowed):  # noqa: F811
    drift = create_rule(served, kind="drift", webhook_url="http://127.0.0.1:9/hook")
    assert drift.status_code == 201
    assert (drift.json()["threshold"], drift.json()["window_minutes"]) == (0.2, 60)
    surge = create_rule(served, kind="negative_surge", webhook_url="http://127.0.0.1:9/hook")
    assert surge.status_code == 400
    assert surge.json()["error"]["param"] == "threshold"
    unknown = create_rule(served, kind="sunspots", webhook_url="http://127.0.0.1:9/hook")
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "kind"
    finance = served["api"].get("/v1/alert_rules/defaults?vertical=finance_sentiment", **served["acme"].headers)
    kinds = {(r["kind"], r["label"]) for r in finance.json()["data"]}
    assert ("negative_surge", "negative") in kinds
    assert ("drift", None) in kinds
    other = served["api"].post(
        "/v1/alert_rules",
        {"deployment": drift.json()["deployment"], "kind": "drift", "webhook_url": "http://127.0.0.1:9/h"},
        format="json",
        **served["globex"].headers,
    )
    assert other.status_code == 404


def test_metrics_show_each_deployments_drift_and_hand_off(served, client):  # noqa: F811
    job = served["models"]["intents"].job
    job.data_profile = {"classes": {"counts": {"billing": 50, "shipping": 30, "refund": 20}}}
    job.save(update_fields=["data_profile"])
    deployment = log_answers(served, ["refund"] * 40, handoff=True)
    text = client.get("/metrics").content.decode()
    labels = f'deployment="{deployment.id}",model="{deployment.model_id}",tenant="acme"'
    assert f"tunery_deployment_predictions{{{labels}}} 40.0" in text
    assert f"tunery_deployment_handoff_rate{{{labels}}} 1.0" in text
    psi = next(line for line in text.splitlines() if line.startswith(f"tunery_deployment_label_psi{{{labels}}}"))
    assert float(psi.rsplit(" ", 1)[1]) > 0.2


def test_negative_surge_and_accuracy_drop_rules_fire(
    served,  # noqa: F811
    webhooks_allowed,
    django_capture_on_commit_callbacks,
):
    good = Receiver([])
    try:
        surge = create_rule(served, kind="negative_surge", label="billing", threshold=0.6, webhook_url=good.url)
        assert surge.status_code == 201, surge.content
        model = served["models"]["intents"]
        model.metrics = {"accuracy": 0.9}
        model.save(update_fields=["metrics"])
        drop = create_rule(served, kind="accuracy_drop", webhook_url=good.url)
        assert drop.json()["threshold"] == 0.1  # the default for every pack

        log_answers(served, ["billing"] * 2 + ["refund"] * 8)  # 20% billing: no surge
        assert evaluate(django_capture_on_commit_callbacks) == []
        log_answers(served, ["billing"] * 40)  # 42 of 50: a surge
        answer = predict(served, ["a", "b"])  # feedback says half of these are wrong: 0.5 < 0.9 - 0.1
        wrong = next(label for label in pack.INTENTS if label != answer["data"][1]["label"])
        post(served, f"/v1/predictions/{answer['id']}/feedback", {"index": 0, "label": answer["data"][0]["label"]})
        post(served, f"/v1/predictions/{answer['id']}/feedback", {"index": 1, "label": wrong})
        assert len(evaluate(django_capture_on_commit_callbacks)) == 2
        kinds = sorted(json.loads(body)["kind"] for _, body in good.received)
        assert kinds == ["accuracy_drop", "negative_surge"]
    finally:
        good.close()


def test_a_delivery_whose_message_was_lost_is_sent_by_the_next_check(served, receiver, webhooks_allowed):  # noqa: F811
    from datetime import timedelta

    from django.utils import timezone

    from tunery.feedback import alerts
    from tunery.feedback.models import WebhookDelivery

    receiver.statuses = []  # answers 200
    assert create_rule(served, kind="handoff_rate", threshold=0.1, webhook_url=receiver.url).status_code == 201
    log_answers(served, ["refund"] * 10, handoff=True)
    (delivery_id,) = alerts.evaluate_rules()  # its on-commit message never goes out (as if the broker were down)
    assert receiver.received == []
    assert alerts.resend_overdue() == []  # not overdue yet
    assert alerts.resend_overdue(timezone.now() + timedelta(minutes=5)) == [delivery_id]
    assert len(receiver.received) == 1
    assert WebhookDelivery.objects.get(pk=delivery_id).status == "delivered"
    assert alerts.resend_overdue(timezone.now() + timedelta(minutes=5)) == []  # delivered: never again
