"""load_adapter dispatch, family defaults, missing optional dependencies."""

from __future__ import annotations

import importlib.util

import pytest

from otfparsl.errors import ConfigurationError, MissingDependencyError
from otfparsl.models import families, family_defaults, load_adapter
from otfparsl.models.base import ModelSpec
from otfparsl.settings import RunSettings
from otfparsl.units import KCAL_PER_MOL_EV


def test_family_defaults_are_the_published_values():
    mace = family_defaults("mace")
    assert (mace.sigma_tl, mace.step_size, mace.head_hidden) == (0.5, 1e-3, (64, 16))
    assert (mace.calibration_a, mace.calibration_b) == (1.5, 10.0)
    sevennet = family_defaults("sevennet")  # the paper's NequIP settings
    assert (sevennet.sigma_tl, sevennet.step_size, sevennet.head_hidden) == (0.2, 1e-4, (32, 16))
    assert (sevennet.calibration_a, sevennet.calibration_b) == (3.0, 10.0)
    eqv2 = family_defaults("equiformer")  # the paper's EquiformerV2; readable without fairchem
    assert (eqv2.sigma_tl, eqv2.step_size, eqv2.head_hidden) == (0.02, 1e-4, (64, 16))
    assert (eqv2.calibration_a, eqv2.calibration_b) == (1.5, 10.0)
    chg = family_defaults("chgnet")
    assert (chg.sigma_tl, chg.step_size, chg.head_hidden) == (0.2, 1e-3, (32, 16))  # docs/study_spread.md
    assert KCAL_PER_MOL_EV == pytest.approx(1 / 23.0609, rel=1e-4)


def test_every_family_is_declared_once_with_its_adapter():
    import importlib

    known = families()
    assert {"chgnet", "mace"} <= set(known)
    for name, family in known.items():
        module = importlib.import_module(f"otfparsl.models.{name}")
        assert module.FAMILY is family and family.name == name
        assert callable(getattr(module, family.adapter)), f"{name}: no class {family.adapter}"
        assert family.extra and family.package and family.sources
    # settings accept exactly the declared families
    RunSettings.from_dict({"structure": "x.xyz", "md": {"segments": [{"duration_fs": 1}]},
                           "model": {"family": "mace", "source": "tiny"}})  # fmt: skip
    with pytest.raises(ConfigurationError, match="unknown model family 'schnet'.*chgnet"):
        RunSettings.from_dict({"structure": "x.xyz", "md": {"segments": [{"duration_fs": 1}]},
                               "model": {"family": "schnet"}})  # fmt: skip


def test_unknown_family_lists_allowed_values():
    with pytest.raises(ConfigurationError, match="chgnet.*mace|mace.*chgnet"):
        load_adapter(ModelSpec(family="schnet", source="x"))
    with pytest.raises(ConfigurationError, match="allowed"):
        family_defaults("schnet")


def test_missing_package_raises_with_install_hint(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "chgnet" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDependencyError, match=r"otfparsl\[chgnet\]") as info:
        load_adapter(ModelSpec(family="chgnet", source="0.3.0", dtype="float32"))
    assert info.value.package == "chgnet"


def test_equiformer_without_fairchem_raises_with_install_hint(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "fairchem" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDependencyError, match=r"otfparsl\[equiformer\]"):
        load_adapter(ModelSpec(family="equiformer", source="tiny", dtype="float32"))
