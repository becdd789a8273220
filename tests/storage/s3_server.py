"""A real S3-protocol server for the storage tests: ``moto_server`` (the ``moto[server]`` test
dependency) on a loopback port, started, killed and restarted by the fixtures. A throttling TCP
proxy in front of it makes an upload slow enough to kill a worker in the middle of one."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from tunery_storage import S3Settings

KEY_ID, SECRET = "tunery-test", "tunery-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


class S3Server:
    """``moto_server`` on 127.0.0.1:port. ``auth_actions``: moto checks credentials after that many
    requests (the fixture makes an IAM user with them); None: any credentials are accepted."""

    def __init__(self, log_dir: Path, auth_actions: int | None = None) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.auth_actions = auth_actions
        self.process: subprocess.Popen | None = None
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
        if self.auth_actions is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.auth_actions)
        log = (self.log_dir / f"moto-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def settings(self, bucket: str, endpoint: str | None = None) -> S3Settings:
        return S3Settings(
            bucket=bucket,
            endpoint_url=endpoint or self.endpoint,
            region="us-east-1",
            access_key_id=KEY_ID,
            secret_access_key=SECRET,
        )

    def make_bucket(self, bucket: str) -> None:
        self.settings(bucket).client().create_bucket(Bucket=bucket)

    def env(self, bucket: str, endpoint: str | None = None, retry_seconds: float = 60) -> dict[str, str]:
        """The variables a Tunery process reads to use this server for models."""
        return {
            "TUNERY_S3_BUCKET": bucket,
            "TUNERY_S3_ENDPOINT_URL": endpoint or self.endpoint,
            "TUNERY_S3_REGION": "us-east-1",
            "TUNERY_S3_ACCESS_KEY_ID": KEY_ID,
            "TUNERY_S3_SECRET_ACCESS_KEY": SECRET,
            "TUNERY_S3_RETRY_SECONDS": str(retry_seconds),
            "TUNERY_ARTIFACT_STORAGE": "s3",
        }


class ThrottlingProxy:
    """Forwards 127.0.0.1:port to ``target_port``, sending what clients write at ``bytes_per_second``
    (a slow link: an upload takes long enough to be interrupted)."""

    def __init__(self, target_port: int, bytes_per_second: int) -> None:
        self.target_port = target_port
        self.rate = bytes_per_second
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.closed = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, throttled: bool) -> None:
        chunk = max(1024, self.rate // 20)
        try:
            while data := source.recv(chunk if throttled else 65536):
                sink.sendall(data)
                if throttled:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        """The link goes down: what the proxy still holds is never delivered (without this, an
        upload already buffered in the kernel kept arriving after the client was killed, and its
        object appeared after the resumed job had pruned the folder)."""
        self.closed = True
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
