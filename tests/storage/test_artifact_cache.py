"""The local cache of models from object storage: fetched once, bounded by size with the least
recently used evicted first, and one download when several processes ask at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tunery_storage import TREE_MANIFEST, ArtifactCache


def put(store, tmp_path: Path, key: str, size: int) -> None:
    tree = tmp_path / "src" / key.replace("/", "_")
    tree.mkdir(parents=True)
    (tree / "model.safetensors").write_bytes(os.urandom(size))
    store.put_tree(tree, key)


def test_a_model_is_downloaded_once_then_served_from_disk(store, tmp_path):
    put(store, tmp_path, "acme/j1/final", 1000)
    cache = ArtifactCache(store, tmp_path / "cache", max_bytes=10_000)
    first = cache.fetch("acme/j1/final")
    assert (first / "model.safetensors").stat().st_size == 1000
    assert (first / TREE_MANIFEST).is_file()

    store.delete_tree("acme/j1")  # the bucket no longer has it: only the local copy can answer
    assert cache.fetch("acme/j1/final") == first
    assert ArtifactCache(store, tmp_path / "cache", max_bytes=10_000).fetch("acme/j1/final") == first  # another process


def test_the_least_recently_used_models_leave_when_the_cache_is_full(store, tmp_path):
    for name in ("a", "b", "c"):
        put(store, tmp_path, f"acme/{name}/final", 4000)
    cache = ArtifactCache(store, tmp_path / "cache", max_bytes=9000, grace_seconds=0)
    a = cache.fetch("acme/a/final")
    os.utime(a, (time.time() - 100, time.time() - 100))
    b = cache.fetch("acme/b/final")
    os.utime(b, (time.time() - 50, time.time() - 50))
    os.utime(a, (time.time() - 10, time.time() - 10))  # a was used after b
    cache.fetch("acme/c/final")

    assert not b.exists()  # the least recently used went
    assert a.exists()
    assert cache.size() <= 9000


def test_a_model_in_use_is_not_evicted_within_the_grace_period(store, tmp_path):
    for name in ("a", "b"):
        put(store, tmp_path, f"acme/{name}/final", 4000)
    cache = ArtifactCache(store, tmp_path / "cache", max_bytes=5000, grace_seconds=300)
    a = cache.fetch("acme/a/final")
    b = cache.fetch("acme/b/final")
    assert a.exists()
    assert b.exists()
    cache.grace_seconds = 0
    os.utime(a, (time.time() - 60, time.time() - 60))
    assert cache.evict() == [a]
    assert cache.size() <= 5000


def test_processes_fetching_the_same_model_at_once_download_it_once(s3_server, bucket, store, tmp_path):
    put(store, tmp_path, "acme/j/final", 200_000)
    script = (
        "import logging; logging.basicConfig(level=logging.INFO);"
        "from pathlib import Path; from tunery_storage import ArtifactCache, ObjectStore;"
        "from tunery_storage import S3Settings;"
        f"s = S3Settings('{bucket}', '{s3_server.endpoint}', 'us-east-1', 'k', 's');"
        f"c = ArtifactCache(ObjectStore(s, prefix='artifacts/'), Path(r'{tmp_path / 'cache'}'), 10**9);"
        "print(c.fetch('acme/j/final'))"
    )
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1
    downloads = sum(err.count("fetched ") for _, err in outs)
    assert downloads == 1, [err[-1000:] for _, err in outs]
    assert (Path(paths.pop()) / "model.safetensors").stat().st_size == 200_000
    assert len(list((tmp_path / "cache" / "entries").iterdir())) == 1  # no partial folder left behind
