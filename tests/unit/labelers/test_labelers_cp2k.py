"""CP2K labeller: stress = (1/V) dE/d(strain), forces = -dE/dR, DFT+U and spin, SCF guess, failures.

The tests that run CP2K are marked ``cp2k`` and skip where Debian's ``cp2k`` is not installed
(``.ci/run`` installs it). Spin-polarised DFT+U costs minutes per label even for the smallest
cells (8-atom MnO, 20-atom LaMnO3), so it is checked here on the input CP2K gets and was run by
hand (``workflows/lamno3/README.md``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from periodic_cells import rattled_silicon, strained

from otfparsl.errors import ConfigurationError, SCFNotConverged
from otfparsl.labelers import make_labeler
from otfparsl.labelers.cp2k import CP2KLabeler

needs_cp2k = pytest.mark.skipif(
    shutil.which("cp2k.psmp") is None, reason="CP2K is not installed (apt-get install cp2k)"
)

# Small and tight: PBE, GTH-PBE, DZVP-MOLOPT-SR, 200 Ry; SCF converged far below the finite
# differences' resolution.
_FAST = {"cutoff_Ry": 200.0, "rel_cutoff_Ry": 40.0, "eps_scf": 1e-8, "num_threads": 1}


def _silicon() -> Atoms:
    return rattled_silicon(a=5.5)


def _scf_steps(path) -> int:
    """SCF iterations of one CP2K call, inner steps of all outer loops together."""
    lines = (path / "cp2k.out").read_text().splitlines()
    outer = [line for line in lines if "outer SCF loop converged" in line]
    if outer:
        return int(outer[-1].split(" or ")[1].split()[0])
    return sum(int(line.split("converged in")[1].split()[0]) for line in lines if "SCF run converged in" in line)


@pytest.mark.dft
@pytest.mark.cp2k
@pytest.mark.slow
@needs_cp2k
def test_stress_and_forces_are_derivatives_of_the_energy(tmp_path):
    labeler = CP2KLabeler(**_FAST, kpts=(1, 1, 2))  # k-points: the diagonalisation path
    atoms = _silicon()
    out = labeler.label(atoms, tmp_path / "ref")
    assert out.info["labeler"] == "cp2k" and out.info["label_seconds"] > 0
    assert atoms.calc is None  # input untouched
    stress, forces = out.get_stress(voigt=False), out.get_forces()
    assert np.abs(stress).max() > 1e-3 and np.abs(forces).max() > 0.1  # the test is not trivial
    volume, h = atoms.get_volume(), 1e-3

    def energy(moved: Atoms, name: str) -> float:
        return labeler.label(moved, tmp_path / name).get_potential_energy()

    for i, j in [(0, 0), (1, 2)]:  # ASE sign: sigma_ij = (1/V) dE/de_ij
        plus = energy(strained(atoms, i, j, h), f"s{i}{j}p")
        minus = energy(strained(atoms, i, j, -h), f"s{i}{j}m")
        assert stress[i, j] == pytest.approx((plus - minus) / (2 * h) / volume, abs=2e-4)
    moved = [atoms.copy(), atoms.copy()]
    moved[0].positions[1, 2] += h
    moved[1].positions[1, 2] -= h
    fd = -(energy(moved[0], "fp") - energy(moved[1], "fm")) / (2 * h)
    assert forces[1, 2] == pytest.approx(fd, abs=2e-3)


@pytest.mark.dft
@pytest.mark.cp2k
@needs_cp2k
def test_previous_wavefunction_guess_saves_scf_steps_and_agrees_with_atomic(tmp_path):
    """The default guess changes a label by less than the SCF tolerance, in fewer steps.

    The labels lie deeper than the 80 characters CP2K reads of a keyword (its PROJECT once held
    the whole path and CP2K aborted): they run all the same."""
    atoms = molecule("H2O", cell=(6.0, 6.0, 6.0), pbc=True)  # Gamma only: the OT path
    atoms.center()
    labels = tmp_path / ("a-run-directory-deeper-than-the-80-characters-cp2k-reads-" * 2) / "dft"
    assert len(str(labels / "a" / "cp2k")) > 80
    previous = CP2KLabeler(**_FAST)
    first = previous.label(atoms, labels / "a")
    moved = atoms.copy()
    moved.positions[0] += 0.02
    warm = previous.label(moved, labels / "b")
    cold = CP2KLabeler(**_FAST, scf_guess="atomic").label(moved, tmp_path / "cold")
    assert "PROJECT cp2k\n" in (labels / "b" / "cp2k.inp").read_text()
    assert "SCF_GUESS RESTART" in (labels / "b" / "cp2k.inp").read_text()
    assert "SCF_GUESS ATOMIC" in (tmp_path / "cold" / "cp2k.inp").read_text()
    assert _scf_steps(labels / "b") < _scf_steps(tmp_path / "cold")
    assert warm.get_potential_energy() == pytest.approx(cold.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(warm.get_forces(), cold.get_forces(), atol=1e-3)
    np.testing.assert_allclose(warm.get_stress(), cold.get_stress(), atol=1e-5)
    assert first.get_potential_energy() != warm.get_potential_energy()
    # a different composition never takes that wavefunction
    other = atoms.copy()
    other.symbols[0] = "Ge"
    assert previous._guess_file(other, labels / "c") is None


@pytest.mark.dft
@pytest.mark.cp2k
@needs_cp2k
def test_scf_not_converged_is_raised_with_the_output(tmp_path):
    labeler = CP2KLabeler(**_FAST, max_scf=2, max_outer_scf=1, scf_guess="atomic")
    with pytest.raises(SCFNotConverged, match="did not converge.*x max_outer_scf=1 OT steps") as info:
        labeler.label(molecule("H2O", cell=(6.0, 6.0, 6.0), pbc=True), tmp_path / "w")
    assert "SCF run NOT converged" in info.value.output


def test_structures_it_cannot_label_are_rejected_before_running(tmp_path):
    labeler = CP2KLabeler(uks=True, plus_u={"Fe": {"l": 2, "u_eV": 5.3}})
    with pytest.raises(ConfigurationError, match="periodic in all three directions"):
        labeler.check_structure(molecule("H2O"))
    with pytest.raises(ConfigurationError, match=r"element\(s\) \['Fe'\] that are not in Si2"):
        labeler.check_structure(_silicon())
    with pytest.raises(ConfigurationError, match="periodic in all three"):
        labeler.label(molecule("H2O"), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_options_are_validated_with_the_fix():
    assert make_labeler("cp2k", kpts=[2, 2, 2]).kpts == (2, 2, 2)
    with pytest.raises(ConfigurationError, match=r"kpts must be three integers >= 1.*\[2, 2\]"):
        make_labeler("cp2k", kpts=[2, 2])
    with pytest.raises(ConfigurationError, match="set uks: true"):
        make_labeler("cp2k", multiplicity=3)
    with pytest.raises(ConfigurationError, match="magnetization.*needs uks"):
        make_labeler("cp2k", magnetization={"Mn": 4})
    with pytest.raises(ConfigurationError, match="must give l and u_eV"):
        make_labeler("cp2k", uks=True, plus_u={"Mn": {"U": 3.9}})
    with pytest.raises(ConfigurationError, match="no DFT\\+U with k-points"):
        make_labeler("cp2k", uks=True, kpts=[2, 2, 2], plus_u={"Mn": {"l": 2, "u_eV": 3.9}})
    with pytest.raises(ConfigurationError, match="scf_guess must be one of"):
        make_labeler("cp2k", scf_guess="restart")
    with pytest.raises(ConfigurationError, match="mixing must be one of"):
        make_labeler("cp2k", mixing="kerker")
    with pytest.raises(ConfigurationError, match=r"mixing_alpha must be in \(0, 1\]"):
        make_labeler("cp2k", mixing_alpha=0)
    with pytest.raises(ConfigurationError, match="Did you mean 'cutoff_Ry'"):
        make_labeler("cp2k", cutoff_ry=400)
    with pytest.raises(ConfigurationError, match=r"eps_default must be in \(0, 1e-4\)"):
        make_labeler("cp2k", eps_default=0.01)


def test_input_holds_each_elements_basis_pseudo_spin_and_u():
    labeler = CP2KLabeler(
        basis={"Mn": "DZVP-MOLOPT-PBE-GTH-q15"}, pseudo={"Mn": "GTH-PBE-q15"}, uks=True,
        magnetization={"Mn": 4}, plus_u={"Mn": {"l": 2, "u_eV": 3.9}},
    )  # fmt: skip
    text = labeler.input_template(["La", "Mn", "O", "O", "O"], guess=None)
    mn = text[text.index("&KIND Mn") : text.index("&END KIND", text.index("&KIND Mn"))]
    assert "BASIS_SET DZVP-MOLOPT-PBE-GTH-q15" in mn and "POTENTIAL GTH-PBE-q15" in mn
    assert "MAGNETIZATION 4" in mn and "L 2" in mn and "U_MINUS_J [eV] 3.9" in mn
    o = text[text.index("&KIND O") : text.index("&END KIND", text.index("&KIND O"))]
    assert (
        "BASIS_SET DZVP-MOLOPT-SR-GTH" in o and "POTENTIAL GTH-PBE" in o and "DFT_PLUS_U" not in o
    )
    assert "&OT" in text and "SCF_GUESS ATOMIC" in text  # Gamma, no smearing: OT
    assert "EPS_DEFAULT" not in text  # CP2K's own 1e-10 unless asked
    screened = CP2KLabeler(eps_default=1e-8).input_template(["Si"], guess=None)
    assert "&QS\n  EPS_DEFAULT 1.000E-08\n&END QS" in screened
    with_k = CP2KLabeler(kpts=(2, 2, 2)).input_template(["Si"], guess="guess.wfn")
    assert "&OT" not in with_k and "DIAGONALIZATION" in with_k and "MONKHORST-PACK 2 2 2" in with_k
    assert "WFN_RESTART_FILE_NAME guess.wfn" in with_k and "SCF_GUESS RESTART" in with_k
    assert "METHOD BROYDEN_MIXING" in with_k and "ALPHA 0.2" in with_k and "NBROYDEN 8" in with_k
    pulay = CP2KLabeler(smearing_K=500, mixing="pulay", mixing_alpha=0.05, mixing_vectors=6)
    assert "(pulay mixing, alpha 0.05)" in pulay._scf_message(Path("cp2k.out"))
    mixing = pulay.input_template(["Si"], guess=None)
    assert "METHOD PULAY_MIXING" in mixing and "ALPHA 0.05" in mixing and "NPULAY 6" in mixing


def test_environment_check_names_what_is_missing(tmp_path):
    with pytest.raises(ConfigurationError, match="not on PATH.*apt-get install cp2k"):
        CP2KLabeler(command="no-such-cp2k -s").check_environment(["Si"])
    with pytest.raises(ConfigurationError, match="data directory"):
        CP2KLabeler(command="true", data_dir=str(tmp_path / "none")).check_environment(["Si"])
    (tmp_path / "BASIS_MOLOPT").write_text("Si DZVP-MOLOPT-SR-GTH DZVP-MOLOPT-SR-GTH-q4\n 1\n")
    (tmp_path / "GTH_POTENTIALS").write_text("Si GTH-PBE-q4 GTH-PBE\n")
    files = {"command": "true", "data_dir": str(tmp_path), "basis_files": ("BASIS_MOLOPT",)}
    CP2KLabeler(**files).check_environment(["Si", "Si"])
    with pytest.raises(ConfigurationError, match="no basis 'DZVP-MOLOPT-SR-GTH' for La"):
        CP2KLabeler(**files).check_environment(["La"])
    with pytest.raises(ConfigurationError, match="no pseudopotential 'GTH-BLYP' for Si"):
        CP2KLabeler(**files, xc="BLYP").check_environment(["Si"])
    with pytest.raises(ConfigurationError, match="BASIS_MOLOPT_UZH.*does not exist"):
        CP2KLabeler(command="true", data_dir=str(tmp_path)).check_environment(["Si"])
