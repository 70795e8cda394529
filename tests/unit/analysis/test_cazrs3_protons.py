"""Proton jumps between S atoms, the S-S distance before each, DFT calls near jumps, proton MSD."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase import Atoms

from otfparsl.analysis.events import window_rate_test
from otfparsl.analysis.systems import analyses, run_analyses
from otfparsl.analysis.systems.cazrs3_protons import (
    detect_jumps,
    final_uniform_stretch,
    host_changes,
)

BOX_A = 12.0
FRAME_FS = 6.0  # 4 MD steps of 1.5 fs per frame
N_FRAMES = 100
# atoms: 0 H (hops between S 2 and S 3 across the x boundary), 1 H (rattles at S 4 / S 5),
# 2-5 S, 6 Ca (a spectator)
HOP_FRAMES = (20, 60)  # proton 0 is at S 3 for frames 20..59, at S 2 before and after


def _unwrapped_positions() -> np.ndarray:
    """(N_FRAMES, 7, 3) positions, Å, before wrapping into the 12 Å box."""
    pos = np.zeros((N_FRAMES, 7, 3))
    for k in range(N_FRAMES):
        s_a = np.array([0.5, 6.0, 6.0])
        s_b = np.array([0.5 - 3.4 - 0.01 * k, 6.0, 6.0])  # across the boundary, drifting apart
        s_c, s_d = np.array([6.0, 3.0, 3.0]), np.array([6.0, 3.0, 6.2])
        at_b = HOP_FRAMES[0] <= k < HOP_FRAMES[1]
        h0 = s_b + [1.35, 0, 0] if at_b else s_a - [1.35, 0, 0]
        rattle = k in (40, 41, 42) or k >= 97  # 12 fs near S 5 (too short), and again at the end
        h1 = s_d - [0, 0, 1.3] if rattle else s_c + [0, 0, 1.3]
        pos[k] = [h0, h1, s_a, s_b, s_c, s_d, [9.0, 9.0, 9.0]]
    return pos


def _frames() -> list[Atoms]:
    frames = []
    for k, positions in enumerate(_unwrapped_positions()):
        atoms = Atoms("H2S4Ca", positions=positions, cell=np.eye(3) * BOX_A, pbc=True)
        atoms.wrap()
        atoms.info["time_fs"] = k * FRAME_FS
        frames.append(atoms)
    return frames


def test_host_changes_need_the_dwell_time():
    times = np.arange(10) * 6.0
    assert host_changes(np.array([7, 7, 9, 7, 9, 9, 9, 9, 9, 9]), times, 30.0) == ([(4, 7, 9)], 0)
    assert host_changes(np.array([7, 7, 9, 9, 9, 7, 7, 7, 7, 7]), times, 30.0) == (
        [],
        0,
    )  # 12 fs at S 9
    assert host_changes(np.array([7, 7, 7, 7, 7, 7, 7, 9, 9, 9]), times, 30.0) == (
        [],
        1,
    )  # pending at the end
    assert host_changes(np.array([7, 9, 9, 8, 8, 8, 8, 8, 8, 8]), times, 30.0) == ([(3, 7, 8)], 0)


def test_jumps_are_exactly_the_constructed_ones():
    frames = _frames()
    times = np.arange(N_FRAMES) * FRAME_FS
    jumps, pending = detect_jumps(frames, times)
    assert [(j.frame, j.time_fs, j.proton, j.from_s, j.to_s) for j in jumps] == [
        (20, 120.0, 0, 2, 3), (60, 360.0, 0, 3, 2)]  # fmt: skip
    # the S-S distance in the frame before each jump (minimum image across the x boundary)
    assert [j.s_s_distance_A for j in jumps] == pytest.approx(
        [3.4 + 0.01 * 19, 3.4 + 0.01 * 59], abs=1e-9
    )
    assert pending == 1  # proton 1's last 3 frames near S 5


def test_rattling_proton_gives_no_jump():
    frames = [f[[1, 4, 5]] for f in _frames()]  # proton 1 with its two S atoms only
    jumps, _ = detect_jumps(frames, np.arange(N_FRAMES) * FRAME_FS)
    assert jumps == []
    jumps, _ = detect_jumps(frames, np.arange(N_FRAMES) * FRAME_FS, min_dwell_fs=10.0)
    assert [(j.frame, j.from_s, j.to_s) for j in jumps] == [
        (40, 1, 2),
        (43, 2, 1),
        (97, 1, 2),
    ]  # shorter dwell


def test_final_uniform_stretch_skips_the_langevin_frames():
    times = np.concatenate([np.arange(0, 30.0, 3.0), 27.0 + 5.25 + np.arange(8) * 6.0])
    assert final_uniform_stretch(times) == 10
    assert final_uniform_stretch(np.arange(5) * 6.0) == 0


def _fake_run(tmp_path: Path, called_steps: set[int]) -> Path:
    rd = tmp_path / "run"
    rd.mkdir()
    md = {
        "segments": [
            {
                "ensemble": "nve",
                "temperature_K": 1500,
                "duration_fs": N_FRAMES * FRAME_FS,
                "timestep_fs": 1.5,
            }
        ]
    }
    (rd / "run.yaml").write_text(yaml.safe_dump({"name": "fake", "md": md}))
    with open(rd / "events.jsonl", "w") as handle:
        for step in range(N_FRAMES * 4):
            event = {"event": "step", "walker": 0, "step": step, "segment": 0, "time_fs": step * 1.5,
                     "temperature_K": 1500.0, "intervened": step in called_steps}  # fmt: skip
            handle.write(json.dumps(event) + "\n")
    for frame in _frames():
        ase.io.write(rd / "trajectory.extxyz", frame, format="extxyz", append=True)
    return rd


def test_analysis_on_a_synthetic_run(tmp_path):
    inside = {78, 80, 85, 238, 242}  # within 15 fs (10 steps) of the jumps at steps 80 and 240
    outside = {0, 150, 300}
    rd = _fake_run(tmp_path, inside | outside)
    assert "cazrs3_protons" in analyses()
    run_analyses(rd, ["cazrs3_protons"])
    result = json.loads((rd / "analysis" / "cazrs3_protons.json").read_text())
    assert [(j["time_fs"], j["from_s"], j["to_s"]) for j in result["jumps"]] == [
        (120.0, 2, 3),
        (360.0, 3, 2),
    ]
    test = result["dft_calls_near_jumps"]
    assert (test["calls_inside"], test["calls_outside"]) == (5, 3)
    times = np.arange(N_FRAMES * 4) * 1.5
    expected = window_rate_test(
        times, [s in inside | outside for s in range(times.size)], [120.0, 360.0], 15.0
    )
    assert test["p_value"] == pytest.approx(expected["p_value"]) and test["p_value"] < 0.01
    # proton MSD from the positions as constructed (no wrapping), over every origin
    unwrapped = _unwrapped_positions()[:, :2]
    lag = 10
    by_hand = np.mean(np.sum((unwrapped[lag:] - unwrapped[:-lag]) ** 2, axis=-1))
    msd = result["proton_msd"]
    assert msd["lag_fs"][lag] == pytest.approx(lag * FRAME_FS)
    assert msd["msd_A2"][lag] == pytest.approx(by_hand)
    assert msd["D_cm2_per_s"] is not None and result["production_runs"] == []
    assert (rd / "analysis" / "cazrs3_protons.png").stat().st_size > 5000


def test_production_runs_are_analysed_too(tmp_path):
    rd = _fake_run(tmp_path, {0})
    production = rd / "md" / "production_seed0"
    production.mkdir(parents=True)
    for frame in _frames()[:50]:
        ase.io.write(production / "trajectory.extxyz", frame, format="extxyz", append=True)
    run_analyses(rd, ["cazrs3_protons"])
    result = json.loads((rd / "analysis" / "cazrs3_protons.json").read_text())
    (run,) = result["production_runs"]
    assert run["run"] == "production_seed0" and run["n_jumps"] == 1 and run["msd"]["n_frames"] == 50
