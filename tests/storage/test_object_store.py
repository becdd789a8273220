"""Trees in a real S3-protocol server: complete only with their manifest, checked on download,
tenant prefixes apart, and each storage failure a clear StorageError."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import pytest
from tunery_storage import ObjectStore, S3Settings, StorageError, artifact_store_from_env

from tests.storage.s3_server import KEY_ID, S3Server, free_port


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_a_tree_round_trips_with_its_manifest(store, tmp_path):
    tree = make_tree(tmp_path / "final", {"model.safetensors": b"w" * 5000, "adapter/config.json": b"{}"})
    manifest = store.put_tree(tree, "acme/ftjob-1/final")
    assert manifest["files"]["model.safetensors"]["size"] == 5000
    assert manifest["total_bytes"] == 5002
    assert store.complete_children("acme/ftjob-1") == ["final"]

    got = store.get_tree("acme/ftjob-1/final", tmp_path / "copy")
    assert got == manifest
    assert (tmp_path / "copy" / "model.safetensors").read_bytes() == b"w" * 5000
    assert (tmp_path / "copy" / "adapter" / "config.json").read_bytes() == b"{}"
    assert not list(tmp_path.glob(".copy.part-*"))  # built beside the target and renamed in


def test_objects_without_their_manifest_are_not_a_tree(store, tmp_path):
    client = store.client
    client.put_object(
        Bucket=store.bucket, Key="artifacts/acme/ftjob-1/checkpoints/step-00000004/weights.safetensors", Body=b"x"
    )
    store.put_tree(make_tree(tmp_path / "c2", {"state.json": b"{}"}), "acme/ftjob-1/checkpoints/step-00000002")

    assert store.complete_children("acme/ftjob-1/checkpoints") == ["step-00000002"]
    assert store.children("acme/ftjob-1/checkpoints") == ["step-00000002", "step-00000004"]
    with pytest.raises(StorageError) as missing:
        store.get_tree("acme/ftjob-1/checkpoints/step-00000004", tmp_path / "nope")
    assert missing.value.code == "artifact_missing"
    assert not (tmp_path / "nope").exists()

    pulled = store.pull_children("acme/ftjob-1/checkpoints", tmp_path / "local")
    assert pulled == ["step-00000002"]
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == ["step-00000002"]


def test_a_tree_replaced_in_place_is_incomplete_until_its_new_manifest(store, tmp_path):
    key = "acme/ftjob-1/checkpoints/step-00000002"
    store.put_tree(make_tree(tmp_path / "old", {"a": b"old", "b": b"old"}), key)

    class DiesAfterOneObject(ObjectStore):  # a writer killed between two objects
        sent = 0

        def _put_file(self, path, key):
            if self.sent == 1:
                raise KeyboardInterrupt
            self.sent += 1
            return super()._put_file(path, key)

    dying = DiesAfterOneObject(store.settings, prefix=store.prefix, retry_seconds=1)
    with pytest.raises(KeyboardInterrupt):
        dying.put_tree(make_tree(tmp_path / "new", {"a": b"new", "b": b"new"}), key)
    # "a" is new, "b" old: without the old manifest nobody trusts the mix
    assert store.read_manifest(key) is None
    assert store.complete_children("acme/ftjob-1/checkpoints") == []


def test_an_object_that_does_not_match_the_manifest_is_refused(store, tmp_path):
    store.put_tree(make_tree(tmp_path / "final", {"model.safetensors": b"good weights"}), "acme/j/final")
    store.client.put_object(Bucket=store.bucket, Key="artifacts/acme/j/final/model.safetensors", Body=b"evil weights")
    with pytest.raises(StorageError) as bad:
        store.get_tree("acme/j/final", tmp_path / "copy")
    assert bad.value.code == "artifact_corrupt"
    assert "does not match its manifest" in bad.value.message
    assert not (tmp_path / "copy").exists()


def test_a_tenant_prefix_deletes_only_that_tenant(store, tmp_path):
    tree = make_tree(tmp_path / "t", {"f": b"1"})
    for key in ("acme/j1/final", "acme/j2/checkpoints/step-00000002", "acme2/j3/final"):
        store.put_tree(tree, key)
    assert store.delete_tree("acme") == 4  # two files and two manifests
    assert store.children("acme") == []
    assert store.complete_children("acme2/j3") == ["final"]  # "acme" is a prefix of "acme2": untouched


@pytest.mark.parametrize("key", ["../other/final", "acme/../../x", "acme//final", "acme/./x", ""])
def test_keys_that_climb_or_are_empty_are_refused(store, key):
    with pytest.raises(ValueError):
        store.key(key)


def test_an_unreachable_endpoint_is_retried_then_reported(tmp_path):
    dead = S3Settings(
        bucket="bkt", endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id="k", secret_access_key="s"
    )
    store = ObjectStore(dead, retry_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(StorageError) as down:
        store.put_tree(make_tree(tmp_path / "t", {"f": b"1"}), "acme/j/final")
    assert down.value.code == "storage_unreachable"
    assert "object storage is unreachable (retried for 2 s)" in down.value.message
    assert 1.0 <= time.monotonic() - started < 10


def test_a_missing_bucket_is_reported_at_once(s3_server, tmp_path):
    store = ObjectStore(s3_server.settings("no-such-bucket"), retry_seconds=30)
    started = time.monotonic()
    with pytest.raises(StorageError) as missing:
        store.check()
    assert missing.value.code == "storage_bucket_missing"
    assert "TUNERY_S3_BUCKET" in missing.value.message
    assert time.monotonic() - started < 5  # not retried: waiting cannot create the bucket


def test_wrong_credentials_are_reported_at_once(tmp_path):
    server = S3Server(tmp_path, auth_actions=4)  # moto checks keys after the IAM set-up below
    server.start()
    try:
        anonymous = server.settings("bkt").client()
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key="x",
        )
        iam.create_user(UserName="tunery")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="tunery", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="tunery")["AccessKey"]
        anonymous.create_bucket(Bucket="bkt")
        good = S3Settings(
            bucket="bkt",
            endpoint_url=server.endpoint,
            access_key_id=key["AccessKeyId"],
            secret_access_key=key["SecretAccessKey"],
        )
        ObjectStore(good).check()  # the right key works

        wrong = S3Settings(
            bucket="bkt", endpoint_url=server.endpoint, access_key_id=key["AccessKeyId"], secret_access_key="wrong"
        )
        with pytest.raises(StorageError) as refused:
            ObjectStore(wrong, retry_seconds=30).put_tree(make_tree(tmp_path / "t", {"f": b"1"}), "acme/j/final")
        assert refused.value.code == "storage_credentials"
        assert "refused the credentials" in refused.value.message
        unknown = S3Settings(
            bucket="bkt", endpoint_url=server.endpoint, access_key_id="AKIANOBODY", secret_access_key="x"
        )
        with pytest.raises(StorageError) as nobody:
            ObjectStore(unknown, retry_seconds=30).check()
        assert nobody.value.code == "storage_credentials"
    finally:
        server.kill()


class _FullBucket(http.server.BaseHTTPRequestHandler):
    """Answers every request as MinIO does when its disks are full."""

    def _full(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>XMinioStorageFull</Code>'
            b"<Message>Storage backend has reached its minimum free drive threshold.</Message></Error>"
        )
        self.send_response(507)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_GET = do_DELETE = do_HEAD = do_POST = _full

    def log_message(self, *args) -> None:
        pass


def test_a_full_bucket_is_reported_and_leaves_no_manifest(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FullBucket)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        full = S3Settings(
            bucket="bkt",
            endpoint_url=f"http://127.0.0.1:{server.server_port}",
            access_key_id="k",
            secret_access_key="s",
        )
        with pytest.raises(StorageError) as refused:
            ObjectStore(full, retry_seconds=30).put_tree(make_tree(tmp_path / "t", {"f": b"1"}), "acme/j/final")
        assert refused.value.code == "storage_full"
        assert "full or over its quota" in refused.value.message
    finally:
        server.shutdown()


def test_the_environment_chooses_the_store():
    assert artifact_store_from_env({}) is None
    assert artifact_store_from_env({"TUNERY_S3_BUCKET": "b", "TUNERY_ARTIFACT_STORAGE": "local"}) is None
    store = artifact_store_from_env({"TUNERY_S3_BUCKET": "b", "TUNERY_S3_ARTIFACTS_PREFIX": "models"})
    assert store is not None
    assert store.key("acme/j/final") == "models/acme/j/final"
    with pytest.raises(ValueError, match="needs TUNERY_S3_BUCKET"):
        artifact_store_from_env({"TUNERY_ARTIFACT_STORAGE": "s3"})
    with pytest.raises(ValueError, match="'s3' or 'local'"):
        artifact_store_from_env({"TUNERY_ARTIFACT_STORAGE": "nfs"})
