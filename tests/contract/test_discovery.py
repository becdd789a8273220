"""Discovery: a broken or incompatible pack is reported and skipped; the others load."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from tunery_contract import CONTRACT_VERSION, PackError, VerticalPack
from tunery_contract.discovery import discover, registered


def test_registered_pack_is_discovered_and_gone_afterwards(dummy_pack):
    with registered(dummy_pack):
        assert discover().get("dummy") is dummy_pack
    with pytest.raises(PackError, match="no vertical 'dummy' is installed"):
        discover().get("dummy")


def test_invalid_pack_is_reported_and_skipped_while_others_load(dummy_pack):
    broken = dataclasses.replace(dummy_pack, id="Not A Slug", tasks=())
    with registered(dummy_pack), registered(broken, name="broken"):
        found = discover()
    assert "dummy" in found.packs
    assert "broken" not in found.packs
    assert "not a lowercase slug" in found.failures["broken"]
    assert "offers no tasks" in found.failures["broken"]
    with pytest.raises(PackError, match="failed to load"):
        found.get("broken")


def test_incompatible_contract_version_is_skipped(dummy_pack):
    future = dataclasses.replace(dummy_pack, id="future", requires_contract=">=2")
    garbled = dataclasses.replace(dummy_pack, id="garbled", requires_contract="one point oh")
    with registered(future), registered(garbled), registered(dummy_pack):
        found = discover()
    assert found.failures["future"] == f"needs contract >=2, platform provides {CONTRACT_VERSION}"
    assert "not a version specifier" in found.failures["garbled"]
    assert "dummy" in found.packs


def test_duplicate_pack_id_is_reported(dummy_pack):
    twin = dataclasses.replace(dummy_pack, name="Twin")
    with registered(dummy_pack), registered(twin, name="twin"):
        found = discover()
    assert found.packs["dummy"] is dummy_pack
    assert "already provided" in found.failures["twin"]


def test_entry_point_that_fails_to_import_or_is_not_a_pack(tmp_path, monkeypatch, dummy_pack):
    """Real entry points from a distribution on sys.path, the way an installed pack appears."""
    dist = tmp_path / "tunery_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tunery-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[tunery.verticals]\nbroken = tunery_broken_pack:pack\nwrong = tunery_wrong_pack:pack\n"
    )
    (tmp_path / "tunery_broken_pack.py").write_text("import a_module_that_does_not_exist\n")
    (tmp_path / "tunery_wrong_pack.py").write_text("pack = 'not a pack'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tunery_broken_pack", raising=False)
    with registered(dummy_pack):
        found = discover()
    assert found.failures["broken"].startswith("import failed: ModuleNotFoundError")
    assert found.failures["wrong"] == "entry point gives str, not a VerticalPack"
    assert "dummy" in found.packs


def test_asking_for_a_task_the_pack_does_not_offer(dummy_pack):
    with pytest.raises(PackError) as caught:
        dummy_pack.task("summary")
    assert str(caught.value) == "vertical 'dummy' offers no task 'summary' (it offers: intent, ner, chat)"


def test_unknown_hyperparameters_make_a_pack_invalid(dummy_pack):
    intent = dataclasses.replace(dummy_pack.tasks[0], default_hyperparameters={"epochs": 3})
    odd = dataclasses.replace(dummy_pack, tasks=(intent,))
    assert odd.problems() == ["task 'intent': unknown hyperparameters ['epochs']"]
    assert isinstance(odd, VerticalPack)


def test_tenant_configuration_problems(dummy_pack):
    def check(config):
        return [] if 0 <= config["threshold"] <= 1 else ["threshold must be between 0 and 1"]

    pack = dataclasses.replace(dummy_pack, config_defaults={"threshold": 0.5}, config_validator=check)
    assert pack.config_problems({}) == []
    assert pack.config_problems({"threshold": 2}) == ["threshold must be between 0 and 1"]
    assert pack.config_problems({"treshold": 0.2}) == ["unknown setting 'treshold'; known: ['threshold']"]
    assert pack.config_problems([1]) == ["the configuration must be a JSON object, not list"]
    crashing = dataclasses.replace(pack, config_validator=lambda config: 1 / 0)
    assert "could not check this configuration (ZeroDivisionError" in crashing.config_problems({})[0]


def test_a_pack_whose_own_defaults_fail_its_config_check_is_skipped(dummy_pack):
    odd = dataclasses.replace(dummy_pack, config_defaults={"x": 1}, config_validator=lambda config: ["x must be 2"])
    with registered(odd):
        found = discover()
    assert found.failures["dummy"] == "config_defaults: x must be 2"
