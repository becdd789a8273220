"""`make demo` (``python -m tunery_client.demo``): from nothing to a fine-tuned, deployed model, on the
embedded default (SQLite, filesystem broker, local storage, CPU).

It migrates the database, starts the API server (gunicorn) and workers, creates a demo tenant and
key, enables the customer-service pack, uploads the pack's sample data, fine-tunes the packaged
MiniLM with a live progress bar, prints the metrics and saves the curves as a PNG, deploys the
model, answers sample customer questions, and prints how to call the API. Everything after the
first-time setup goes through the REST API (the same client the `tunery` CLI uses). The server
keeps running afterwards; ``python -m tunery_client.demo --stop`` stops what the demo started.
Running it again reuses the running server, the tenant and its key, and trains a new model.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from tunery_client.cli import (
    EVALUATION_ENDED,
    CliError,
    TuneryClient,
    evaluation_report,
    format_hp,
    job_body,
    metrics_of,
    resolve_task,
    wait_for,
    watch_job,
)

TENANT = "demo"
VERTICAL = "customer_service"
TASK = "intent"
BASE_MODEL = "all-minilm-l6-v2"
FIRST_PORT = 8000
#: The same split and initialisation on every run, so reruns reproduce the printed numbers.
SEED = 42
#: On top of the pack's defaults (made for thousands of rows): the sample set has under a hundred
#: rows, so more passes at a higher rate, a larger validation split and no early stop on its noise.
DEMO_HYPERPARAMETERS = {
    "n_epochs": 12,
    "batch_size": 16,
    "learning_rate": 2e-4,
    "validation_split": 0.2,
    "early_stopping_patience": 100,
}
#: Share of each intent's sample rows held back from training, to evaluate the model on afterwards.
HELD_BACK_SHARE = 0.15
#: Hand-off thresholds whose coverage/accuracy the demo prints next to the tenant's own.
SHOWN_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
#: Customer messages that are not in the sample data: the model has to generalise.
SAMPLE_QUESTIONS = (
    "It has been two weeks and my new card still has not arrived",
    "Someone took my wallet, please block my card",
    "I moved house, where do I put my new address?",
    "Why did I get such a bad rate when paying in dollars?",
    "Can you stop my premium plan from renewing?",
)
#: The background processes the demo starts, by role, with the command after ``python -m``.
PROCESSES = {
    "worker-gpu": ["django", "runworker", "gpu"],
    "worker-cpu": ["django", "runworker", "cpu", "--concurrency", "1"],
    "scheduler": ["django", "runscheduler"],
}


class DemoError(Exception):
    """A step failed; the message says which and what to look at."""


def say(message: str = "") -> None:
    print(message, flush=True)


def step(number: int, title: str) -> None:
    say(f"\n[{number}/10] {title}")


# --------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    demo_dir: Path

    @property
    def state(self) -> Path:
        return self.demo_dir / "state.json"

    @property
    def credentials(self) -> Path:
        return self.demo_dir / "credentials.json"

    def log(self, role: str) -> Path:
        return self.demo_dir / f"{role}.log"


def source_root(package: str) -> Path:
    """Where an installed package's sources are, found without importing it (importing the control
    plane would pull in Django and Celery)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DemoError(f"the package {package!r} is not installed; run `make demo` from the repository")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def resolve_paths() -> Paths:
    # the same default as tunery.settings.DATA_DIR: var/ at the repository root
    repo_root = source_root("tunery").parent.parent
    data_dir = Path(os.environ.get("TUNERY_DATA_DIR") or repo_root / "var").resolve()
    demo_dir = data_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    return Paths(data_dir, demo_dir)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, value: dict[str, Any], private: bool = False) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    if private:
        tmp.chmod(0o600)
    tmp.replace(path)


