"""The serving precision defaults per host: bf16 where the CPU has bf16 units, fp32 elsewhere;
TUNERY_SERVING_PRECISION overrides it; the probe reads CPU flags without torch."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.serving.test_api import deploy, setup  # noqa: F401  (setup: the live server fixture)
from tunery.serving import conf


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / f"cpuinfo-{flags.replace(' ', '-')}"  # the probe caches per path
    path.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
    return str(path)


def test_the_flags_decide(tmp_path):
    assert conf.cpu_has_bf16_units(cpuinfo(tmp_path, "avx512f avx512_bf16")) is True
    assert conf.cpu_has_bf16_units(cpuinfo(tmp_path, "amx_bf16 amx_tile")) is True
    assert conf.cpu_has_bf16_units(cpuinfo(tmp_path, "avx512f")) is False
    assert conf.cpu_has_bf16_units(str(tmp_path / "absent")) is False


def test_the_probe_agrees_with_torchs():
    from tunery_engine.modeling import cpu_has_bf16_units

    assert conf.cpu_has_bf16_units() == cpu_has_bf16_units()


def test_auto_picks_the_hosts_default_and_a_setting_overrides_it(settings, monkeypatch):
    settings.TUNERY_SERVING_PRECISION = "auto"
    monkeypatch.setattr(conf, "cpu_has_bf16_units", lambda: True)
    assert conf.serving_precision() == "bf16"
    monkeypatch.setattr(conf, "cpu_has_bf16_units", lambda: False)
    assert conf.serving_precision() == "fp32"
    settings.TUNERY_SERVING_PRECISION = "int8"
    assert conf.serving_precision() == "int8"
    settings.TUNERY_SERVING_PRECISION = "fp16"
    with pytest.raises(ImproperlyConfigured):
        conf.serving_precision()


def test_the_deployment_reports_the_hosts_default(setup):  # noqa: F811
    """Deployed without a precision, the deployment says what it is served in on this host."""
    client, model = setup["client"], setup["models"]["intents"]
    expected = "bf16" if conf.cpu_has_bf16_units() else "fp32"
    deployed = deploy(client, model, precision=None)
    assert deployed["precision"] == expected
