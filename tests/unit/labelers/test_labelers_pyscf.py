"""PySCF labeler: forces are -dE/dR, SCF failures are typed, molecules only."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from otfparsl.errors import ConfigurationError, SCFNotConverged
from otfparsl.labelers import make_labeler
from otfparsl.labelers.pyscf import PySCFLabeler


def _water() -> Atoms:
    return Atoms(
        "OH2",
        positions=[[0.0, 0.0, 0.12], [0.0, 0.77, -0.47], [0.0, -0.77, -0.47]],
    )


@pytest.mark.dft
def test_forces_match_finite_differences(tmp_path):
    # grid_response=True makes the forces the exact derivative of the reported energy (without
    # it they differ by ~1e-2 eV/Å on this coarse grid, which this test would catch).
    labeler = PySCFLabeler(
        xc="b3lyp", basis="sto-3g", conv_tol=1e-11, verbose=0, grid_level=1, grid_response=True,
        num_threads=1,
    )
    atoms = _water()
    out = labeler.label(atoms, tmp_path / "ref")
    assert out.info["labeler"] == "pyscf" and out.info["label_seconds"] > 0
    forces = out.get_forces()
    assert np.abs(forces).max() > 0.1  # away from the minimum, so the test is not trivial
    h = 1e-3
    for atom, axis in [(0, 2), (1, 1), (2, 2)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * h
            energies.append(
                labeler.label(moved, tmp_path / f"fd_{atom}_{axis}_{sign}").get_potential_energy()
            )
        fd_force = -(energies[0] - energies[1]) / (2 * h)
        assert forces[atom, axis] == pytest.approx(fd_force, abs=1e-4)
    # Newton's third law for an isolated molecule
    assert np.abs(forces.sum(axis=0)).max() < 1e-3
    assert (tmp_path / "ref" / "pyscf.log").is_file()
    assert atoms.calc is None  # input untouched


@pytest.mark.dft
def test_scf_not_converged_is_raised_with_log(tmp_path):
    labeler = make_labeler("pyscf", xc="b3lyp", basis="sto-3g", max_cycle=1, num_threads=1)
    with pytest.raises(SCFNotConverged, match="did not converge") as info:
        labeler.label(_water(), tmp_path / "w")
    assert "cycle" in info.value.output.lower() or "scf" in info.value.output.lower()


def test_periodic_input_rejected(tmp_path):
    with pytest.raises(ConfigurationError, match="molecules only"):
        PySCFLabeler().label(bulk("Cu", cubic=True), tmp_path / "w")
    assert not (tmp_path / "w").exists()