def process_alive(pid: int | None, marker: str) -> bool:
    """The pid runs and is still ours (its command line holds ``marker``), not a recycled pid."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return marker in cmdline


# ------------------------------------------------------------------------------------- setup


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "tunery.settings")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def manage(*args: str) -> str:
    """A Django management command in a child process; its output, or DemoError with its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "django", *args], env=child_env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise DemoError(f"`manage.py {' '.join(args)}` failed:\n{(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


def healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def spawn(role: str, argv: list[str], paths: Paths) -> int:
    log = paths.log(role).open("ab")
    # A new session: the processes outlive the demo (the server stays up for the user).
    process = subprocess.Popen(
        argv, env=child_env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    return process.pid


def code_stamp() -> float:
    """The newest source file's modification time: running processes older than it are stale."""
    roots = [source_root(name) for name in ("tunery", "tunery_engine", "tunery_serving", "tunery_contract")]
    return max((f.stat().st_mtime for root in roots for f in root.rglob("*.py")), default=0.0)


def ensure_server(paths: Paths, state: dict[str, Any], preferred_port: int | None) -> str:
    """The running demo server, or a new gunicorn on the first free port from 8000. Processes
    started before the code last changed (a `git pull`) are restarted."""
    port = state.get("port")
    stamp = code_stamp()
    if port and process_alive(state.get("pids", {}).get("server"), "gunicorn") and healthy(f"http://127.0.0.1:{port}"):
        if state.get("code_stamp") == stamp:
            say(f"  reusing the running server on port {port}")
            return f"http://127.0.0.1:{port}"
        say("  the code changed since the server started: restarting it and the workers")
        stop_processes(state)
        _wait_for_port(port)
    state["code_stamp"] = stamp
    first = preferred_port or FIRST_PORT
    port = next((p for p in range(first, first + 100) if port_is_free(p)), None)
    if port is None:
        raise DemoError(f"no free port between {first} and {first + 99}")
    pid = spawn(
        "server",
        [
            sys.executable, "-m", "gunicorn", "tunery.wsgi:application",
            "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "--threads", "4",
            "--timeout", "300",  # the first prediction loads the model
            # gunicorn's largest bounded request line (default 4094): longer URLs up to it get the
            # API's JSON errors instead of gunicorn's HTML 414 page
            "--limit-request-line", "8190",
        ],
        paths,
    )  # fmt: skip
    state.setdefault("pids", {})["server"] = pid
    state["port"] = port
    write_json(paths.state, state)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while not healthy(base_url):
        if not process_alive(pid, "gunicorn"):
            raise DemoError(f"the server did not start; see {paths.log('server')}")
        if time.monotonic() > deadline:
            raise DemoError(f"the server did not answer /healthz within 90 s; see {paths.log('server')}")
        time.sleep(0.5)
    say(f"  gunicorn (2 processes) on {base_url}  (log: {paths.log('server')})")
    return base_url


def _wait_for_port(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.3)


def ensure_workers(paths: Paths, state: dict[str, Any]) -> None:
    pids = state.setdefault("pids", {})
    for role, args in PROCESSES.items():
        marker = args[1]
        if process_alive(pids.get(role), marker):
            say(f"  reusing {role} (pid {pids[role]})")
            continue
        pids[role] = spawn(role, [sys.executable, "-m", *args], paths)
        say(f"  started {role}: python -m {' '.join(args)}  (log: {paths.log(role)})")
    write_json(paths.state, state)


def ensure_api_key(paths: Paths, base_url: str) -> str:
    """The demo tenant's key: the saved one while it works, else a new tenant (or a new key)."""
    saved = read_json(paths.credentials).get("api_key")
    if saved and _key_works(base_url, saved):
        say(f"  reusing tenant '{TENANT}' and its key (saved in {paths.credentials})")
        return saved
    output = manage(
        "shell",
        "-c",
        f"from tunery.tenants.models import Tenant; print(Tenant.objects.filter(slug='{TENANT}').exists())",
    )
    if output.strip().endswith("True"):
        # The tenant exists but its key was lost: mint a new one (first-time setup, not the API).
        key = (
            manage(
                "shell",
                "-c",
                "from tunery.tenants import services; from tunery.tenants.models import Tenant; "
                f"print(services.create_api_key(tenant=Tenant.objects.get(slug='{TENANT}'), name='demo', "
                "role='owner').secret)",
            )
            .strip()
            .splitlines()[-1]
        )
        say(f"  tenant '{TENANT}' exists; created a new API key")
    else:
        key = manage("createtenant", TENANT, "--name", "Demo tenant", "--with-key").strip().splitlines()[-1]
        say(f"  created tenant '{TENANT}' with an owner API key")
    write_json(paths.credentials, {"tenant": TENANT, "api_key": key, "base_url": base_url}, private=True)
    if not _key_works(base_url, key):
        raise DemoError("the new API key is refused by the server")
    return key


def _key_works(base_url: str, key: str) -> bool:
    try:
        response = httpx.get(f"{base_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def sample_data_path() -> Path:
    """The pack's packaged sample data file (found like the platform finds packs: entry points)."""
    from tunery_contract.discovery import discover

    pack = discover().packs.get(VERTICAL)
    if pack is None:
        raise DemoError(f"the {VERTICAL} pack is not installed (pip install -e verticals/{VERTICAL})")
    filename = pack.task(TASK).sample_data
    if not filename:
        raise DemoError(f"the {VERTICAL} pack ships no sample data for task {TASK!r}")
    return Path(str(resources.files(pack.package or f"tunery_{pack.id}").joinpath(filename)))


def split_sample(source: Path, train: Path, held_back: Path) -> tuple[int, int]:
    """Write the sample's rows into a training file and a held-back file: the last
    ``HELD_BACK_SHARE`` of each intent's rows (at least one) are held back. (rows kept, held back)"""
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    by_label: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_label.setdefault(row["label"], []).append(index)
    held = {i for members in by_label.values() for i in members[-max(1, round(len(members) * HELD_BACK_SHARE)) :]}
    for path, chosen in ((train, [r for i, r in enumerate(rows) if i not in held]),
                         (held_back, [r for i, r in enumerate(rows) if i in held])):  # fmt: skip
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(chosen)
    return len(rows) - len(held), len(held)


def handoff_lines(evaluation: dict[str, Any]) -> list[str]:
    """Where the tenant's hand-off threshold sits, against a few others from the evaluation's curve."""
    handoff = (evaluation.get("report") or {}).get("handoff")
    if not handoff:
        return []
    points = {round(p["threshold"], 2): p for p in handoff.get("curve") or []}
    shown = [
        f"{t:.1f}: {points[t]['coverage']:.0%} answered, {points[t]['accuracy']:.0%} right"
        for t in SHOWN_THRESHOLDS
        if t in points
    ]
    return ["  by threshold: " + "; ".join(shown)] if shown else []


# ------------------------------------------------------------------------------------- results


def final_metrics(client: TuneryClient, job: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, float]:
    """The fine-tuned model's recorded metrics (best checkpoint), else the last evaluation event."""
    model_id = job.get("fine_tuned_model")
    if model_id:
        model = client.request("GET", f"/models/{model_id}")
        recorded = {k: float(v) for k, v in (model.get("metrics") or {}).items() if isinstance(v, int | float)}
        if recorded:
            return recorded
    evaluations = [metrics_of(e) for e in events if e.get("type") == "metrics"]
    evaluations = [m for m in evaluations if any(not k.startswith("train") for k in m)]
    return evaluations[-1] if evaluations else {}


def save_curves_png(events: list[dict[str, Any]], path: Path, title: str) -> int:
    """Loss and metric curves from the job's metrics events; returns the number of points drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses: dict[str, list[tuple[float, float]]] = {}
    scores: dict[str, list[tuple[float, float]]] = {}
    for event in events:
        data = event.get("data") or {}
        if event.get("type") != "metrics" or "step" not in data:
            continue
        for name, value in metrics_of(event).items():
            if "/" in name or name.startswith("full_"):  # per-class breakdowns and duplicates: printed, not drawn
                continue
            (losses if "loss" in name else scores).setdefault(name, []).append((float(data["step"]), value))
    figure, (loss_axis, score_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for axis, series, label in ((loss_axis, losses, "loss"), (score_axis, scores, "validation metric")):
        for name, points in sorted(series.items()):
            points.sort()
            axis.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=3, label=name)
        axis.set_xlabel("step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if series:
            axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return sum(len(p) for p in losses.values()) + sum(len(p) for p in scores.values())


def redeploy(client: TuneryClient, model_id: str) -> dict[str, Any]:
    """Deploy the new model; earlier demo models are undeployed so reruns stay within quota."""
    for deployment in client.list_deployments():
        if deployment.get("model") != model_id and str(deployment.get("model", "")).find(":demo:") != -1:
            client.request("DELETE", f"/deployments/{deployment['id']}")
    return client.deploy(model_id)


#: Printed before the block of commands that the demo's test runs exactly as printed.
COMMANDS_HEADER = "Each line below runs as printed, in a fresh shell from any directory:"


def openai_example(base_url: str, key: str, model_id: str, job_id: str) -> str:
    question = SAMPLE_QUESTIONS[0]
    return f"""# Tunery speaks OpenAI's fine-tuning API: the official openai client works unchanged.
from openai import OpenAI

client = OpenAI(base_url="{base_url}/v1", api_key="{key}")
job = client.fine_tuning.jobs.retrieve("{job_id}")
print(job.status, job.fine_tuned_model)
for event in client.fine_tuning.jobs.list_events("{job_id}", limit=5):
    print(event.message)
answer = client.post("/predictions", body={{"model": "{model_id}", "inputs": ["{question}"]}}, cast_to=object)
print(answer["data"][0]["intent"], answer["data"][0]["reply"])
"""


def print_usage(base_url: str, key: str, model_id: str, job_id: str, paths: Paths) -> None:
    question = SAMPLE_QUESTIONS[0]
    body = json.dumps({"model": model_id, "inputs": [question]})
    example = paths.demo_dir / "openai_example.py"
    example.write_text(openai_example(base_url, key, model_id, job_id))
    # The virtualenv's own scripts by absolute path: they work without activating it.
    bin_dir = Path(sys.executable).parent
    json_header = '-H "Content-Type: application/json"'
    say(
        f"""
Call the API yourself (key saved in {paths.credentials}). {COMMANDS_HEADER}

  export TUNERY_API_KEY={key}
  curl -s {base_url}/v1/predictions -H "Authorization: Bearer $TUNERY_API_KEY" {json_header} -d '{body}'
  curl -s {base_url}/v1/fine_tuning/jobs/{job_id}/events -H "Authorization: Bearer $TUNERY_API_KEY"
  {bin_dir / "python"} {example}
  TUNERY_BASE_URL={base_url} {bin_dir / "tunery"} jobs list
  TUNERY_BASE_URL={base_url} {bin_dir / "tunery"} predict --model {model_id} "{question}"

The openai client example ({example}):

{chr(10).join("  " + line if line else "" for line in openai_example(base_url, key, model_id, job_id).splitlines())}

Admin: {base_url}/admin/  dashboard: {base_url}/admin/dashboard/  (create a login with:
  DJANGO_SETTINGS_MODULE=tunery.settings {bin_dir / "python"} -m django createsuperuser)
API docs: {base_url}/api/docs/"""
    )


# ----------------------------------------------------------------------------------------- run


def run(port: int | None, timeout_minutes: float, poll_seconds: float, epochs: int | None = None) -> dict[str, Any]:
    started = time.monotonic()
    paths = resolve_paths()
    say(f"Tunery demo: embedded setup under {paths.data_dir}")

    step(1, "Migrating the embedded database")
    migrated = manage("migrate", "--noinput")
    applied = sum(1 for line in migrated.splitlines() if line.strip().startswith("Applying"))
    say(f"  {applied} migrations applied" if applied else "  database already up to date")
    manage("collectstatic", "--noinput")  # the admin's CSS and JavaScript, served by the app itself

    step(2, "Starting the API server, the workers and the scheduler")
    state = read_json(paths.state)
    base_url = ensure_server(paths, state, port)
    ensure_workers(paths, state)

    step(3, f"Tenant '{TENANT}', its API key and the {VERTICAL} pack")
    key = ensure_api_key(paths, base_url)
    say("  " + manage("enablevertical", TENANT, VERTICAL).strip())
    client = TuneryClient(base_url=base_url, api_key=key)

    step(4, "Uploading the pack's sample data through the API")
    task = resolve_task(client.list_verticals(), VERTICAL, TASK)
    train_path, held_back_path = paths.demo_dir / "intent_train.csv", paths.demo_dir / "intent_held_back.csv"
    kept, held_back = split_sample(sample_data_path(), train_path, held_back_path)
    uploaded = client.upload_file(train_path)
    say(f"  {uploaded['id']}: {uploaded.get('filename')}, {uploaded.get('bytes')} bytes ({kept} rows)")
    test_file = client.upload_file(held_back_path)
    say(f"  {test_file['id']}: {held_back} rows held back from training, to evaluate the model on")
    say(f"  task '{task['id']}' ({task.get('kind')}), best checkpoint by {task.get('selection_metric')}")

    step(5, f"Fine-tuning {BASE_MODEL} on it")
    overrides = {**DEMO_HYPERPARAMETERS, **({"n_epochs": epochs} if epochs else {})}
    defaults = task.get("default_hyperparameters") or {}
    say(f"  pack defaults: {format_hp(defaults)}")
    say(f"  demo overrides for its small sample: {format_hp(overrides)}")
    job = client.create_job(
        job_body(
            vertical=VERTICAL,
            task=task["id"],
            model=BASE_MODEL,
            training_file=uploaded["id"],
            suffix="demo",
            hyperparameters=overrides,
            seed=SEED,
        )
    )
    say(f"  job {job['id']} created ({job['status']}); following it:")
    job = watch_job(client, job["id"], poll_seconds=poll_seconds, timeout_seconds=timeout_minutes * 60)
    events = client.job_events(job["id"])
    if job["status"] != "succeeded":
        for event in events[-10:]:
            say(f"  [{event.get('level')}] {event.get('message')}")
        raise DemoError(f"job {job['id']} ended {job['status']}: {(job.get('error') or {}).get('message', '')}")
    # The cpu worker loads the model for the evaluation (step 7) while step 6 draws the curves.
    evaluation = client.create_evaluation({"model": job["fine_tuned_model"], "file": test_file["id"]})
    resolved = job.get("resolved_config") or {}
    shown = {k: resolved[k] for k in ("training_type", "n_epochs", "batch_size", "learning_rate") if k in resolved}
    say(f"  succeeded: {job['fine_tuned_model']}" + (f"  ({json.dumps(shown)})" if shown else ""))

    step(6, "Metrics on the held-out validation split")
    metrics = final_metrics(client, job, events)
    if not metrics:
        raise DemoError(f"job {job['id']} recorded no evaluation metrics")
    for name, value in sorted(metrics.items()):
        if "/" not in name:
            say(f"  {name:24} {value:.4f}")
    per_intent = sorted((name.split("/", 1)[1], value) for name, value in metrics.items() if name.startswith("recall/"))
    if per_intent:
        say("  recall per intent:       " + ", ".join(f"{intent} {value:.2f}" for intent, value in per_intent))
    curves = paths.demo_dir / f"{job['id']}-curves.png"
    points = save_curves_png(events, curves, f"{job['fine_tuned_model']}")
    say(f"  curves ({points} points) saved to {curves}")

    step(7, f"Evaluating the model on the {held_back} held-back rows (POST /v1/evaluations)")
    say(f"  {evaluation['id']} (created when training ended, scored by the cpu worker)")
    evaluation_id = evaluation["id"]
    evaluation = wait_for(
        lambda: client.get_evaluation(evaluation_id), EVALUATION_ENDED, poll_seconds, timeout_minutes * 60
    )
    for line in evaluation_report(evaluation):
        say(line)
    for line in handoff_lines(evaluation):
        say(line)
    if evaluation["status"] != "succeeded":
        raise DemoError(f"evaluation {evaluation['id']} failed: {(evaluation.get('error') or {}).get('message')}")

    step(8, "Deploying the model")
    deployment = redeploy(client, job["fine_tuned_model"])
    say(f"  {deployment['id']}: {deployment['status']}")
    if deployment["status"] != "ready":
        raise DemoError(f"deployment failed: {deployment.get('error')}")

    step(9, "Answering customer questions the model has not seen")
    answers = client.predict(job["fine_tuned_model"], [{"text": q} for q in SAMPLE_QUESTIONS])["data"]
    for question, answer in zip(SAMPLE_QUESTIONS, answers):
        handoff = " -> hand-off to a human" if answer.get("handoff") else ""
        say(f"  Q: {question}")
        say(f"     intent {answer.get('intent')} ({answer.get('confidence', 0):.0%}){handoff}")
        say(f"     reply: {answer.get('reply')}")

    step(10, "Done")
    print_usage(base_url, key, job["fine_tuned_model"], job["id"], paths)
    elapsed = time.monotonic() - started
    say(f"\nFinished in {elapsed / 60:.1f} min. The server keeps running on {base_url};")
    say(f"stop it with: {sys.executable} -m tunery_client.demo --stop   (run `make demo` again to start it)")
    return {
        "base_url": base_url,
        "job": job,
        "metrics": metrics,
        "evaluation": evaluation,
        "answers": answers,
        "curves": str(curves),
        "elapsed_seconds": elapsed,
    }


def stop_processes(state: dict[str, Any]) -> int:
    """Stop the processes recorded in ``state`` (each in its own session: it and its children)."""
    markers = {"server": "gunicorn", **{role: args[1] for role, args in PROCESSES.items()}}
    stopped = 0
    for role, pid in (state.get("pids") or {}).items():
        if process_alive(pid, markers.get(role, "")):
            os.killpg(pid, signal.SIGTERM)
            stopped += 1
            say(f"stopped {role} (pid {pid})")
    state["pids"] = {}
    return stopped


def stop() -> int:
    """Stop every process the demo started (recorded in its state file)."""
    paths = resolve_paths()
    state = read_json(paths.state)
    stopped = stop_processes(state)
    write_json(paths.state, state)
    if not stopped:
        say("nothing was running")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunery_client.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, help=f"first port to try (default {FIRST_PORT})")
    parser.add_argument("--timeout-minutes", type=float, default=15.0, help="give up on the job after this")
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, help=f"passes over the data (default {DEMO_HYPERPARAMETERS['n_epochs']})")
    parser.add_argument("--stop", action="store_true", help="stop the server and workers the demo started")
    args = parser.parse_args(argv)
    if args.stop:
        return stop()
    try:
        run(args.port, args.timeout_minutes, args.poll_seconds, args.epochs)
    except (DemoError, CliError) as exc:
        say(f"\ndemo failed: {exc}")
        say("The server (if it started) is still running; logs are under var/demo/ (or $TUNERY_DATA_DIR/demo/).")
        return 1
    except KeyboardInterrupt:
        say("\ninterrupted. The server and workers keep running (a job keeps training): follow it with")
        say(
            f"`{Path(sys.executable).parent / 'tunery'} jobs list` / `... jobs watch <id>`, or stop everything "
            f"with: {sys.executable} -m tunery_client.demo --stop"
        )
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
