"""LaMnO3: the published Pbnm structure, its supercell, the order parameters and the DFT-call rates."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.md.melchionna import MelchionnaNPT

from otfparsl.analysis.systems import analyses, run_analyses
from otfparsl.analysis.systems._lamno3_structure import (
    PBNM_LATTICE_A,
    lamno3_pbnm,
    lamno3_pseudocubic_supercell,
    upper_triangular,
)
from otfparsl.analysis.systems.lamno3_order import (
    jahn_teller_rms,
    mn_o_bonds,
    order_parameters,
    orthorhombic_lattice,
)
from otfparsl.errors import ConfigurationError

WORKFLOW = Path(__file__).resolve().parents[3] / "workflows" / "lamno3"
#: Published Mn-O distances of the room-temperature structure (RC98), Å.
PUBLISHED_MN_O = (1.907, 1.968, 2.178)


def _cubic_perovskite(a_A: float = 3.95) -> Atoms:
    """Ideal cubic LaMnO3 (Pm-3m), 2x2x2: 40 atoms, every Mn-O bond a/2."""
    cell = Atoms(
        "MnLaO3", cell=np.eye(3) * a_A, pbc=True,
        scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5)],
    )  # fmt: skip
    return cell * (2, 2, 2)


def test_pbnm_structure_has_the_published_jahn_teller_octahedron():
    for atoms in (lamno3_pbnm(), lamno3_pseudocubic_supercell()):
        bonds = mn_o_bonds(atoms)
        assert bonds.shape == (atoms.get_chemical_symbols().count("Mn"), 6)
        for row in bonds:  # two short, two medium, two long bonds at every Mn
            np.testing.assert_allclose(row, np.repeat(PUBLISHED_MN_O, 2), atol=0.003)
        # sigma_JT of (1.907, 1.968, 2.178) x 2 is 0.116 Å
        assert jahn_teller_rms(atoms) == pytest.approx(0.1161, abs=0.0015)


def test_supercell_is_40_atoms_upper_triangular_with_the_orthorhombic_axes():
    atoms = lamno3_pseudocubic_supercell()
    assert atoms.get_chemical_formula() == "La8Mn8O24"
    cell = np.asarray(atoms.cell)
    assert MelchionnaNPT._isuppertriangular(cell) and np.linalg.det(cell) > 0
    np.testing.assert_allclose(orthorhombic_lattice(cell), PBNM_LATTICE_A, atol=1e-10)
    assert atoms.get_volume() == pytest.approx(2 * np.prod(PBNM_LATTICE_A))
    values = order_parameters([atoms])
    assert values["orthorhombic_strain"][0] == pytest.approx(
        2 * (5.7473 - 5.5367) / (5.5367 + 5.7473)
    )
    assert values["c_pc_A"][0] == pytest.approx(7.6929 / 2) and values["a_pc_A"][
        0
    ] == pytest.approx(5.5367 / np.sqrt(2))
    assert (
        np.min(atoms.get_all_distances(mic=True) + 10 * np.eye(40)) > 1.9
    )  # no overlap after the rotation


def test_the_20_atom_pbnm_cell_gives_the_same_order_parameters_as_the_supercell():
    small, large = order_parameters([lamno3_pbnm()]), order_parameters([lamno3_pseudocubic_supercell()])
    for key in small:
        assert small[key][0] == pytest.approx(large[key][0], abs=1e-9), key
    with pytest.raises(ConfigurationError, match="20-atom Pbnm cell or of the 40-atom"):
        orthorhombic_lattice(np.eye(3), n_formula_units=2)


def test_committed_structure_file_is_the_builders_output():
    committed = ase.io.read(WORKFLOW / "lamno3_2x2x2.extxyz")
    built = lamno3_pseudocubic_supercell()
    assert committed.get_chemical_symbols() == built.get_chemical_symbols()
    np.testing.assert_allclose(committed.cell, built.cell, atol=1e-12)
    np.testing.assert_allclose(committed.positions, built.positions, atol=1e-7)
    assert MelchionnaNPT._isuppertriangular(
        np.asarray(committed.cell)
    )  # exact zeros survive the file


def test_upper_triangular_keeps_the_crystal():
    atoms = lamno3_pbnm()
    atoms.set_cell(
        atoms.cell @ np.array([[0.8, 0.6, 0.0], [-0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]),
        scale_atoms=True,
    )
    rotated = upper_triangular(atoms)
    assert MelchionnaNPT._isuppertriangular(np.asarray(rotated.cell))
    np.testing.assert_allclose(rotated.cell.cellpar(), atoms.cell.cellpar(), atol=1e-10)
    np.testing.assert_allclose(
        rotated.get_scaled_positions(), atoms.get_scaled_positions(), atol=1e-12
    )


def test_undistorted_cubic_perovskite_has_no_distortion():
    atoms = _cubic_perovskite(3.95)
    np.testing.assert_allclose(mn_o_bonds(atoms), 3.95 / 2, atol=1e-12)
    values = order_parameters([atoms])
    assert values["jahn_teller_rms_A"][0] == pytest.approx(0.0, abs=1e-12)
    assert values["orthorhombic_strain"][0] == pytest.approx(0.0, abs=1e-12)
    for key in ("a_pc_A", "b_pc_A", "c_pc_A"):
        assert values[key][0] == pytest.approx(3.95)


def test_analysis_refuses_a_structure_without_manganese():
    with pytest.raises(ConfigurationError, match="LaMnO3"):
        jahn_teller_rms(
            Atoms("Cu4", cell=np.eye(3) * 3.6, pbc=True, scaled_positions=np.eye(4, 3) * 0.5)
        )


def _ideal_of(atoms: Atoms) -> Atoms:
    """The supercell with every atom on its ideal perovskite site, in a cubic cell of equal volume."""
    ideal = atoms.copy()
    edge = atoms.get_volume() ** (1 / 3)
    ideal.set_cell(np.eye(3) * edge, scale_atoms=False)
    ideal.set_scaled_positions(np.round(atoms.get_scaled_positions() * 4) / 4)
    return ideal


def _fake_run(tmp_path: Path, called_steps: set[int]) -> Path:
    """300 K 100 fs -> 800 K 200 fs -> 300 K 100 fs at 0.5 fs; Pbnm frames at 300 K, ideal at 800 K."""
    rd = tmp_path / "run"
    rd.mkdir()
    segments = [(300.0, 100.0), (800.0, 200.0), (300.0, 100.0)]
    md = {
        "segments": [
            {"ensemble": "npt", "temperature_K": t, "duration_fs": d, "timestep_fs": 0.5}
            for t, d in segments
        ]
    }
    (rd / "run.yaml").write_text(yaml.safe_dump({"name": "fake", "md": md}))
    bounds = np.cumsum([0] + [int(d / 0.5) for _, d in segments])
    with open(rd / "events.jsonl", "w") as handle:
        for step in range(bounds[-1]):
            segment = int(np.searchsorted(bounds, step, side="right") - 1)
            event = {"event": "step", "walker": 0, "step": step, "segment": segment, "time_fs": step * 0.5,
                     "temperature_K": segments[segment][0], "intervened": step in called_steps}  # fmt: skip
            handle.write(json.dumps(event) + "\n")
    pbnm = lamno3_pseudocubic_supercell()
    ideal = _ideal_of(pbnm)
    for step in range(0, bounds[-1], 20):
        segment = int(np.searchsorted(bounds, step, side="right") - 1)
        frame = (ideal if segment == 1 else pbnm).copy()
        frame.info.update(time_fs=step * 0.5, segment=segment)
        ase.io.write(rd / "trajectory.extxyz", frame, format="extxyz", append=True)
    return rd


def test_ideal_sites_of_the_supercell_form_a_perfect_perovskite():
    ideal = _ideal_of(lamno3_pseudocubic_supercell())
    np.testing.assert_allclose(mn_o_bonds(ideal), ideal.cell[0, 0] / 4, atol=1e-12)


def test_analysis_on_a_synthetic_run(tmp_path):
    seg0, seg1, seg2 = {0, 1, 2, 5, 20}, {200, 203, 210, 250, 500}, {700}
    rd = _fake_run(tmp_path, seg0 | seg1 | seg2)
    assert "lamno3_order" in analyses()
    run_analyses(rd, ["lamno3_order"])
    result = json.loads((rd / "analysis" / "lamno3_order.json").read_text())
    rates = result["dft_call_rates"]["segments"]
    assert [r["calls"] for r in rates] == [5, 5, 1]
    assert [r["covered_ps"] for r in rates] == pytest.approx([0.1, 0.2, 0.1])
    assert [r["calls_per_ps"] for r in rates] == pytest.approx([50.0, 25.0, 10.0])
    assert (rates[1]["calls_first_half"], rates[1]["calls_second_half"]) == (
        4,
        1,
    )  # 800 K: calls decay
    assert sum(result["dft_call_rates"]["bins"]["calls"]) == 11
    means = result["segment_means_second_half"]
    assert means[0]["jahn_teller_rms_A"]["mean"] == pytest.approx(0.1161, abs=0.0015)
    assert means[1]["jahn_teller_rms_A"]["mean"] == pytest.approx(0.0, abs=1e-6)  # extxyz rounding
    assert means[1]["orthorhombic_strain"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert means[2]["orthorhombic_strain"]["mean"] == pytest.approx(0.03733, abs=1e-4)
    assert len(result["frames"]["time_fs"]) == result["n_frames"] == 40
    assert (rd / "analysis" / "lamno3_order.png").stat().st_size > 5000
