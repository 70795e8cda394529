"""The ethanol analysis on a synthetic run: dihedrals, conformers, transitions, the rate test."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase.build import molecule

from otfparsl.analysis.systems import analyses, run_analyses
from otfparsl.analysis.systems.ethanol_conformers import assign, dihedrals_deg, torsion_atoms


def _with_dihedral(atoms, phi_deg):
    h, o, c1, c2 = torsion_atoms(atoms)
    out = atoms.copy()
    out.set_dihedral(c2, c1, o, h, phi_deg % 360.0, indices=[h])  # the same torsion, h moves
    return out


def _fake_run(tmp_path, phis, called_steps, frame_every=5, dt_fs=0.5):
    base = molecule("CH3CH2OH")
    rd = tmp_path / "run"
    rd.mkdir()
    n_steps = len(phis) * frame_every
    with open(rd / "events.jsonl", "w") as handle:
        for step in range(n_steps):
            event = {"event": "step", "walker": 0, "step": step, "time_fs": step * dt_fs,
                     "temperature_K": 300.0, "intervened": step in called_steps}  # fmt: skip
            handle.write(json.dumps(event) + "\n")
    for k, phi in enumerate(phis):
        frame = _with_dihedral(base, phi)
        frame.info["time_fs"] = k * frame_every * dt_fs
        ase.io.write(rd / "trajectory.extxyz", frame, format="extxyz", append=True)
    return rd


def test_dihedral_is_read_back_and_conformers_use_cores():
    base = molecule("CH3CH2OH")
    phis = [175.0, -170.0, 120.0, 100.0, 60.0, 110.0, 140.0, 62.0, -60.0, -179.0]
    frames = [_with_dihedral(base, p) for p in phis]
    np.testing.assert_allclose(dihedrals_deg(frames), [175, -170, 120, 100, 60, 110, 140, 62, -60, -179], atol=1e-6)
    # 120 and 100 are between cores: still anti; 110 and 140 after gauche+: still gauche+
    assert assign(np.array(phis)) == ["anti", "anti", "anti", "anti", "gauche+", "gauche+", "gauche+",
                                      "gauche+", "gauche-", "anti"]  # fmt: skip


def test_analysis_finds_transitions_and_compares_call_rates(tmp_path):
    phis = [180.0] * 40 + [60.0] * 40 + [120.0, 152.0] + [160.0] * 38  # anti -> g+ at frame 40, back at 81
    frame_every, dt = 5, 0.5
    transition_times = [40 * frame_every * dt, 81 * frame_every * dt]  # 100 fs, 202.5 fs
    near = [int(t / dt) + d for t in transition_times for d in (-4, 0, 6)]
    rd = _fake_run(tmp_path, phis, {0, *near, 150, 500}, frame_every, dt)
    assert "ethanol_conformers" in analyses()
    run_analyses(rd, ["ethanol_conformers"])
    result = json.loads((rd / "analysis" / "ethanol_conformers.json").read_text())
    assert [(t["from"], t["to"], t["time_fs"]) for t in result["transitions"]] == [
        ("anti", "gauche+", 100.0), ("gauche+", "anti", 202.5)]  # fmt: skip
    assert result["populations"]["gauche+"] == pytest.approx(41 / 120)
    test = result["dft_calls_near_transitions"]
    assert test["calls_inside"] == 6 and test["calls_outside"] == 3  # steps 0, 150, 500
    assert test["steps_inside"] + test["steps_outside"] == 600
    assert test["p_value"] < 0.01
    assert (rd / "analysis" / "ethanol_conformers.png").stat().st_size > 5000
