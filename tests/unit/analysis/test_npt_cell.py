"""The NPT cell analysis on a synthetic periodic run: volumes, pressures, per-segment summaries."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import yaml
from ase import units
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from otfparsl.analysis.systems import run_analyses


def test_volume_and_pressure_per_frame_and_segment(tmp_path):
    rd = tmp_path / "run"
    rd.mkdir()
    md = {"segments": [{"ensemble": "npt", "temperature_K": 300, "pressure_bar": 1, "duration_fs": 4, "timestep_fs": 2},
                       {"ensemble": "npt", "temperature_K": 300, "pressure_bar": 20000, "duration_fs": 4, "timestep_fs": 2}]}  # fmt: skip
    (rd / "run.yaml").write_text(yaml.safe_dump({"md": md}))
    pressures_GPa = [0.0, 0.5, 1.0, 1.5, 2.0]
    with open(rd / "events.jsonl", "w") as handle:
        for step in range(5):
            handle.write(json.dumps({"event": "step", "walker": 0, "step": step, "segment": int(step > 2),
                                     "time_fs": 2.0 * step, "temperature_K": 300.0, "intervened": step in (0, 3)}) + "\n")  # fmt: skip
    for step, p in enumerate(pressures_GPa):
        frame = bulk("Si", "diamond", a=5.43 * (1 - 0.01 * step))
        stress = -p * units.GPa * np.array([1, 1, 1, 0, 0, 0], dtype=float)  # ASE sign: compression < 0
        frame.calc = SinglePointCalculator(frame, energy=0.0, forces=np.zeros((2, 3)), stress=stress)
        frame.info.update(time_fs=2.0 * step, stress_std=np.full(6, 0.3 * units.GPa))
        ase.io.write(rd / "trajectory.extxyz", frame, format="extxyz", append=True)
    run_analyses(rd, ["npt_cell"])
    result = json.loads((rd / "analysis" / "npt_cell.json").read_text())
    np.testing.assert_allclose(result["frames"]["pressure_GPa"], pressures_GPa, atol=1e-9)
    np.testing.assert_allclose(result["frames"]["pressure_std_GPa"], np.sqrt(3) * 0.3 / 3, rtol=1e-9)
    assert result["volume_change_percent"] == pytest.approx(100 * (0.96**3 - 1))
    first, second = result["segments"]
    assert (first["target_pressure_GPa"], second["target_pressure_GPa"]) == (pytest.approx(1e-4), pytest.approx(2.0))
    assert (first["dft_calls"], second["dft_calls"]) == (1, 1)
    assert second["mean_pressure_GPa_second_half"] == pytest.approx(1.75)  # frames at 6 and 8 fs
