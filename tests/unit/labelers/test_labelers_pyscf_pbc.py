"""Periodic PySCF labeller: stress = (1/V) dE/d(strain), forces = -dE/dR, typed failures."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from periodic_cells import rattled_silicon, strained

from otfparsl.errors import ConfigurationError, SCFNotConverged
from otfparsl.labelers import make_labeler
from otfparsl.labelers.pyscf_pbc import PySCFPeriodicLabeler

# Small: Gamma plus one k-point along c (so the k-point code path runs) and a fixed mesh. The
# finite differences are taken at the same mesh; at 11^3 the egg-box error of the coarse grid
# already shows (forces off -dE/dR by 2e-3 eV/Å), at 15^3 it is below 1e-5 eV/Å.
_FAST = {
    "xc": "pbe",
    "basis": "gth-szv",
    "pseudo": "gth-pbe",
    "kpts": (1, 1, 2),
    "mesh": (15, 15, 15),
    "conv_tol": 1e-12,
    "verbose": 0,
    "num_threads": 1,
}


def _silicon() -> Atoms:
    return rattled_silicon(a=5.6)


@pytest.mark.dft
@pytest.mark.slow
def test_stress_and_forces_are_derivatives_of_the_energy(tmp_path):
    labeler = PySCFPeriodicLabeler(**_FAST)
    atoms = _silicon()
    out = labeler.label(atoms, tmp_path / "ref")
    assert out.info["labeler"] == "pyscf_pbc" and out.info["label_seconds"] > 0
    assert (tmp_path / "ref" / "pyscf_pbc.log").is_file()
    assert atoms.calc is None  # input untouched
    stress, forces = out.get_stress(voigt=False), out.get_forces()
    assert np.abs(stress).max() > 1e-3 and np.abs(forces).max() > 0.1  # the test is not trivial
    volume, h = atoms.get_volume(), 1e-3

    def energy(moved: Atoms, name: str) -> float:
        return labeler.label(moved, tmp_path / name).get_potential_energy()

    for i, j in [(0, 0), (1, 2)]:  # ASE sign: sigma_ij = (1/V) dE/de_ij
        plus, minus = (
            energy(strained(atoms, i, j, h), f"s{i}{j}p"),
            energy(strained(atoms, i, j, -h), f"s{i}{j}m"),
        )
        assert stress[i, j] == pytest.approx((plus - minus) / (2 * h) / volume, abs=2e-6)
    for atom, axis in [(1, 2)]:
        moved = [atoms.copy(), atoms.copy()]
        moved[0].positions[atom, axis] += h
        moved[1].positions[atom, axis] -= h
        fd = -(energy(moved[0], f"f{atom}{axis}p") - energy(moved[1], f"f{atom}{axis}m")) / (2 * h)
        assert forces[atom, axis] == pytest.approx(fd, abs=1e-4)
    assert np.abs(forces.sum(axis=0)).max() < 5e-3  # translation invariance, up to the grid


@pytest.mark.dft
def test_scf_not_converged_is_raised_with_log(tmp_path):
    labeler = make_labeler(
        "pyscf_pbc", **{**_FAST, "kpts": (1, 1, 1), "mesh": (9, 9, 9), "max_cycle": 1, "verbose": 4}
    )
    with pytest.raises(SCFNotConverged, match="did not converge in 1 cycles") as info:
        labeler.label(_silicon(), tmp_path / "w")
    assert "cycle" in info.value.output.lower()


def test_structures_it_cannot_label_are_rejected_before_running(tmp_path):
    labeler = PySCFPeriodicLabeler()
    labeler.check_structure(_silicon())
    with pytest.raises(ConfigurationError, match="periodic in all three directions"):
        labeler.check_structure(molecule("H2O"))
    with pytest.raises(ConfigurationError, match="even number of electrons.*has 3"):
        labeler.check_structure(bulk("Li", "bcc", a=3.5))
    with pytest.raises(ConfigurationError, match="periodic in all three"):
        labeler.label(molecule("H2O"), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_options_are_validated_with_the_fix():
    assert make_labeler("pyscf_pbc", kpts=[2, 2, 2], mesh=[13, 13, 13]).kpts == (2, 2, 2)
    with pytest.raises(ConfigurationError, match=r"kpts must be three integers >= 1.*\[2, 2\]"):
        make_labeler("pyscf_pbc", kpts=[2, 2])
    with pytest.raises(ConfigurationError, match="mesh must be three integers"):
        make_labeler("pyscf_pbc", mesh=[12.5, 12, 12])
    with pytest.raises(ConfigurationError, match="Did you mean 'kpts'"):
        make_labeler("pyscf_pbc", kpoints=[2, 2, 2])


@pytest.mark.dft
def test_environment_check_names_what_is_missing():
    PySCFPeriodicLabeler().check_environment(["Si", "Si"])
    with pytest.raises(ConfigurationError, match="hybrid"):
        PySCFPeriodicLabeler(xc="b3lyp").check_environment(["Si"])
    with pytest.raises(ConfigurationError, match="not a functional libxc knows"):
        PySCFPeriodicLabeler(xc="pbee").check_environment(["Si"])
    with pytest.raises(ConfigurationError, match="no basis 'gth-szv' for Zr"):
        PySCFPeriodicLabeler().check_environment(["Zr", "S"])
