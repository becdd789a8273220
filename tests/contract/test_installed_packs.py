"""The five packs shipped in verticals/ are installed, discovered and honour the contract; a broken
pack next to them is reported and skipped while they still load."""

from __future__ import annotations

import dataclasses

import pytest

from tunery_contract.discovery import discover, registered
from tunery_contract.testing import check_pack

SHIPPED = ("customer_service", "finance_sentiment", "recommendation", "medical", "legal")


@pytest.mark.parametrize("pack_id", SHIPPED)
def test_shipped_pack_is_discovered_and_sound(pack_id):
    found = discover()
    assert pack_id not in found.failures
    check_pack(found.get(pack_id))


@pytest.mark.parametrize("pack_id", SHIPPED)
def test_shipped_defaults_claim_no_seed(pack_id):
    """Every job gets its own seed (the client's, or a random one as OpenAI does): a pack default
    seed would be advertised by /v1/verticals and never used."""
    for task in discover().get(pack_id).tasks:
        assert "seed" not in task.default_hyperparameters, task.id


def test_a_broken_pack_does_not_stop_the_shipped_ones_from_loading():
    legal = discover().get("legal")
    broken = dataclasses.replace(legal, id="broken_legal", tasks=(), requires_contract=">=9")
    with registered(broken):
        found = discover()
    assert "offers no tasks" in found.failures["broken_legal"]
    assert set(SHIPPED) <= set(found.packs)
