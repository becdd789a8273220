"""The real engine process (``python -m tunery_engine run``, a tiny random BERT) with its job in a
real S3-protocol server: killed with SIGKILL in the middle of a checkpoint's upload, the job
resumes on another host (an empty folder) from the last complete checkpoint in the bucket; the
server killed and restarted mid-job, the run waits it out and succeeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tunery_storage import ObjectStore

from tests.storage.s3_server import S3Server, ThrottlingProxy
from tunery_contract import TaskKind
from tunery_contract.protocol import LINEAR_PROBE, ExitCode
from tunery_engine.tiny_models import make_tiny_bert, write_synthetic, write_tiny_pack_distribution

pytestmark = pytest.mark.slow

PREFIX = "acme/ftjob-s3"


class Engine:
    """One engine process; its events are collected as they come."""

    def __init__(self, tmp: Path, spec: dict, env: dict[str, str]) -> None:
        spec_file = Path(spec["output_dir"]).parent / "spec.json"
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(json.dumps(spec))
        site = write_tiny_pack_distribution(tmp / "site")
        full_env = {**os.environ, **env, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
        full_env["TUNERY_HEARTBEAT_SECONDS"] = "0.5"
        self.stderr_path = spec_file.parent / "engine.err"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tunery_engine", "run", str(spec_file)],
            stdout=subprocess.PIPE,
            stderr=self.stderr_path.open("wb"),
            text=True,
            env=full_env,
            start_new_session=True,
        )
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.append(json.loads(line))

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e["event"] == name]

    def training_checkpoints(self) -> list[dict]:
        """The checkpoint events of training steps (not the early linear-probe model's)."""
        return [e for e in self.named("checkpoint") if e.get("model") != LINEAR_PROBE]

    def wait_for(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process.poll() is not None and not condition():
                break
            time.sleep(0.05)
        raise AssertionError(f"{what}: not seen; events {[e['event'] for e in self.events]}; {self.stderr()[-3000:]}")

    def finish(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout=timeout)
        time.sleep(0.2)  # the reader thread takes the last lines
        return code

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


def make_spec(tmp: Path, base: Path, output_dir: Path) -> dict:
    data = write_synthetic(tmp / "train.jsonl", TaskKind.SEQUENCE_CLASSIFICATION, 120, seed=5)
    return {
        "base_model": str(base),
        "vertical": "tiny",
        "task": "tiny_sequence_classification",
        "train_file": str(data),
        "output_dir": str(output_dir),
        "config": {
            "training_type": "full",
            "n_epochs": 3,
            "batch_size": 16,
            "learning_rate": 3e-3,
            "eval_every_steps": 4,
            "checkpoint_every_steps": 4,
            "keep_checkpoints": 1,
        },
        "tenant_config": {},
        "object_store_prefix": PREFIX,
    }


def test_a_worker_killed_mid_upload_resumes_elsewhere_from_the_last_complete_checkpoint(
    s3_server, bucket, tiny_model, tmp_path
):
    store = ObjectStore(s3_server.settings(bucket))
    remote = f"{PREFIX}/checkpoints"
    proxy = ThrottlingProxy(s3_server.port, bytes_per_second=60_000)  # a slow link from the first host
    try:
        first = Engine(
            tmp_path, make_spec(tmp_path, tiny_model, tmp_path / "host1" / "job"), s3_server.env(bucket, proxy.endpoint)
        )
        first.wait_for(first.training_checkpoints, 240, "the first checkpoint, uploaded")
        complete = f"step-{first.training_checkpoints()[0]['step']:08d}"
        assert store.complete_children(remote) == [complete]  # reported only once in the bucket

        def half_uploaded() -> list[str]:
            return [name for name in store.children(remote) if name not in store.complete_children(remote)]

        first.wait_for(half_uploaded, 240, "the next checkpoint's upload under way")
        first.kill()  # SIGKILL mid-upload: the host is gone
    finally:
        proxy.close()
    interrupted = half_uploaded()
    assert interrupted, "the kill came after the upload finished"
    assert store.complete_children(remote) == [complete]
    assert store.read_manifest(f"{remote}/{interrupted[0]}") is None

    # another host: nothing local; the worker pulls the complete checkpoints, the engine resumes
    host2 = tmp_path / "host2" / "job"
    assert store.pull_children(remote, host2 / "checkpoints") == [complete]
    second = Engine(tmp_path, make_spec(tmp_path, tiny_model, host2), s3_server.env(bucket))
    code = second.finish()
    assert code == ExitCode.SUCCEEDED, second.stderr()[-3000:]
    begin = second.named("train_begin")[0]
    assert begin["resumed_from"] is not None
    assert Path(begin["resumed_from"]).name == complete
    assert second.events[-1]["event"] == "succeeded"

    manifest = store.read_manifest(f"{PREFIX}/final")
    assert manifest is not None
    assert "tunery_artifact.json" in manifest["files"]
    assert interrupted[0] not in store.children(remote)  # the half upload was pruned, not trusted


def test_the_storage_server_restarted_mid_job_is_waited_out(tiny_model, tmp_path):
    server = S3Server(tmp_path)
    server.start()
    server.make_bucket("models")
    # the engine reaches the server through a fixed address, as through a load balancer or DNS name
    front = ThrottlingProxy(server.port, bytes_per_second=50_000_000)
    restarted = S3Server(tmp_path)
    try:
        engine = Engine(
            tmp_path, make_spec(tmp_path, tiny_model, tmp_path / "job"), server.env("models", front.endpoint, 120)
        )
        engine.wait_for(engine.training_checkpoints, 240, "the first checkpoint")
        server.kill()
        engine.wait_for(lambda: "retrying in" in engine.stderr(), 120, "an upload meeting the outage")
        time.sleep(2)
        # moto keeps objects in memory: the server comes back with its bucket, and then takes traffic
        restarted.start()
        restarted.make_bucket("models")
        front.target_port = restarted.port

        code = engine.finish()
        assert code == ExitCode.SUCCEEDED, engine.stderr()[-3000:]
        assert engine.events[-1]["event"] == "succeeded"
        assert not engine.named("failed")
        assert ObjectStore(restarted.settings("models")).read_manifest(f"{PREFIX}/final") is not None
    finally:
        front.close()
        server.kill()
        restarted.kill()
