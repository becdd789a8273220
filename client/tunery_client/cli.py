"""`tunery`: the tenants' command-line client. It speaks the REST API over HTTP (never the database),
so it works against any Tunery server a tenant has a key for.

Configuration, strongest first: ``--api-key``/``--base-url``; ``TUNERY_API_KEY``/``TUNERY_BASE_URL``;
``~/.config/tunery/config.toml`` (``api_key = "..."``, ``base_url = "..."``).

    tunery verticals list
    tunery files upload data.jsonl
    tunery jobs create --vertical customer_service --file data.jsonl --watch
    tunery jobs watch ftjob-...
    tunery deploy ft:... --name support-bot
    tunery deploy ft:current... --name support-bot --challenger ft:new... --mode shadow
    tunery deployments set support-bot --challenger ft:... --mode canary --share 0.1
    tunery deploy promote support-bot      (or: rollback, history, show)
    tunery predict --model ft:... "Where is my parcel?"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
#: Keys of a metrics event's data that are bookkeeping, not metrics.
NON_METRIC_KEYS = frozenset({"step", "total_steps", "epoch", "learning_rate", "lr", "throughput", "eta_seconds"})


class CliError(Exception):
    """A problem the user can fix (configuration, input); printed without a traceback."""


class ApiError(CliError):
    """An error answer from the API, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        self.status = status
        self.code = code
        self.param = param
        where = f" (param: {param})" if param else ""
        super().__init__(f"HTTP {status}: {message}{where}")


# ----------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Settings:
    base_url: str
    api_key: str


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tunery" / "config.toml"


def load_settings(api_key: str | None = None, base_url: str | None = None, path: Path | None = None) -> Settings:
    """Flags beat environment variables, which beat the config file."""
    file_values: dict[str, Any] = {}
    path = path or config_path()
    if path.is_file():
        try:
            file_values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise CliError(f"{path} is not valid TOML: {exc}") from exc
    key = api_key or os.environ.get("TUNERY_API_KEY") or file_values.get("api_key")
    url = base_url or os.environ.get("TUNERY_BASE_URL") or file_values.get("base_url") or DEFAULT_BASE_URL
    if not key:
        raise CliError(f'no API key: set TUNERY_API_KEY, pass --api-key, or put api_key = "..." in {path}')
    return Settings(base_url=str(url).rstrip("/"), api_key=str(key))


# ----------------------------------------------------------------------------------------- client


@dataclass
class TuneryClient:
    """A thin HTTP client for Tunery's REST API (OpenAI-shaped objects and errors)."""

    base_url: str
    api_key: str
    timeout: float = 60.0
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(
            base_url=self.base_url.rstrip("/") + "/v1",
            headers={"Authorization": f"Bearer {self.api_key}", "User-Agent": "tunery-cli"},
            timeout=self.timeout,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> TuneryClient:
        return cls(base_url=settings.base_url, api_key=settings.api_key)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise _api_error(response)
        return response.json() if response.content else None

    # files
    def upload_file(self, path: Path, purpose: str = "fine-tune") -> dict[str, Any]:
        if not path.is_file():
            raise CliError(f"no such file: {path}")
        with path.open("rb") as handle:
            return self.request("POST", "/files", data={"purpose": purpose}, files={"file": (path.name, handle)})

    def list_files(self) -> list[dict[str, Any]]:
        return list(self._paginate("/files"))

    # verticals and models
    def list_verticals(self) -> list[dict[str, Any]]:
        return self.request("GET", "/verticals")["data"]

    def list_models(self) -> list[dict[str, Any]]:
        return self.request("GET", "/models")["data"]

    def download_model(self, model: str, target: Path, merged: bool = False) -> int:
        """Stream ``GET /models/{id}/content`` into ``target`` (written to a side file and renamed,
        so an interrupted download leaves no half archive under the name). Returns the bytes."""
        partial = target.with_name(target.name + ".part")
        params = {"merged": "true"} if merged else None
        try:
            with self._http.stream("GET", f"/models/{model}/content", params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _api_error(response)
                size = 0
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        size += len(chunk)
        except httpx.HTTPError as exc:
            partial.unlink(missing_ok=True)
            raise CliError(f"download from {self.base_url} broke off: {exc}") from exc
        partial.replace(target)
        return size

    # jobs
    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/fine_tuning/jobs", json=body)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/fine_tuning/jobs/{job_id}")

    def list_jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.request("GET", "/fine_tuning/jobs", params={"limit": limit})["data"]

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/fine_tuning/jobs/{job_id}/cancel")

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        """All of a job's events, oldest first. The API lists newest first in the server's exact
        order; created_at has whole seconds only, so reversing beats re-sorting."""
        return list(reversed(list(self._paginate(f"/fine_tuning/jobs/{job_id}/events"))))

    # serving
    def deploy(self, model: str, precision: str | None = None, **settings: Any) -> dict[str, Any]:
        """Deploy ``model`` as a deployment's champion; ``settings``: name, challenger, mode,
        canary_share, evaluation_file, gate_margin (None: not sent)."""
        body = {"model": model, "precision": precision, **settings}
        return self.request("POST", "/deployments", json={k: v for k, v in body.items() if v is not None})

    def change_deployment(self, deployment: str, **settings: Any) -> dict[str, Any]:
        return self.request("PATCH", f"/deployments/{deployment}", json=settings)

    def promote(self, deployment: str) -> dict[str, Any]:
        return self.request("POST", f"/deployments/{deployment}/promote")

    def rollback(self, deployment: str) -> dict[str, Any]:
        return self.request("POST", f"/deployments/{deployment}/rollback")

    def deployment_history(self, deployment: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/deployments/{deployment}/history")["data"]

    def get_deployment(self, deployment_id: str) -> dict[str, Any]:
        return self.request("GET", f"/deployments/{deployment_id}")

    def list_deployments(self) -> list[dict[str, Any]]:
        return self.request("GET", "/deployments")["data"]

    def predict(self, model: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        return self.request("POST", "/predictions", json={"model": model, "inputs": inputs})

    # evaluations and batches
    def create_evaluation(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/evaluations", json=body)

    def get_evaluation(self, evaluation_id: str) -> dict[str, Any]:
        return self.request("GET", f"/evaluations/{evaluation_id}")

    def list_evaluations(self, model: str | None = None) -> list[dict[str, Any]]:
        return self.request("GET", "/evaluations", params={"model": model} if model else {})["data"]

    def compare_evaluations(self, a: str, b: str) -> dict[str, Any]:
        return self.request("GET", f"/evaluations/{a}/compare", params={"with": b})

    def create_batch(self, input_file_id: str, endpoint: str) -> dict[str, Any]:
        body = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": "24h"}
        return self.request("POST", "/batches", json=body)

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        return self.request("GET", f"/batches/{batch_id}")

    def download_file(self, file_id: str, path: Path) -> int:
        """Write a file's content to ``path``; its size in bytes."""
        try:
            with self._http.stream("GET", f"/files/{file_id}/content") as response:
                if response.status_code >= 400:
                    response.read()
                    raise _api_error(response)
                with path.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self.base_url}: {exc}") from exc
        return path.stat().st_size

    def _paginate(self, path: str, page_size: int = 100) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"limit": page_size}
        while True:
            page = self.request("GET", path, params=params)
            yield from page["data"]
            if not page.get("has_more") or not page["data"]:
                return
            params["after"] = page["data"][-1]["id"]


def _api_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, error.get("message", ""), error.get("code"), error.get("param"))
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, response.text[:500] or response.reason_phrase)


