"""The `tunery` CLI against a live server over real HTTP (pytest-django's live_server)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import dummy_pack
import pytest

from tunery_client.cli import (
    CliError,
    headline,
    load_settings,
    main,
    parse_hyperparameters,
    phase_of,
    progress_of,
)

# ------------------------------------------------------------------------------------ configuration


def test_flags_beat_environment_which_beats_the_config_file(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('api_key = "from-file"\nbase_url = "http://file.example:9000/"\n')
    monkeypatch.delenv("TUNERY_API_KEY", raising=False)
    monkeypatch.delenv("TUNERY_BASE_URL", raising=False)
    assert load_settings(path=config).api_key == "from-file"
    assert load_settings(path=config).base_url == "http://file.example:9000"
    monkeypatch.setenv("TUNERY_API_KEY", "from-env")
    assert load_settings(path=config).api_key == "from-env"
    assert load_settings(api_key="from-flag", base_url="http://flag:1", path=config).api_key == "from-flag"


def test_config_file_under_xdg_config_home_is_read(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNERY_API_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "tunery").mkdir()
    (tmp_path / "tunery" / "config.toml").write_text('api_key = "xdg-key"\n')
    assert load_settings().api_key == "xdg-key"


def test_missing_key_and_broken_config_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNERY_API_KEY", raising=False)
    with pytest.raises(CliError, match="no API key"):
        load_settings(path=tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("api_key = \n")
    with pytest.raises(CliError, match="not valid TOML"):
        load_settings(path=broken)


def test_hyperparameter_overrides_parse_numbers_and_keep_auto():
    assert parse_hyperparameters(["n_epochs=3", "learning_rate=2e-4", "batch_size=auto"]) == {
        "n_epochs": 3,
        "learning_rate": 2e-4,
        "batch_size": "auto",
    }
    with pytest.raises(CliError, match="name=value"):
        parse_hyperparameters(["n_epochs"])


def test_progress_comes_from_the_job_or_else_its_latest_metrics_event():
    assert progress_of({"progress": {"step": 4, "total_steps": 10}}, []) == (4, 10)
    events = [{"type": "metrics", "data": {"step": 2, "total_steps": 8}}, {"type": "message", "data": None}]
    assert progress_of({"progress": None}, events) == (2, 8)
    assert progress_of({}, []) == (0, None)


def test_watch_says_what_a_job_does_before_its_first_step():
    assert phase_of({"status": "validating_files"}, 0) == "checking the data files"
    assert phase_of({"status": "queued"}, 0) == "waiting for a worker"
    assert phase_of({"status": "running"}, 0) == "loading the model and data"
    assert phase_of({"status": "running"}, 3) == "training"
    assert phase_of({"status": "succeeded"}, 10) == "succeeded"


def test_progress_line_shows_headline_metrics_not_per_class_breakdowns():
    shown = headline({"recall/a": 1.0, "full_valid_loss": 0.5, "mcc": 0.2, "valid_loss": 0.5, "accuracy": 0.9})
    assert list(shown) == ["valid_loss", "accuracy", "mcc"]


# --------------------------------------------------------------------------------------- live server


@pytest.fixture
def private_broker(tmp_path):
    """Wake-up messages of jobs created here go to a private folder, not the repo's var/."""
    from tunery.celery import app

    saved = dict(app.conf.broker_transport_options or {})
    folder = tmp_path / "broker"
    folder.mkdir()
    app.conf.broker_transport_options = {
        **saved,
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(folder / "control"),
    }
    yield folder
    app.conf.broker_transport_options = saved


@pytest.fixture
def cli(transactional_db, live_server, make_tenant, dummy_packs, base_model, media_root, private_broker, capsys):
    tenant = make_tenant("acme", role="admin")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--api-key", tenant.key, "--base-url", live_server.url, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    run.tenant = tenant
    return run


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_bytes(dummy_pack.sample_jsonl())
    return path


def test_verticals_list_shows_the_enabled_packs_tasks(cli):
    code, out, _ = cli("verticals", "list")
    assert code == 0
    assert "dummy" in out
    assert "sentiment" in out
    assert "dummy_other" not in out  # installed, not enabled for this tenant


