"""An engine command for tests: runs the real engine (``python -m tunery_engine run SPEC``) and, on
the first attempt (no ``died-once`` marker next to the spec), kills it and itself with SIGKILL
right after its first training checkpoint event (not the linear probe's): the host dies mid-job, once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def main() -> None:
    spec = Path(sys.argv[1])
    marker = spec.parents[3] / f"died-once-{spec.parent.name}"  # outside the job's folder (wiped)
    engine = subprocess.Popen(
        [sys.executable, "-m", "tunery_engine", "run", str(spec)], stdout=subprocess.PIPE, text=True
    )
    assert engine.stdout is not None
    for line in engine.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        event = json.loads(line)
        if not marker.exists() and event.get("event") == "checkpoint" and not event.get("model"):
            marker.write_text("1")
            engine.kill()
            os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(engine.wait())


if __name__ == "__main__":
    main()
