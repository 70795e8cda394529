"""Generic ASE-calculator labeler, factory, working directories."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from otfparsl.errors import ConfigurationError
from otfparsl.labelers import Labeler, make_labeler
from otfparsl.labelers.ase_generic import ASECalculatorLabeler


def _cu() -> object:
    atoms = bulk("Cu", cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=1)
    atoms.cell[0, 1] += 0.1
    return atoms


@pytest.mark.parametrize("name", ["emt", "ase.calculators.emt:EMT"])
def test_emt_labels_equal_emt_values(tmp_path, name):
    atoms = _cu()
    labeler = make_labeler("ase", name=name)
    assert isinstance(labeler, Labeler)
    out = labeler.label(atoms, tmp_path / "call")
    ref = atoms.copy()
    ref.calc = EMT()
    assert isinstance(out.calc, SinglePointCalculator)
    assert out.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(out.get_forces(), ref.get_forces(), atol=1e-12)
    np.testing.assert_allclose(out.get_stress(), ref.get_stress(), atol=1e-12)
    assert np.abs(out.get_stress()).max() > 1e-4  # strained cell: stress is really there
    assert out.info["label_seconds"] >= 0 and atoms.calc is None
    np.testing.assert_array_equal(out.positions, atoms.positions)


def test_molecule_gets_no_stress(tmp_path):
    mol = molecule("H2O")
    out = ASECalculatorLabeler("emt").label(mol, tmp_path / "m")
    assert "stress" not in out.calc.results
    assert out.get_forces().shape == (3, 3)


def test_lj_kwargs_are_passed(tmp_path):
    atoms = molecule("H2O")
    a = ASECalculatorLabeler("lj", {"sigma": 1.0, "epsilon": 1.0}).label(atoms, tmp_path / "a")
    b = ASECalculatorLabeler("lj", {"sigma": 1.0, "epsilon": 2.0}).label(atoms, tmp_path / "b")
    assert b.get_potential_energy() == pytest.approx(2 * a.get_potential_energy(), rel=1e-12)


def test_one_workdir_per_call(tmp_path):
    labeler = ASECalculatorLabeler("emt")
    for step in (1, 2):
        labeler.label(_cu(), tmp_path / "labels" / f"step_{step:06d}")
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == [
        "step_000001",
        "step_000002",
    ]


def test_bad_names_and_options_rejected():
    with pytest.raises(ConfigurationError, match="cannot load"):
        ASECalculatorLabeler("no_such_calculator_xyz").make_calculator(".")
    with pytest.raises(ConfigurationError, match="directory"):
        ASECalculatorLabeler("emt", {"directory": "/tmp"})
    with pytest.raises(ConfigurationError, match="unknown labeler kind"):
        make_labeler("gaussian")
    with pytest.raises(ConfigurationError, match="unknown option 'functional'.*Allowed: basis"):
        make_labeler("pyscf", functional="b3lyp")
    with pytest.raises(ConfigurationError, match="Did you mean 'max_cycle'"):
        make_labeler("pyscf", max_cycles=200)