def test_files_upload_then_list(cli, data_file):
    code, out, _ = cli("--json", "files", "upload", str(data_file))
    assert code == 0
    uploaded = json.loads(out)
    assert uploaded["bytes"] == data_file.stat().st_size
    code, out, _ = cli("files", "list")
    assert code == 0
    assert uploaded["id"] in out
    assert "train.jsonl" in out


def test_upload_of_a_missing_file_fails_cleanly(cli, tmp_path):
    code, _, err = cli("files", "upload", str(tmp_path / "nope.jsonl"))
    assert code == 1
    assert "no such file" in err


def test_jobs_create_from_pack_defaults_list_and_cancel(cli, data_file):
    from tunery.jobs.models import FineTuningJob

    code, out, err = cli(
        "--json", "jobs", "create", "--vertical", "dummy", "--file", str(data_file), "-p", "n_epochs=1", "--seed", "7"
    )
    assert code == 0, err
    job = json.loads(out)
    assert "pack defaults" in err
    assert "uploaded" in err
    row = FineTuningJob.objects.get(pk=job["id"])
    assert (row.vertical, row.task) == ("dummy", "sentiment")  # the pack's first task
    assert row.requested_hyperparameters["n_epochs"] == 1
    assert row.seed == 7

    code, out, _ = cli("jobs", "list")
    assert code == 0
    assert job["id"] in out

    code, out, _ = cli("jobs", "cancel", job["id"])
    assert code == 0
    assert "cancel" in out
    row.refresh_from_db()
    assert row.status == "cancelled" or row.requested_action == "cancel"


def test_jobs_create_for_a_pack_not_enabled_is_refused_before_anything_is_sent(cli, data_file):
    from tunery.files.models import File

    code, _, err = cli("jobs", "create", "--vertical", "dummy_other", "--file", str(data_file))
    assert code == 1
    assert "not enabled" in err
    assert not File.objects.exists()  # refused before the upload


def test_server_errors_are_reported_with_status_and_message(cli):
    code, _, err = cli("jobs", "create", "--vertical", "dummy", "--file", "file-doesnotexist")
    assert code == 1
    assert "HTTP 4" in err
    code, _, err = cli("--api-key", "tny_wrong_key", "jobs", "list")
    assert code == 1
    assert "HTTP 401" in err


def test_watch_prints_events_and_exits_with_the_jobs_outcome(cli, data_file):
    from tunery.jobs.models import FineTuningJob, JobEvent

    code, out, _ = cli("--json", "jobs", "create", "--vertical", "dummy", "--file", str(data_file))
    job_id = json.loads(out)["id"]
    job = FineTuningJob.objects.get(pk=job_id)
    for step, loss in ((1, 0.7), (2, 0.4)):
        JobEvent.objects.create(
            job=job, type="metrics", message=f"step {step}", data={"step": step, "total_steps": 2, "train_loss": loss}
        )
    JobEvent.objects.create(job=job, message="The job failed: labels unknown")
    FineTuningJob.objects.filter(pk=job_id).update(status="failed", error={"message": "labels unknown"})

    code, out, err = cli("jobs", "watch", job_id, "--poll", "0.1")
    assert code == 1  # a failed job: non-zero exit status
    assert "labels unknown" in err  # the job's message events are printed
    assert "2/2" in err  # the bar reached the last step of the metrics events
    assert "train_loss=0.4" in err  # live metrics in the progress line
    assert "failed" in out


