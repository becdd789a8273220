"""A web worker that has not loaded a model does not import torch (about 400 MB of a ~600 MB
process): the WSGI app, every URL's view and the request path import it lazily, on the first
deploy or prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from tunery.wsgi import application
    from django.urls import get_resolver
    from django.test import Client

    def rss_mb():  # now, not ru_maxrss: that one is inherited from the (large) parent across fork
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    def views(patterns):
        for p in patterns:
            yield from views(p.url_patterns) if hasattr(p, "url_patterns") else [p.callback]

    callbacks = list(views(get_resolver().url_patterns))  # every view module is imported
    client = Client()
    statuses = [client.get(path).status_code for path in ("/healthz", "/v1/models", "/v1/fine_tuning/jobs")]
    heavy = sorted(m for m in ("torch", "transformers", "peft", "tunery_serving") if m in sys.modules)
    print(json.dumps({"views": len(callbacks), "statuses": statuses, "heavy": heavy,
                      "rss_mb": rss_mb()}))
    """
)


def test_the_web_app_and_its_urls_do_not_import_torch(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tunery.settings", "TUNERY_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert report["views"] > 30
    assert report["statuses"] == [200, 401, 401]
    assert report["heavy"] == []
    assert report["rss_mb"] < 250, report  # the target for a web worker without a model