# ------------------------------------------------------------------------------------------- jobs


def resolve_task(verticals: list[dict[str, Any]], vertical: str, task: str | None) -> dict[str, Any]:
    """The pack's task definition (its first task when none is named), from GET /v1/verticals."""
    pack = next((v for v in verticals if v["id"] == vertical), None)
    if pack is None:
        enabled = ", ".join(v["id"] for v in verticals) or "none"
        raise CliError(f"vertical {vertical!r} is not enabled for this tenant (enabled: {enabled})")
    tasks = pack.get("tasks") or []
    if not tasks:
        raise CliError(f"vertical {vertical!r} offers no tasks")
    if task is None:
        return tasks[0]
    found = next((t for t in tasks if t["id"] == task), None)
    if found is None:
        raise CliError(
            f"vertical {vertical!r} offers no task {task!r} (it offers: {', '.join(t['id'] for t in tasks)})"
        )
    return found


def parse_hyperparameters(pairs: Sequence[str]) -> dict[str, Any]:
    """`name=value` pairs; values are JSON when they parse (numbers, booleans), else strings ("auto")."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise CliError(f"hyperparameter {pair!r} is not name=value")
        try:
            parsed[name] = json.loads(raw)
        except json.JSONDecodeError:
            parsed[name] = raw
    return parsed


def job_body(
    *,
    vertical: str,
    task: str,
    model: str,
    training_file: str,
    validation_file: str | None = None,
    suffix: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    training_type: str | None = None,
    seed: int | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """A create-job request: OpenAI's fields plus Tunery's extra body fields. Hyperparameters not
    given are left to the server, which fills them from the pack's defaults."""
    body: dict[str, Any] = {"model": model, "training_file": training_file, "vertical": vertical, "task": task}
    if validation_file:
        body["validation_file"] = validation_file
    if suffix:
        body["suffix"] = suffix
    if hyperparameters:
        body["hyperparameters"] = hyperparameters
    if training_type:
        body["training_type"] = training_type
    if seed is not None:
        body["seed"] = seed
    if dry_run:
        body["dry_run"] = True
    return body


def progress_of(job: dict[str, Any], events: Sequence[dict[str, Any]]) -> tuple[int, int | None]:
    """(step, total steps) from the job's progress, else from its latest metrics event."""
    progress = job.get("progress") or {}
    step, total = progress.get("step"), progress.get("total_steps")
    if step is None:
        reported = [e.get("data") or {} for e in events if e.get("type") == "metrics"]
        reported = [data for data in reported if "step" in data]
        if reported:
            latest = max(reported, key=lambda data: data["step"])
            step, total = latest["step"], total or latest.get("total_steps")
    return int(step or 0), (int(total) if total else None)


def metrics_of(event: dict[str, Any]) -> dict[str, float]:
    data = event.get("data") or {}
    return {k: float(v) for k, v in data.items() if k not in NON_METRIC_KEYS and isinstance(v, int | float)}


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4g}" for name, value in metrics.items())


