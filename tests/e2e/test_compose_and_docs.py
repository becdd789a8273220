"""The production stack's files: compose.yaml parses into the services operators need, with health
checks and volumes and without secrets; every environment variable the code reads is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
LONG_RUNNING = ["postgres", "redis", "minio", "web", "worker-cpu", "worker-gpu", "scheduler"]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|API_KEY", re.IGNORECASE)
INTERPOLATION = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_the_stack_has_every_service_operators_need():
    assert set(LONG_RUNNING) <= set(SERVICES)
    assert "migrate" in SERVICES, "migrations must run once before web and workers start"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_each_long_running_service_has_a_health_check_and_restarts(name):
    service = SERVICES[name]
    test = service["healthcheck"]["test"]
    assert test, name
    assert test[0] in ("CMD", "CMD-SHELL"), test
    assert service.get("restart") == "unless-stopped"


@pytest.mark.parametrize("name", ["postgres", "redis", "minio"])
def test_stateful_services_keep_their_data_in_named_volumes(name):
    mounts = SERVICES[name]["volumes"]
    volume_names = {mount.split(":", 1)[0] for mount in mounts}
    assert volume_names & set(COMPOSE["volumes"]), mounts


def test_web_and_workers_share_the_artifacts_volume():
    for name in ("web", "worker-cpu", "worker-gpu"):
        assert any(m.startswith("artifacts:") for m in SERVICES[name]["volumes"]), name


def test_web_runs_a_production_wsgi_server():
    image_cmd = (ROOT / "docker" / "web.Dockerfile").read_text()
    assert "gunicorn -c python:tunery.gunicorn_conf tunery.wsgi:application" in image_cmd
    assert "command" not in SERVICES["web"] or "runserver" not in str(SERVICES["web"]["command"])


def test_gpu_worker_reserves_a_gpu_and_runs_one_job_at_a_time():
    worker = SERVICES["worker-gpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in devices)
    command = worker["command"]
    assert command[command.index("--concurrency") + 1] == "1"
    assert command[command.index("--prefetch-multiplier") + 1] == "1"
    assert "--max-tasks-per-child" in command


def test_workers_and_web_wait_for_migrations_and_healthy_services():
    for name in ("web", "worker-cpu", "worker-gpu", "scheduler"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"


def test_no_secret_is_written_in_the_file():
    for name, service in SERVICES.items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key):
                assert INTERPOLATION.match(value), f"{name}.{key} holds a literal value, not ${{VAR}}"
                assert ":?" in value, f"{name}.{key} must be required (${{VAR:?...}}), never defaulted"
    # URLs that carry credentials take them from the environment too.
    for name, service in SERVICES.items():
        for key, value in _environment(service).items():
            for userinfo in re.findall(r"://([^@/]+)@", value):
                assert ":" not in userinfo or "${" in userinfo.split(":", 1)[1], f"{name}.{key}"


def test_each_built_image_has_its_dockerfile():
    for name, service in SERVICES.items():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name


def test_every_required_variable_is_in_the_env_example():
    text = "\n".join(
        line for line in (ROOT / "compose.yaml").read_text().splitlines() if not line.lstrip().startswith("#")
    )
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = (ROOT / "docs" / "env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, re.MULTILINE))
    assert required <= listed, sorted(required - listed)


def _variables_read_by_the_code() -> set[str]:
    """Names passed to os.environ / os.getenv / tunery.core.env helpers / serving's _setting()."""
    reader = re.compile(
        r"(?:environ(?:\.get)?|getenv|env_(?:bool|int|list|float|str)|_setting)\s*[\(\[]\s*"
        r"[\"']((?:TUNERY_[A-Z0-9_]+)|DATABASE_URL)[\"']"
    )
    names: set[str] = set()
    for folder in ("platform", "workers"):
        for source in (ROOT / folder).rglob("*.py"):
            names |= set(reader.findall(source.read_text()))
    return names


def test_every_environment_variable_the_code_reads_is_documented():
    documented = set(re.findall(r"`([A-Z0-9_]+)`", (ROOT / "docs" / "configuration.md").read_text()))
    read = _variables_read_by_the_code()
    assert "DATABASE_URL" in read
    assert "TUNERY_SECRET_KEY" in read
    assert read <= documented, f"undocumented: {sorted(read - documented)}"
