"""Loads an exported model the way its model card says, with transformers (and peft) only, and
prints the class probabilities of some texts as JSON. Run as a subprocess by the export tests:
nothing of Tunery may be imported here (checked at the end)."""

from __future__ import annotations

import json
import sys

import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer


def probabilities(export: str, base: str, texts: list[str]) -> list[dict[str, float]]:
    with open(f"{export}/tunery.json") as manifest:
        card = json.load(manifest)
    config = AutoConfig.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=card["max_length"], return_tensors="pt")
    mean = getattr(config, "tunery_pooling", None) == "mean"
    with torch.no_grad():
        if card["exported_as"] == "lora":
            from peft import PeftModel

            model = AutoModelForSequenceClassification.from_pretrained(base, config=config)
            model = PeftModel.from_pretrained(model, export).merge_and_unload().eval()
            encoder, weight, bias = model.bert, model.classifier.weight, model.classifier.bias
        elif mean:
            from safetensors.torch import load_file

            encoder = AutoModel.from_pretrained(export).eval()
            head = load_file(f"{export}/model.safetensors")
            weight, bias = head["classifier.weight"], head["classifier.bias"]
        else:
            model = AutoModelForSequenceClassification.from_pretrained(export).eval()
            logits = model(**batch).logits
        if mean:
            states = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            logits = pooled @ weight.T + bias
        elif card["exported_as"] == "lora":
            logits = model(**batch).logits
    labels = [config.id2label[i] for i in range(config.num_labels)]
    return [dict(zip(labels, row)) for row in torch.softmax(logits, dim=-1).tolist()]


def main() -> None:
    """argv: BASE_MODEL_DIR TEXTS_JSON EXPORT_DIR... ; prints one JSON list per export."""
    base, texts, exports = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
    results = [probabilities(export, base, texts) for export in exports]
    leaked = sorted(m for m in sys.modules if m.split(".")[0].startswith("tunery"))
    assert not leaked, f"the plain loader imported {leaked}"
    print(json.dumps(results))


if __name__ == "__main__":
    main()