#: Shown first in the live progress line; per-class values ("recall/x") stay in the events.
HEADLINE_METRICS = ("train_loss", "valid_loss", "accuracy", "macro_f1", "f1", "eval_loss")


def headline(metrics: dict[str, float], limit: int = 4) -> dict[str, float]:
    """The few metrics worth a progress bar: the usual ones first, never per-class breakdowns."""
    scalar = {k: v for k, v in metrics.items() if "/" not in k and not k.startswith("full_")}
    ordered = [k for k in HEADLINE_METRICS if k in scalar] + sorted(k for k in scalar if k not in HEADLINE_METRICS)
    return {k: scalar[k] for k in ordered[:limit]}


#: Before the step count is known there is no bar; after it, steps and the time left.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}]{postfix}"
PHASES = {
    "validating_files": "checking the data files",
    "queued": "waiting for a worker",
    "paused": "paused",
}


def phase_of(job: dict[str, Any], step: int) -> str:
    """What the job is doing, in words: before its first step a running job is loading the model
    and tokenizing the data, which can take a while and shows no step progress."""
    status = str(job.get("status", ""))
    if status == "running":
        return "training" if step > 0 else "loading the model and data"
    return PHASES.get(status, status)


def watch_job(
    client: TuneryClient,
    job_id: str,
    *,
    poll_seconds: float = 1.0,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    out: Any = None,
    timeout_seconds: float | None = None,
) -> dict[str, Any]:
    """Follow a job until it ends: a tqdm bar over its steps, live metrics, messages as lines.
    Returns the final job object."""
    from tqdm import tqdm

    out = out or sys.stderr
    seen: set[str] = set()
    live: dict[str, float] = {}
    started = time.monotonic()
    bar = tqdm(
        total=None,
        unit=" steps",
        desc=phase_of({"status": "validating_files"}, 0),
        file=out,
        dynamic_ncols=True,
        leave=True,
        bar_format=BAR_FORMAT,
    )
    try:
        while True:
            job = client.get_job(job_id)
            events = client.job_events(job_id)
            for event in events:
                if event["id"] in seen:
                    continue
                seen.add(event["id"])
                if on_event:
                    on_event(event)
                if event.get("type") == "metrics":
                    live.update(metrics_of(event))
                    if live:
                        bar.set_postfix_str(format_metrics(headline(live)), refresh=False)
                else:
                    bar.write(f"[{event.get('level', 'info')}] {event.get('message', '')}", file=out)
            step, total = progress_of(job, events)
            if total and bar.total != total:
                bar.total = total
            bar.n = step
            bar.set_description_str(phase_of(job, step), refresh=False)
            bar.refresh()
            if job["status"] in TERMINAL_STATUSES:
                return job
            if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
                raise CliError(f"job {job_id} still {job['status']} after {timeout_seconds:.0f}s")
            time.sleep(poll_seconds)
    finally:
        bar.close()


# ------------------------------------------------------------------------------------------ output


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


#: Columns holding Unix timestamps: shown as local date and time.
TIME_COLUMNS = frozenset({"created_at", "created", "finished_at", "updated_at", "estimated_finish"})