def test_listings_show_dates_not_unix_timestamps(cli, data_file):
    code, out, _ = cli("files", "upload", str(data_file))
    assert code == 0
    code, out, _ = cli("files", "list")
    created = out.splitlines()[1].split()[-2:]  # the CREATED_AT column: date and time
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", created[0]), out
    assert re.fullmatch(r"\d{2}:\d{2}:\d{2}", created[1]), out


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(cli, data_file, live_server):
    """`tunery jobs events ID | head -1`: no BrokenPipeError traceback."""
    from tunery.jobs.models import FineTuningJob, JobEvent

    _, out, _ = cli("--json", "jobs", "create", "--vertical", "dummy", "--file", str(data_file))
    job = FineTuningJob.objects.get(pk=json.loads(out)["id"])
    JobEvent.objects.bulk_create([JobEvent(job=job, message=f"event {i} " + "x" * 200) for i in range(400)])
    env = {**os.environ, "TUNERY_API_KEY": cli.tenant.key, "TUNERY_BASE_URL": live_server.url}
    piped = subprocess.run(
        ["bash", "-c", f"{shlex.quote(sys.executable)} -m tunery_client.cli jobs events {job.pk} | head -1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert len(piped.stdout.splitlines()) == 1
    assert "Traceback" not in piped.stderr, piped.stderr
    assert "BrokenPipeError" not in piped.stderr


@pytest.fixture
def deployed_model_row(cli, tmp_path):
    """A succeeded job's fine-tuned model with a real (tiny, random) artifact of the serving tests' pack."""
    from tests.serving import builders
    from tests.serving import pack as serving_pack
    from tunery.catalog.models import BaseModel, FineTunedModel
    from tunery.files.models import File
    from tunery.jobs.models import FineTuningJob, JobStatus
    from tunery.verticals import registry
    from tunery_contract import TaskKind
    from tunery_contract.discovery import registered

    artifact = builders.full_artifact(
        tmp_path / "intents",
        TaskKind.SEQUENCE_CLASSIFICATION,
        serving_pack.INTENTS,
        vertical=serving_pack.PACK_ID,
        task="intents",
    )
    tenant = cli.tenant.tenant
    with registered(serving_pack.make_pack()):
        registry.reload()
        registry.enable(tenant, serving_pack.PACK_ID)
        base = BaseModel.objects.create(name="tiny-bert", local_path=str(artifact))
        training_file = File.objects.create(
            tenant=tenant, filename="t.jsonl", purpose="fine-tune", format="jsonl", bytes=1, sha256="0" * 64
        )
        job = FineTuningJob.objects.create(
            tenant=tenant,
            base_model=base,
            training_file=training_file,
            vertical=serving_pack.PACK_ID,
            task="intents",
            status=JobStatus.SUCCEEDED,
        )
        yield FineTunedModel.objects.create(
            id=f"ft:tiny-bert:{tenant.slug}:intents:{job.id}",
            tenant=tenant,
            job=job,
            base_model=base,
            artifact_path=str(artifact),
            vertical=serving_pack.PACK_ID,
            task="intents",
        )
    registry.reload()


def test_deploy_then_predict(cli, deployed_model_row):
    from tests.serving import pack as serving_pack
    from tunery.serving.conf import host_default_precision

    code, out, err = cli("deploy", deployed_model_row.id)
    assert code == 0, err
    assert "ready" in out
    assert host_default_precision() in out  # fp32, or bf16 on CPUs with bf16 units
    code, out, err = cli("deploy", deployed_model_row.id, "--precision", "int8")
    assert code == 0, err
    assert "int8" in out
    code, out, _ = cli("deployments", "list")
    assert deployed_model_row.id in out

    code, out, err = cli(
        "--json", "predict", "--model", deployed_model_row.id, "where is my parcel", "refund me please"
    )
    assert code == 0, err
    results = json.loads(out)["data"]
    assert len(results) == 2
    for result in results:
        assert result["label"] in serving_pack.INTENTS
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert "handoff" in result  # the pack's post-processing ran

    # Without --json: a table, one row per input, with the pack's answer fields.
    code, out, err = cli("predict", "--model", deployed_model_row.id, "where is my parcel", "refund me please")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["INPUT", "LABEL", "SCORE"]
    assert "HANDOFF" in header.split()
    assert len(rows) == 2
    assert rows[0].startswith("where is my parcel")
    assert rows[0].split()[4] in serving_pack.INTENTS  # after the four words of the input

    # The admin's usage page counts served prediction requests per tenant; refused ones do not count.
    from tunery.dashboard.selectors import tenant_usage

    cli("predict", "--model", "ft:unknown", "hello")
    usage = {row.tenant.slug: row for row in tenant_usage()}
    assert usage["acme"].predictions == 2


def test_evaluate_prints_the_report_and_batch_downloads_the_results(cli, deployed_model_row, tmp_path, monkeypatch):
    from tests.serving import pack as serving_pack
    from tunery.celery import app

    monkeypatch.setitem(app.conf, "task_always_eager", True)  # the worker's task runs on commit
    model = deployed_model_row.id
    labelled = tmp_path / "test.jsonl"
    rows = [("where is my parcel", "shipping"), ("refund me please", "refund"), ("invoice is wrong", "billing")]
    labelled.write_text("".join(json.dumps({"message": t, "intent": i}) + "\n" for t, i in rows))
    code, out, err = cli("evaluate", "--model", model, "--file", str(labelled), "--handoff-threshold", "0.3")
    assert code == 0, err
    assert "3 rows, succeeded" in out
    header = next(line for line in out.splitlines() if "precision" in line)
    assert header.split() == ["label", "precision", "recall", "f1", "support"]
    for intent in serving_pack.INTENTS:
        assert any(line.split()[:1] == [intent] for line in out.splitlines())
    assert "hand-off threshold 0.30" in out
    assert "expected calibration error" in out
    code, out, err = cli("--json", "evaluations", "list", "--model", model)
    assert code == 0, err
    (listed,) = json.loads(out)
    code, out, err = cli("evaluations", "compare", listed["id"], listed["id"])
    assert code == 0, err
    assert "accuracy" in out

    code, out, err = cli("evaluate", "--model", "ft:nope", "--file", str(labelled))
    assert code == 1
    assert "404" in err

    assert cli("deploy", model)[0] == 0
    requests = tmp_path / "requests.jsonl"
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/predictions", "body": {"model": model, "inputs": [t]}}
             for i, (t, _) in enumerate(rows)]  # fmt: skip
    lines.append(
        {"custom_id": "bad", "method": "POST", "url": "/v1/predictions", "body": {"model": "ft:nope", "inputs": ["x"]}}
    )
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output, errors = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    code, out, err = cli("batch", str(requests), "--output", str(output), "--errors", str(errors), "--poll", "0.1")
    assert code == 0, err
    assert "3 of 4 lines answered, 1 failed" in out
    answered = [json.loads(line) for line in output.read_text().splitlines()]
    assert [a["custom_id"] for a in answered] == ["r0", "r1", "r2"]
    assert all(a["response"]["body"]["data"][0]["label"] in serving_pack.INTENTS for a in answered)
    assert json.loads(errors.read_text())["custom_id"] == "bad"


def test_predict_needs_input_and_a_known_model(cli):
    code, _, err = cli("predict", "--model", "ft:nope")
    assert code == 1
    assert "give one or more texts" in err
    code, _, err = cli("predict", "--model", "ft:nope", "hello")
    assert code == 1
    assert "HTTP 404" in err


def test_jobs_create_dry_run_shows_settings_and_warnings_and_creates_nothing(cli, tmp_path):
    from tunery.jobs.models import FineTuningJob

    path = tmp_path / "rare.jsonl"
    rows = [{"text": f"good {i}", "label": "positive"} for i in range(6)] + [{"text": "bad", "label": "negative"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = cli("jobs", "create", "--vertical", "dummy", "--file", str(path), "-p", "n_epochs=3", "--dry-run")
    assert code == 0, err
    assert "dry run: no job created; 7 training rows, 2 classes" in out
    assert "n_epochs=3" in out
    assert "  batch_size 16: few-shot" in out  # the rule behind each "auto" value shown
    assert "  n_epochs" not in out  # asked for, not chosen
    assert "estimate on gpu (cpu): about" in out
    assert "a conservative default" in out
    assert "warning (few_examples_per_class)" in out
    assert not FineTuningJob.objects.exists()


def test_models_download_writes_the_archive_and_refuses_unknown_models(cli, deployed_model_row, tmp_path):
    import tarfile

    target = tmp_path / "model.tar.gz"
    code, out, err = cli("models", "download", deployed_model_row.id, "-o", str(target))
    assert code == 0, err
    assert str(target) in out
    with tarfile.open(target, "r:gz") as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames()}
    assert {"config.json", "model.safetensors", "README.md", "tunery.json"} <= names
    assert not list(tmp_path.glob("*.part"))

    missing = tmp_path / "missing.tar.gz"
    code, _, err = cli("models", "download", "ft:nope", "-o", str(missing))
    assert code == 1
    assert "404" in err
    assert "ft:nope" in err
    assert not missing.exists()
    assert not list(tmp_path.glob("*.part"))


def test_deploy_with_a_challenger_then_promote_and_roll_back(cli, deployed_model_row):
    """`tunery deploy MODEL --challenger`, `tunery deploy promote`/`rollback`/`history` over HTTP."""
    from tunery.catalog.models import FineTunedModel
    from tunery.jobs.models import FineTuningJob

    champion = deployed_model_row
    job = FineTuningJob.objects.get(pk=champion.job_id)
    job.pk = None  # a second succeeded job of the same task, for the challenger
    job.id = None
    job.save()
    challenger = FineTunedModel.objects.create(
        id=f"{champion.id}-v2",
        tenant=champion.tenant,
        job=job,
        base_model=champion.base_model,
        artifact_path=champion.artifact_path,
        vertical=champion.vertical,
        task=champion.task,
    )
    code, out, err = cli("deploy", champion.id, "--name", "bot", "--challenger", challenger.id, "--share", "0.25")
    assert code == 0, err
    assert f"challenger: {challenger.id} (canary 0.25)" in out
    code, out, err = cli("deployments", "set", "bot", "--mode", "shadow")
    assert code == 0, err
    assert f"challenger: {challenger.id} (shadow)" in out
    code, out, err = cli("deploy", "promote", "bot")
    assert code == 0, err
    assert challenger.id in out.split()
    assert "challenger:" not in out
    code, out, err = cli("deploy", "rollback", "bot")
    assert code == 0, err
    assert champion.id in out.split()
    code, out, err = cli("--json", "deploy", "history", "bot")
    assert code == 0, err
    assert [(h["model"], h["action"]) for h in json.loads(out)] == [
        (champion.id, "deploy"),
        (challenger.id, "promote"),
        (champion.id, "rollback"),
    ]
    code, _, err = cli("deploy", "rollback", "nobody")
    assert code == 1
    assert "404" in err


def test_the_evaluation_report_text_shows_entity_errors_and_language_model_loss():
    from tunery_client.cli import evaluation_report

    tagger = {
        "id": "eval-1", "model": "ft:x:ckpt-step-20", "file": "file-1", "rows_scored": 4, "status": "succeeded",
        "selection_metric": "f1", "metrics": {"f1": 0.5, "f1/party": 0.4},
        "report": {
            "per_label": {"labels": {"PARTY": {"precision": 0.5, "recall": 0.4, "f1": 0.44, "support": 5}}},
            "entity_errors": {
                "missed": 3, "spurious": 1,
                "missed_examples": [{"row": 2, "type": "PARTY", "text": "Acme Ltd", "start": 0, "end": 1}],
                "spurious_examples": [{"row": 3, "type": "DATE", "text": "the", "start": 4, "end": 4}],
            },
        },
    }  # fmt: skip
    text = "\n".join(evaluation_report(tagger))
    assert "of ft:x:ckpt-step-20" in text
    assert "entities: 3 missed, 1 spurious" in text
    assert "missed PARTY 'Acme Ltd' (row 2)" in text
    assert "spurious DATE 'the' (row 3)" in text
    language = {
        "id": "eval-2", "model": "tiny-llama", "file": "file-1", "rows_scored": 2, "status": "succeeded",
        "selection_metric": "eval_loss", "metrics": {"eval_loss": 2.0, "perplexity": 7.389},
        "report": {"language_model": {"mean_token_loss": 2.0, "perplexity": 7.389, "tokens": 40,
                                      "worst_rows": [{"row": 2, "mean_token_loss": 3.5, "tokens": 10}]}},
    }  # fmt: skip
    text = "\n".join(evaluation_report(language))
    assert "mean token loss 2.0000, perplexity 7.39 over 40 answer tokens" in text
    assert "least likely answers: row 2 (3.50)" in text
