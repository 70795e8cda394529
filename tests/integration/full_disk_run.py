"""A small on-the-fly run through the ``otfparsl`` CLI whose disk fills up at a chosen MD step.

Run as ``python full_disk_run.py WORK_DIR MODEL_PATH COMMAND [FULL_AT_STEP]``: COMMAND is
``run`` (``otfparsl run WORK_DIR/run.yaml --run-dir WORK_DIR/run``, which also resumes an
existing run) or ``resume`` (``otfparsl resume WORK_DIR/run``). With FULL_AT_STEP the process's
file-size limit (``RLIMIT_FSIZE``, SIGXFSZ ignored so that a write past it fails with EFBIG, as on
a full disk) is set, when walker 0 writes the trajectory frame of that step, to the trajectory's
size plus half a frame: that frame is cut by the kernel and every later write that would pass
the limit fails too. ``OTFPARSL_TEST_UMASK`` (octal) sets the process's umask first.

Chain updates run in a thread (as in killable_run.py) rather than in worker processes: the
sessions then compute bit-identically and start in seconds.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from pathlib import Path

import yaml
from ase.build import bulk

SETTINGS = {
    "name": "full_disk",
    "model": {"family": "mace", "dtype": "float64", "chain_device": "cpu"},
    "bayes": {"n_chains": 2, "n_steps": 20, "noise_off_steps": 4, "noise_ramp_steps": 2, "step_size": 1e-4, "seed": 3},
    "calibration": {"energy_threshold_eV": 0.004},
    "heldout": {"labels": 0},  # the checkpoint steps the test cuts at are those of the decided labels
    "labeler": {"kind": "ase", "options": {"name": "label_emt:LabelEMT"}},
    "md": {
        "segments": [
            {"ensemble": "langevin", "temperature_K": 300, "duration_fs": 24.0, "timestep_fs": 2.0},
            {"ensemble": "langevin", "temperature_K": 600, "duration_fs": 24.0, "timestep_fs": 2.0},
        ],
        "seed": 5,
        "trajectory_interval": 1,
        "checkpoint_interval": 5,
    },
}


def write_inputs(work: Path, model_path: str) -> Path:
    """Write the structure and the run YAML into ``work``; return the YAML."""
    import ase.io

    work.mkdir(parents=True, exist_ok=True)
    structure = work / "cu.extxyz"
    if not structure.is_file():
        ase.io.write(structure, bulk("Cu", "fcc", a=3.61, cubic=True), format="extxyz")
    settings = {**SETTINGS, "structure": str(structure), "model": {**SETTINGS["model"], "source": model_path}}
    run_yaml = work / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(settings, sort_keys=False))
    return run_yaml


def fill_disk_at(step: int) -> None:
    """Make the trajectory frame of walker 0's ``step`` the write that finds the disk full."""
    from otfparsl.workflow import walkers

    write_frame = walkers._write_frame

    def full_at_step(path, atoms, calc, info) -> None:
        if info.step == step and info.walker == 0:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            limit = path.stat().st_size + path.stat().st_size // (2 * (step + 1))  # half a frame more
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        write_frame(path, atoms, calc, info)

    walkers._write_frame = full_at_step


def chains_in_a_thread() -> None:
    """Let the CLI's local submitter run chain updates in one thread of this process.

    Torch gets one thread: the tensors are tiny, and two test sessions may share two cores.
    """
    import torch

    from otfparsl.workflow import submit

    def local_submitter(chain_workers=None, dft_workers=1):
        submitter = submit.ThreadSubmitter(chain_workers=1)
        torch.set_num_threads(1)
        return submitter

    submit.local_submitter = local_submitter


def main(work: str, model_path: str, command: str, full_at_step: str = "") -> None:
    if "OTFPARSL_TEST_UMASK" in os.environ:
        os.umask(int(os.environ["OTFPARSL_TEST_UMASK"], 8))
    work_dir = Path(work)
    run_yaml = write_inputs(work_dir, model_path)
    chains_in_a_thread()
    if full_at_step:
        fill_disk_at(int(full_at_step))
    from otfparsl.cli import app

    args = ["run", str(run_yaml), "--run-dir", str(work_dir / "run")] if command == "run" else ["resume", str(work_dir / "run")]
    app(args)


if __name__ == "__main__":
    main(*sys.argv[1:])