def format_time(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return _cell(value)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[format_time(row.get(c)) if c in TIME_COLUMNS else _cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# ---------------------------------------------------------------------------------------- commands


def _cmd_verticals_list(client: TuneryClient, args: argparse.Namespace) -> None:
    verticals = client.list_verticals()
    if args.json:
        return _print_json(verticals)
    rows = [
        {"vertical": v["id"], "version": v.get("version"), "task": t["id"], "kind": t.get("kind"),
         "metric": t.get("selection_metric")}
        for v in verticals for t in v.get("tasks") or [{}]
    ]  # fmt: skip
    _print_table(rows, ["vertical", "version", "task", "kind", "metric"])


def _cmd_files_upload(client: TuneryClient, args: argparse.Namespace) -> None:
    uploaded = client.upload_file(Path(args.path), purpose=args.purpose)
    if args.json:
        return _print_json(uploaded)
    print(f"{uploaded['id']}  {uploaded.get('filename')}  {uploaded.get('bytes')} bytes")


def _cmd_files_list(client: TuneryClient, args: argparse.Namespace) -> None:
    files = client.list_files()
    if args.json:
        return _print_json(files)
    _print_table(files, ["id", "filename", "purpose", "bytes", "created_at"])


def _training_file_id(client: TuneryClient, value: str) -> str:
    """A file id as is; a local path is uploaded first."""
    path = Path(value)
    if path.is_file():
        uploaded = client.upload_file(path)
        print(f"uploaded {path} as {uploaded['id']}", file=sys.stderr)
        return uploaded["id"]
    if value.startswith("file-"):
        return value
    raise CliError(f"{value!r} is neither a local file nor a file id (file-...)")


def _cmd_jobs_create(client: TuneryClient, args: argparse.Namespace) -> int:
    task = resolve_task(client.list_verticals(), args.vertical, args.task)
    defaults = task.get("default_hyperparameters") or {}
    overrides = parse_hyperparameters(args.hyperparameter or [])
    print(
        f"vertical {args.vertical}, task {task['id']}; pack defaults: {format_hp(defaults)}"
        + (f"; overrides: {format_hp(overrides)}" if overrides else ""),
        file=sys.stderr,
    )
    body = job_body(
        vertical=args.vertical,
        task=task["id"],
        model=args.model,
        training_file=_training_file_id(client, args.file),
        validation_file=_training_file_id(client, args.validation_file) if args.validation_file else None,
        suffix=args.suffix,
        hyperparameters=overrides,
        training_type=args.training_type,
        seed=args.seed,
        dry_run=args.dry_run,
    )
    job = client.create_job(body)
    if args.dry_run:
        return _report_dry_run(job, as_json=args.json)
    if args.watch:
        job = watch_job(client, job["id"])
        _report_finished_job(job)
    elif args.json:
        _print_json(job)
    else:
        print(f"{job['id']}  {job['status']}")
    if args.watch and job["status"] != "succeeded":
        return 1
    return 0


#: Resolved settings a dry run shows (``--json`` prints them all).
DRY_RUN_SHOWN = ("training_type", "n_epochs", "batch_size", "learning_rate", "max_length", "eval_every_steps")


def _report_dry_run(plan: dict[str, Any], *, as_json: bool) -> int:
    if as_json:
        _print_json(plan)
        return 0
    profile = plan.get("data_profile") or {}
    classes = profile.get("classes") or {}
    resolved = plan.get("resolved_hyperparameters") or {}
    print(f"dry run: no job created; {profile.get('rows', 0)} training rows", end="")
    print(f", {classes['count']} classes" if classes else "")
    print("would train with: " + format_hp({k: resolved[k] for k in DRY_RUN_SHOWN if k in resolved}))
    for knob, reason in sorted((plan.get("auto_reasons") or {}).items()):
        if knob in DRY_RUN_SHOWN or knob == "contrastive_epochs":
            print(f"  {knob} {reason}")  # "n_epochs 8: few-shot (median 18 examples per class <= 32)"
    if plan.get("estimate"):
        print(format_estimate(plan["estimate"]))
    for warning in plan.get("warnings") or ():
        print(f"warning ({warning['code']}): {warning['message']}")
    return 0


def format_estimate(estimate: dict[str, Any]) -> str:
    """One line: time, memory and cost on the worker class, and where the speed came from."""
    minutes = float(estimate.get("seconds") or 0) / 60
    memory = float(estimate.get("memory_bytes") or 0) / 1024**3
    line = f"estimate on {estimate.get('worker_class')} ({estimate.get('device')}): about {minutes:.1f} min"
    line += f", {memory:.1f} GiB memory"
    if estimate.get("fits_in_memory") is False:
        line += " (more than this worker class has)"
    if estimate.get("cost") is not None:
        line += f", cost {estimate['cost']:.2f} {estimate.get('currency') or ''}".rstrip()
    speed = f"{estimate.get('tokens_per_second')} tokens/s"
    if estimate.get("throughput_source") == "measured":
        return line + f" ({speed} measured on {estimate.get('measured_jobs')} earlier jobs)"
    return line + f" ({speed}, a conservative default: nothing measured yet)"


def format_hp(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items())) or "none"


def _report_finished_job(job: dict[str, Any]) -> None:
    print(f"{job['id']}  {job['status']}")
    if job.get("fine_tuned_model"):
        print(f"fine-tuned model: {job['fine_tuned_model']}")
    if job.get("error"):
        print(f"error: {(job['error'] or {}).get('message')}")


def _cmd_jobs_watch(client: TuneryClient, args: argparse.Namespace) -> int:
    job = watch_job(client, args.job_id, poll_seconds=args.poll)
    _report_finished_job(job)
    return 0 if job["status"] == "succeeded" else 1


def _cmd_jobs_list(client: TuneryClient, args: argparse.Namespace) -> None:
    jobs = client.list_jobs(limit=args.limit)
    if args.json:
        return _print_json(jobs)
    _print_table(jobs, ["id", "status", "model", "fine_tuned_model", "created_at"])


def _cmd_jobs_get(client: TuneryClient, args: argparse.Namespace) -> None:
    _print_json(client.get_job(args.job_id))


def _cmd_jobs_events(client: TuneryClient, args: argparse.Namespace) -> None:
    events = client.job_events(args.job_id)
    if args.json:
        return _print_json(events)
    for event in events:
        extra = format_metrics(metrics_of(event)) if event.get("type") == "metrics" else ""
        when, level = format_time(event.get("created_at")), event.get("level", "info")
        print(f"{when}  {level:5}  {event.get('message', '')}  {extra}".rstrip())


def _cmd_jobs_cancel(client: TuneryClient, args: argparse.Namespace) -> None:
    job = client.cancel_job(args.job_id)
    print(f"{job['id']}  {job['status']}")


def _cmd_models_list(client: TuneryClient, args: argparse.Namespace) -> None:
    models = client.list_models()
    if args.json:
        return _print_json(models)
    _print_table(models, ["id", "owned_by", "created"])


def _cmd_models_download(client: TuneryClient, args: argparse.Namespace) -> None:
    target = Path(args.output or "".join(c if c.isalnum() or c in "-_." else "-" for c in args.model) + ".tar.gz")
    size = client.download_model(args.model, target, merged=args.merged)
    print(f"{target} ({size / 1e6:.1f} MB): Hugging Face layout, see README.md inside")


def _deployment_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings = {
        "name": getattr(args, "name", None),
        "challenger": args.challenger,
        "mode": args.mode,
        "canary_share": args.share,
        "evaluation_file": args.evaluation_file,
        "gate_margin": args.gate_margin,
    }
    if args.challenger is not None and args.mode is None:
        settings["mode"] = "canary" if args.share is not None else "shadow"
    return {k: v for k, v in settings.items() if v is not None}


def _cmd_deploy(client: TuneryClient, args: argparse.Namespace) -> None:
    deployment = client.deploy(args.model, args.precision, **_deployment_settings(args))
    _report_deployment(deployment, args.json)


def _report_deployment(deployment: dict[str, Any], as_json: bool) -> None:
    if as_json:
        return _print_json(deployment)
    print(
        f"{deployment.get('id')}  {deployment.get('name') or '-'}  {deployment.get('model')}  "
        f"{deployment.get('status')}  {deployment.get('precision')}"
    )
    if deployment.get("challenger"):
        share = f" {deployment.get('canary_share'):g}" if deployment.get("mode") == "canary" else ""
        print(f"challenger: {deployment['challenger']} ({deployment.get('mode')}{share})")
    if deployment.get("evaluation_file"):
        print(f"gate: {deployment['evaluation_file']} (margin {deployment.get('gate_margin'):g})")
    for row in deployment.get("traffic") or []:
        agreement = f", agreement {row['agreement']:.3f}" if row.get("agreement") is not None else ""
        print(f"  {row['role']:<10} {row['model']}  {row['requests']} requests{agreement}")


def _cmd_deployments_list(client: TuneryClient, args: argparse.Namespace) -> None:
    deployments = client.list_deployments()
    if args.json:
        return _print_json(deployments)
    _print_table(deployments, ["id", "name", "model", "challenger", "mode", "status"])


def _cmd_deployments_show(client: TuneryClient, args: argparse.Namespace) -> None:
    _report_deployment(client.get_deployment(args.deployment), args.json)


def _cmd_deployments_set(client: TuneryClient, args: argparse.Namespace) -> None:
    settings = _deployment_settings(args)
    if args.no_challenger:
        settings["challenger"] = None
    if args.no_gate:
        settings["evaluation_file"] = None
    _report_deployment(client.change_deployment(args.deployment, **settings), args.json)


def _cmd_deployments_promote(client: TuneryClient, args: argparse.Namespace) -> None:
    _report_deployment(client.promote(args.deployment), args.json)


def _cmd_deployments_rollback(client: TuneryClient, args: argparse.Namespace) -> None:
    _report_deployment(client.rollback(args.deployment), args.json)


def _cmd_deployments_history(client: TuneryClient, args: argparse.Namespace) -> None:
    history = client.deployment_history(args.deployment)
    if args.json:
        return _print_json(history)
    rows = [{**h, "started": format_time(h["started_at"]), "ended": format_time(h["ended_at"])} for h in history]
    _print_table(rows, ["started", "ended", "model", "action", "actor"])


def _cmd_predict(client: TuneryClient, args: argparse.Namespace) -> None:
    if args.input_json:
        try:
            inputs = json.loads(args.input_json)
        except json.JSONDecodeError as exc:
            raise CliError(f"--input-json is not JSON: {exc}") from exc
        inputs = inputs if isinstance(inputs, list) else [inputs]
    elif args.text:
        inputs = [{"text": text} for text in args.text]
    else:
        raise CliError("give one or more texts, or --input-json")
    response = client.predict(args.model, inputs)
    if args.json:
        return _print_json(response)
    rows = prediction_rows(inputs, response.get("data") or [])
    _print_table(rows, [c for c in PREDICTION_COLUMNS if any(c in row for row in rows)])


#: What a prediction table shows, in this order, where the model's answers have it.
PREDICTION_COLUMNS = ("input", "label", "labels", "score", "confidence", "rank", "entities", "handoff", "reply")


def prediction_rows(inputs: list[dict[str, Any]], answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per answer: the input it answers (shortened) and the answer's fields, readable."""
    rows: list[dict[str, Any]] = []
    for answer in answers:
        index = answer.get("index", len(rows))
        item = inputs[index] if isinstance(index, int) and 0 <= index < len(inputs) else {}
        text = str(item.get("text", item.get("tokens", "")) if isinstance(item, dict) else item)
        row: dict[str, Any] = {"input": text if len(text) <= 48 else text[:47] + "…"}
        for key, value in answer.items():
            if isinstance(value, float):
                value = round(value, 4)
            if key == "entities" and isinstance(value, list):
                value = ", ".join(f"{e.get('text')} ({e.get('type')})" for e in value if isinstance(e, dict)) or "-"
            row[key] = value
        rows.append(row)
    return rows


# ------------------------------------------------------------------------ evaluations and batches

EVALUATION_ENDED = ("succeeded", "failed")
BATCH_ENDED = ("completed", "failed", "expired", "cancelled")


def wait_for(
    fetch: Callable[[], dict[str, Any]], ended: Sequence[str], poll: float, timeout: float | None = None
) -> dict[str, Any]:
    """Poll ``fetch`` until the object's status is one of ``ended`` (CliError after ``timeout`` s)."""
    started = time.monotonic()
    while True:
        current = fetch()
        if current.get("status") in ended:
            return current
        if timeout is not None and time.monotonic() - started > timeout:
            raise CliError(f"{current.get('id')} is still {current.get('status')} after {timeout:.0f} s")
        time.sleep(poll)


def evaluation_report(evaluation: dict[str, Any], max_labels: int = 30) -> list[str]:
    """An evaluation as text: its metrics, the per-label table, calibration and the hand-off point."""
    lines = [f"evaluation {evaluation.get('id')} of {evaluation.get('model')} on {evaluation.get('file')}: "
             f"{evaluation.get('rows_scored')} rows, {evaluation.get('status')}"]  # fmt: skip
    if evaluation.get("status") == "failed":
        error = evaluation.get("error") or {}
        return [*lines, f"  failed ({error.get('code')}): {error.get('message')}"]
    metrics = evaluation.get("metrics") or {}
    selection = evaluation.get("selection_metric")
    if selection in metrics:
        lines.append(f"  {selection} (selects models): {metrics[selection]:.4f}")
    lines.append("  metrics: " + format_metrics({k: v for k, v in metrics.items() if "/" not in k}))
    report = evaluation.get("report") or {}
    per_label = (report.get("per_label") or {}).get("labels") or {}
    if per_label:
        width = max(12, *(len(name) for name in per_label))
        lines.append(f"  {'label':<{width}}  precision  recall     f1  support")
        shown = sorted(per_label.items(), key=lambda item: -item[1]["support"])[:max_labels]
        for name, row in shown:
            scores = f"{row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  {row['support']:7d}"
            lines.append(f"  {name:<{width}}  {scores}")
        if len(per_label) > max_labels:
            lines.append(f"  ... and {len(per_label) - max_labels} more labels (--json shows all)")
    calibration = report.get("calibration")
    if calibration:
        lines.append(f"  expected calibration error: {calibration['expected_calibration_error']:.4f}")
    handoff = report.get("handoff")
    if handoff:
        lines.append(
            f"  hand-off threshold {handoff['threshold']:.2f}: {handoff['coverage']:.1%} answered automatically "
            f"with accuracy {handoff['accuracy']:.1%}; {handoff['handed_off']} handed to a person"
        )
    entities = report.get("entity_errors")
    if entities:
        lines.append(f"  entities: {entities['missed']} missed, {entities['spurious']} spurious")
        for what in ("missed", "spurious"):
            for e in entities[f"{what}_examples"][:3]:
                lines.append(f"    {what} {e['type']} '{e['text']}' (row {e['row']})")
    language = report.get("language_model")
    if language:
        lines.append(
            f"  mean token loss {language['mean_token_loss']:.4f}, perplexity {language['perplexity']:.2f} "
            f"over {language['tokens']} answer tokens"
        )
        worst = ", ".join(f"row {r['row']} ({r['mean_token_loss']:.2f})" for r in language["worst_rows"][:5])
        if worst:
            lines.append(f"  least likely answers: {worst}")
    for error in (evaluation.get("row_errors") or [])[:5]:
        lines.append(f"  not scored: {error.get('message')}")
    return lines


def _cmd_evaluate(client: TuneryClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"model": args.model, "file": _training_file_id(client, args.file)}
    if args.handoff_threshold is not None:
        body["handoff_threshold"] = args.handoff_threshold
    for name in ("vertical", "task"):
        if getattr(args, name):
            body[name] = getattr(args, name)
    if args.generate:
        body["generate"] = True
    evaluation = client.create_evaluation(body)
    print(f"evaluation {evaluation['id']} {evaluation['status']}", file=sys.stderr)
    if not args.no_wait:
        evaluation = wait_for(
            lambda: client.get_evaluation(evaluation["id"]), EVALUATION_ENDED, args.poll, args.timeout
        )
    if args.json:
        _print_json(evaluation)
    else:
        print("\n".join(evaluation_report(evaluation)))
    return 1 if evaluation.get("status") == "failed" else 0


def _cmd_evaluations_list(client: TuneryClient, args: argparse.Namespace) -> None:
    evaluations = client.list_evaluations(args.model)
    if args.json:
        return _print_json(evaluations)
    rows = [{**e, "value": (e.get("metrics") or {}).get(e.get("selection_metric"))} for e in evaluations]
    _print_table(rows, ["id", "model", "file", "status", "selection_metric", "value", "created_at"])


def _cmd_evaluations_get(client: TuneryClient, args: argparse.Namespace) -> None:
    evaluation = client.get_evaluation(args.evaluation_id)
    if args.json:
        return _print_json(evaluation)
    print("\n".join(evaluation_report(evaluation)))


def _cmd_evaluations_compare(client: TuneryClient, args: argparse.Namespace) -> None:
    comparison = client.compare_evaluations(args.a, args.b)
    if args.json:
        return _print_json(comparison)
    print(f"{comparison['model_b']} ({comparison['b']}) minus {comparison['model_a']} ({comparison['a']}), "
          f"{comparison['rows']} rows, {comparison['confidence']:.0%} paired bootstrap intervals:")  # fmt: skip
    rows = [
        {"metric": name + (" *" if name == comparison["selection_metric"] else ""), **values}
        for name, values in comparison["metrics"].items()
    ]
    _print_table(rows, ["metric", "a", "b", "difference", "ci_low", "ci_high"])


def _cmd_batch(client: TuneryClient, args: argparse.Namespace) -> int:
    source = Path(args.input)
    uploaded = client.upload_file(source, purpose="batch")
    batch = client.create_batch(uploaded["id"], args.endpoint)
    print(f"batch {batch['id']} over {uploaded['id']} ({source.name}): {batch['status']}", file=sys.stderr)
    if args.no_wait:
        _print_json(batch) if args.json else print(batch["id"])
        return 0
    batch = wait_for(lambda: client.get_batch(batch["id"]), BATCH_ENDED, args.poll, args.timeout)
    counts = batch.get("request_counts") or {}
    written = []
    for id_field, name in (("output_file_id", "output"), ("error_file_id", "errors")):
        if batch.get(id_field):
            target = Path(getattr(args, name) or f"{batch['id']}_{name}.jsonl")
            client.download_file(batch[id_field], target)
            written.append(str(target))
    if args.json:
        _print_json(batch)
    else:
        print(
            f"batch {batch['id']} {batch['status']}: {counts.get('completed', 0)} of {counts.get('total', 0)} "
            f"lines answered, {counts.get('failed', 0)} failed" + (f"; wrote {', '.join(written)}" if written else "")
        )
    return 0 if batch["status"] == "completed" else 1


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunery", description="Tunery tenant command-line client.")
    parser.add_argument("--api-key", help="API key (default: $TUNERY_API_KEY or the config file)")
    parser.add_argument("--base-url", help=f"server URL (default: $TUNERY_BASE_URL or {DEFAULT_BASE_URL})")
    parser.add_argument("--json", action="store_true", help="print raw JSON objects")
    commands = parser.add_subparsers(dest="command", required=True)

    verticals = commands.add_parser("verticals", help="vertical packs enabled for you").add_subparsers(required=True)
    verticals.add_parser("list", help="packs, their tasks and metrics").set_defaults(run=_cmd_verticals_list)

    files = commands.add_parser("files", help="training files").add_subparsers(required=True)
    upload = files.add_parser("upload", help="upload a JSONL or CSV file")
    upload.add_argument("path")
    upload.add_argument("--purpose", default="fine-tune")
    upload.set_defaults(run=_cmd_files_upload)
    files.add_parser("list", help="your files").set_defaults(run=_cmd_files_list)

    jobs = commands.add_parser("jobs", help="fine-tuning jobs").add_subparsers(required=True)
    create = jobs.add_parser("create", help="fine-tune a model with a pack's defaults")
    create.add_argument("--vertical", required=True, help="pack id, e.g. customer_service")
    create.add_argument("--task", help="task id (default: the pack's first task)")
    create.add_argument("--model", default="all-minilm-l6-v2", help="base model (default: all-minilm-l6-v2)")
    create.add_argument("--file", required=True, help="training file id, or a local file to upload")
    create.add_argument("--validation-file", help="validation file id or local file")
    create.add_argument("--suffix")
    create.add_argument("--training-type", choices=["lora", "full"])
    create.add_argument("--seed", type=int, help="for a reproducible run")
    create.add_argument("--hyperparameter", "-p", action="append", metavar="NAME=VALUE", help="override a default")
    create.add_argument("--watch", action="store_true", help="follow the job until it ends")
    create.add_argument(
        "--dry-run", action="store_true", help="check the files and show the resolved settings; create nothing"
    )
    create.set_defaults(run=_cmd_jobs_create)
    watch = jobs.add_parser("watch", help="progress bar and live metrics until the job ends")
    watch.add_argument("job_id")
    watch.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    watch.set_defaults(run=_cmd_jobs_watch)
    listing = jobs.add_parser("list", help="your recent jobs")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(run=_cmd_jobs_list)
    for name, run, helptext in (
        ("get", _cmd_jobs_get, "a job as JSON"),
        ("events", _cmd_jobs_events, "a job's events, oldest first"),
        ("cancel", _cmd_jobs_cancel, "cancel a job"),
    ):
        sub = jobs.add_parser(name, help=helptext)
        sub.add_argument("job_id")
        sub.set_defaults(run=run)

    models = commands.add_parser("models", help="base and fine-tuned models").add_subparsers(required=True)
    models.add_parser("list").set_defaults(run=_cmd_models_list)
    download = models.add_parser("download", help="a fine-tuned model as a tar.gz in Hugging Face layout")
    download.add_argument("model", help="fine-tuned model id (ft:...)")
    download.add_argument("-o", "--output", help="archive path (default: MODEL.tar.gz here)")
    download.add_argument("--merged", action="store_true", help="merge a LoRA adapter into its base model")
    download.set_defaults(run=_cmd_models_download)

    deploy = commands.add_parser("deploy", help="deploy a fine-tuned model")
    deploy.add_argument("model", help="fine-tuned model id (ft:...)")
    deploy.add_argument(
        "--precision",
        choices=("fp32", "int8", "bf16"),
        help="int8: serve an encoder model quantized on CPU (faster, slightly different scores); "
        "bf16: under bf16 autocast on CPUs with bf16 units (about as fast, closer to fp32); "
        "default: the server's TUNERY_SERVING_PRECISION",
    )
    deploy.add_argument("--name", help="a stable name to send as 'model' instead of the deployment id")
    _challenger_options(deploy)
    deploy.set_defaults(run=_cmd_deploy)
    deployments = commands.add_parser(
        "deployments", help="your deployments: challengers, promotion, rollback (also as 'tunery deploy promote ...')"
    ).add_subparsers(required=True)
    deployments.add_parser("list").set_defaults(run=_cmd_deployments_list)
    show = deployments.add_parser("show", help="a deployment, its challenger, gate and traffic counters")
    show.add_argument("deployment", help="deployment id or name")
    show.set_defaults(run=_cmd_deployments_show)
    change = deployments.add_parser("set", help="change a deployment's name, challenger or gate")
    change.add_argument("deployment", help="deployment id or name")
    change.add_argument("--name", help="a new stable name")
    _challenger_options(change)
    change.add_argument("--no-challenger", action="store_true", help="take the challenger away")
    change.add_argument("--no-gate", action="store_true", help="unpin the evaluation file")
    change.set_defaults(run=_cmd_deployments_set)
    for name, helptext, run in (
        ("promote", "make the challenger the champion (through the gate)", _cmd_deployments_promote),
        ("rollback", "serve the previous champion again", _cmd_deployments_rollback),
        ("history", "which model served when, and who put it there", _cmd_deployments_history),
    ):
        sub = deployments.add_parser(name, help=helptext)
        sub.add_argument("deployment", help="deployment id or name")
        sub.set_defaults(run=run)

    predict = commands.add_parser("predict", help="predictions from a deployed model")
    predict.add_argument("--model", required=True)
    predict.add_argument("text", nargs="*", help="texts to classify")
    predict.add_argument("--input-json", help="input objects as JSON (for pair or token tasks)")
    predict.set_defaults(run=_cmd_predict)

    evaluate = commands.add_parser("evaluate", help="score a fine-tuned model on a labelled file and print the report")
    evaluate.add_argument(
        "--model", required=True, help="fine-tuned model (ft:...), checkpoint (ft:...:ckpt-step-N) or base model"
    )
    evaluate.add_argument("--file", required=True, help="labelled file id, or a local file to upload")
    evaluate.add_argument("--handoff-threshold", type=float, help="report coverage/accuracy at this confidence")
    evaluate.add_argument("--vertical", help="base model only: the pack of the causal-LM task")
    evaluate.add_argument("--task", help="base model only: the pack's causal-LM task")
    evaluate.add_argument(
        "--generate", action="store_true", help="causal LM: also generate answers for the pack's text metrics"
    )
    evaluate.add_argument("--no-wait", action="store_true", help="create it and return")
    evaluate.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    evaluate.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    evaluate.set_defaults(run=_cmd_evaluate)
    evaluations = commands.add_parser("evaluations", help="your evaluations").add_subparsers(required=True)
    ev_list = evaluations.add_parser("list", help="evaluations, newest first")
    ev_list.add_argument("--model", help="only this model's")
    ev_list.set_defaults(run=_cmd_evaluations_list)
    ev_get = evaluations.add_parser("get", help="an evaluation's report")
    ev_get.add_argument("evaluation_id")
    ev_get.set_defaults(run=_cmd_evaluations_get)
    ev_compare = evaluations.add_parser("compare", help="b - a per metric, with paired bootstrap intervals")
    ev_compare.add_argument("a")
    ev_compare.add_argument("b")
    ev_compare.set_defaults(run=_cmd_evaluations_compare)

    batch = commands.add_parser("batch", help="score a JSONL of requests offline and download the results")
    batch.add_argument("input", help="JSONL of OpenAI batch request lines {custom_id, method, url, body}")
    batch.add_argument(
        "--endpoint", default="/v1/predictions", choices=("/v1/predictions", "/v1/chat/completions", "/v1/completions")
    )
    batch.add_argument("--output", help="where to write the results (default: <batch id>_output.jsonl)")
    batch.add_argument("--errors", help="where to write the failed lines (default: <batch id>_errors.jsonl)")
    batch.add_argument("--no-wait", action="store_true", help="create it and print its id")
    batch.add_argument("--poll", type=float, default=2.0, help="seconds between polls")
    batch.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    batch.set_defaults(run=_cmd_batch)
    return parser


def _challenger_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--challenger", help="a fine-tuned model (ft:...) of the same task to try on live traffic")
    parser.add_argument(
        "--mode",
        choices=("shadow", "canary"),
        help="shadow: the challenger answers a copy of the traffic, never returned; canary: it answers --share "
        "of it (default: canary with --share, else shadow)",
    )
    parser.add_argument("--share", type=float, help="canary: the share of requests the challenger answers (0-1]")
    parser.add_argument("--evaluation-file", help="file id the promotion gate evaluates both models on")
    parser.add_argument("--gate-margin", type=float, help="how much worse a challenger may score and be promoted")


#: ``tunery deploy promote NAME`` reads as ``tunery deployments promote NAME``.
DEPLOY_ALIASES = ("promote", "rollback", "history", "show", "set", "list")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for index, word in enumerate(argv[:-1]):
        if word == "deploy" and argv[index + 1] in DEPLOY_ALIASES:
            argv[index] = "deployments"
            break
    args = build_parser().parse_args(argv)
    try:
        client = TuneryClient.from_settings(load_settings(args.api_key, args.base_url))
        try:
            code = args.run(client, args)
        finally:
            client.close()
    except CliError as exc:
        print(f"tunery: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `tunery jobs events ID | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush must not fail again
        return 141
    return code or 0


if __name__ == "__main__":
    raise SystemExit(main())
