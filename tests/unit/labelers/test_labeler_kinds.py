"""Every DFT code is declared once, in its own module, and settings and preflight ask it."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
from ase.build import bulk, molecule

from otfparsl.errors import ConfigurationError
from otfparsl.labelers import kinds, make_labeler
from otfparsl.labelers.base import LabelerKind
from otfparsl.settings import LabelerSettings


def test_every_kind_is_declared_once_with_its_checks():
    known = kinds()
    assert set(known) == {"ase", "cp2k", "pyscf", "pyscf_pbc", "vasp"}
    for name, kind in known.items():
        assert isinstance(kind, LabelerKind) and kind.name == name and kind.summary
        module = importlib.import_module(kind.labeler.__module__)
        assert module.KIND is kind
        assert dataclasses.is_dataclass(kind.labeler)
        for method in ("label", "check_structure", "check_environment"):
            assert callable(getattr(kind.labeler, method)), f"{name}: no {method}"


def test_settings_accept_exactly_the_declared_kinds():
    for name in kinds():
        assert LabelerSettings(kind=name).kind == name
    with pytest.raises(ValueError, match="unknown labeler kind 'gaussian'; allowed: ase, cp2k, pyscf, pyscf_pbc, vasp"):
        LabelerSettings(kind="gaussian")


def test_each_labeller_checks_the_structures_it_cannot_label():
    water, copper = molecule("H2O"), bulk("Cu", cubic=True)
    make_labeler("pyscf").check_structure(water)
    with pytest.raises(ConfigurationError, match="molecules only"):
        make_labeler("pyscf").check_structure(copper)
    with pytest.raises(ConfigurationError, match="spin"):
        make_labeler("pyscf", spin=1).check_structure(water)
    make_labeler("vasp").check_structure(copper)
    with pytest.raises(ConfigurationError, match="needs a periodic cell"):
        make_labeler("vasp").check_structure(water)
    make_labeler("pyscf_pbc").check_structure(bulk("Si"))
    with pytest.raises(ConfigurationError, match="periodic in all three directions"):
        make_labeler("pyscf_pbc").check_structure(water)
    make_labeler("cp2k").check_structure(copper)
    with pytest.raises(ConfigurationError, match="periodic in all three directions"):
        make_labeler("cp2k").check_structure(water)
    make_labeler("ase", name="emt").check_structure(copper)
