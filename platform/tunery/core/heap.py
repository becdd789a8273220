"""Short garbage-collector pauses in long-lived server processes.

A web process that serves a model holds millions of objects (torch, transformers, the model,
Django). Python's full collections walk all of them with the GIL held: 160-240 ms, every 3-7 s
under load, stalling every request in the process; that set the p99 of predictions
(bench/RESULTS.md, session 8). Objects that live as long as the process (what the app imported,
a loaded model) are moved out of the collector's sight with ``gc.freeze`` once they exist, so a
full collection walks only what requests created since."""

from __future__ import annotations

import gc

from tunery.core.env import env_bool


def settle() -> None:
    """Collect what is garbage now, then freeze everything left: call after loading or unloading
    long-lived objects (the app before forking workers, a model). An unload must come through
    here too: a frozen object in a reference cycle is never collected, so everything is thawed and
    collected once before freezing again. ``TUNERY_GC_FREEZE=false`` turns this off (to measure it)."""
    if not env_bool("TUNERY_GC_FREEZE", True):
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
