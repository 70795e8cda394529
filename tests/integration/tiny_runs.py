"""A tiny on-the-fly run for the report tests: tiny MACE fitted to EMT copper, EMT as 'DFT'.

Two Langevin segments (300 K, then 600 K, 20 steps each at 2 fs), 3 chains of 40 SGHMC steps,
K = 0.004 eV; with the seeds below the run labels MD steps 0, 10 and 11 (as
tests/integration/killable_run.py), so the report has two checked interventions.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import ase.io
import yaml
from ase.build import bulk
from label_emt import LabelEMT

K_EV = 0.004
#: Environment variable naming a file: :class:`HeldEMT` writes it when it starts holding.
HOLD_ENV = "OTFPARSL_TEST_HOLD_FILE"
HOLD_S = 8.0


class HeldEMT(LabelEMT):
    """EMT as the 'DFT' code; its second label (MD step 10) writes the file named by
    ``$OTFPARSL_TEST_HOLD_FILE`` and then takes ``HOLD_S`` seconds: a DFT call that a test can
    interrupt deterministically, whatever the machine's speed."""

    def before_label(self, workdir: Path) -> None:
        marker = os.environ.get(HOLD_ENV)
        if marker and workdir.name == "label_00001":
            Path(marker).write_text("holding\n")
            time.sleep(HOLD_S)


def write_run_yaml(folder: Path, model_path: str, name: str = "tiny", dft: str = "emt") -> Path:
    """Write ``folder/run.yaml`` and its structure (4-atom fcc Cu cell); return the YAML path.

    ``dft``: the ASE calculator of the labels, ``"emt"`` or ``"tiny_runs:HeldEMT"``."""
    folder.mkdir(parents=True, exist_ok=True)
    ase.io.write(folder / "cu.extxyz", bulk("Cu", "fcc", a=3.61, cubic=True), format="extxyz")
    settings = {
        "name": name, "structure": "cu.extxyz",
        "model": {"family": "mace", "source": model_path, "dtype": "float64", "chain_device": "cpu"},
        "bayes": {"n_chains": 3, "n_steps": 40, "noise_off_steps": 8, "noise_ramp_steps": 3, "step_size": 1e-4, "seed": 3},
        "calibration": {"energy_threshold_eV": K_EV},
        "heldout": {"labels": 0},  # HeldEMT holds the second decided label, label_00001
        "labeler": {"kind": "ase", "options": {"name": dft}},
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
