"""A tiny on-the-fly run for the report tests: tiny MACE fitted to EMT copper, EMT as 'DFT'.

Two Langevin segments (300 K, then 600 K, 20 steps each at 2 fs), 3 chains of 40 SGHMC steps,
K = 0.004 eV; with the seeds below the run labels MD steps 0, 10 and 11 (as
tests/integration/killable_run.py), so the report has two checked interventions.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import yaml
from ase.build import bulk

K_EV = 0.004


def write_run_yaml(folder: Path, model_path: str, name: str = "tiny") -> Path:
    """Write ``folder/run.yaml`` and its structure (4-atom fcc Cu cell); return the YAML path."""
    folder.mkdir(parents=True, exist_ok=True)
    ase.io.write(folder / "cu.extxyz", bulk("Cu", "fcc", a=3.61, cubic=True), format="extxyz")
    settings = {
        "name": name, "structure": "cu.extxyz",
        "model": {"family": "mace", "source": model_path, "dtype": "float64", "chain_device": "cpu"},
        "bayes": {"n_chains": 3, "n_steps": 40, "noise_off_steps": 8, "noise_ramp_steps": 3, "step_size": 1e-4, "seed": 3},
        "calibration": {"energy_threshold_eV": K_EV},
        "labeler": {"kind": "ase", "options": {"name": "emt"}},
        "md": {
            "segments": [
                {"ensemble": "langevin", "temperature_K": 300, "duration_fs": 40.0, "timestep_fs": 2.0},
                {"ensemble": "langevin", "temperature_K": 600, "duration_fs": 40.0, "timestep_fs": 2.0},
            ],
            "seed": 5, "trajectory_interval": 3, "checkpoint_interval": 7,
        },
    }  # fmt: skip
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path
