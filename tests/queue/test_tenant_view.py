"""What the tenant reads of a job (its error, its events) carries no absolute server path."""

from __future__ import annotations

import pytest

from tunery.jobs.lifecycle import for_tenant


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("model path /srv/models/bert-base is not a directory", "model path bert-base is not a directory"),
        ("cannot load '/data/a b/x.pt': truncated", "cannot load 'a b/x.pt': truncated"),
        ("PosixPath('/var/lib/tunery/acme/ftjob-1/checkpoints/step-5')", "PosixPath('step-5')"),
        ("see /srv/models/bert/ for details", "see bert for details"),
        (
            "loss 1/2 and/or n/a at https://huggingface.co/docs/x",
            "loss 1/2 and/or n/a at https://huggingface.co/docs/x",
        ),
        ("ratio 3 / 4, ./relative/path and ~/home", "ratio 3 / 4, ./relative/path and ~/home"),
    ],
)
def test_absolute_paths_are_cut_to_their_names(text, shown):
    assert for_tenant(text) == shown
