"""``out_of_scope_label`` on job creation: a named label must be one of the training file's labels
(a 400 naming the knob and the labels, not a job that fails later); "auto" and null are stored as
the engine reads them. A hand-off target on a task without a hand-off threshold is a 400 too."""

from __future__ import annotations

from tunery.jobs.models import FineTuningJob


def test_a_named_label_that_is_not_in_the_training_data_is_a_400(acme, training_file, create_job):
    response = create_job(acme, training_file, out_of_scope_label="oos")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("out_of_scope_label", "invalid_hyperparameter")
    assert "out_of_scope_label 'oos' is not a label of the training data" in error["message"]
    assert "'negative', 'positive'" in error["message"]
    near = create_job(acme, training_file, hyperparameters={"out_of_scope_label": "Negative"})
    assert near.status_code == 400
    assert "did you mean 'negative'" in near.json()["error"]["message"]
    assert not FineTuningJob.objects.exists()


def test_a_label_of_the_data_auto_and_null_are_accepted(acme, training_file, create_job, api):
    named = create_job(acme, training_file, out_of_scope_label="negative")
    assert named.status_code == 200, named.content
    assert (
        FineTuningJob.objects.get(pk=named.json()["id"]).requested_hyperparameters["out_of_scope_label"] == "negative"
    )
    auto = create_job(acme, training_file, out_of_scope_label="auto")
    assert auto.status_code == 200, auto.content
    assert "out_of_scope_label" not in FineTuningJob.objects.get(pk=auto.json()["id"]).requested_hyperparameters
    body = {"model": named.json()["model"], "training_file": training_file, "vertical": "dummy", "task": "sentiment"}
    off = api.post("/v1/fine_tuning/jobs", {**body, "out_of_scope_label": None}, format="json", **acme.headers)
    assert off.status_code == 200, off.content
    assert FineTuningJob.objects.get(pk=off.json()["id"]).requested_hyperparameters["out_of_scope_label"] is None
    empty = create_job(acme, training_file, out_of_scope_label="")
    assert empty.status_code == 400
    assert empty.json()["error"]["param"] == "out_of_scope_label"


def test_a_dry_run_shows_the_label_the_engine_will_take(acme, training_file, create_job):
    auto = create_job(acme, training_file, dry_run=True)
    assert auto.status_code == 200, auto.content
    assert auto.json()["resolved_hyperparameters"]["out_of_scope_label"] is None  # no label named like oos
    named = create_job(acme, training_file, dry_run=True, out_of_scope_label="negative")
    assert named.json()["resolved_hyperparameters"]["out_of_scope_label"] == "negative"


def test_a_hand_off_target_on_a_task_without_a_hand_off_threshold_is_a_400(api, make_tenant, base_model, media_root):
    """Only a single-label classifier has a hand-off threshold: a coverage or precision target on
    an entity tagger would be ignored by the engine, so it is refused up front."""
    import json

    from django.core.files.uploadedfile import SimpleUploadedFile

    clinic = make_tenant("clinic", role="admin", verticals=("medical",))
    row = {"tokens": ["Aspirin", "eases", "headache"], "tags": ["B-Chemical", "O", "B-Disease"]}
    data = {"file": SimpleUploadedFile("ner.jsonl", (json.dumps(row) + "\n").encode()), "purpose": "fine-tune"}
    file_id = api.post("/v1/files", data, format="multipart", **clinic.headers).json()["id"]
    body = {"model": base_model.name, "training_file": file_id, "vertical": "medical", "task": "clinical_ner"}
    for name in ("handoff_coverage", "handoff_precision"):
        response = api.post(
            "/v1/fine_tuning/jobs", {**body, "hyperparameters": {name: 0.9}}, format="json", **clinic.headers
        )
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (name, "invalid_hyperparameter")
        assert "token_classification" in error["message"]
    off = {**body, "hyperparameters": {"handoff_coverage": None}}
    assert api.post("/v1/fine_tuning/jobs", off, format="json", **clinic.headers).status_code == 200
    assert FineTuningJob.objects.count() == 1
