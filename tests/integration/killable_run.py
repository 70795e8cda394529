"""A small on-the-fly run that SIGKILLs itself at a chosen point (for the resume tests).

Run as ``python killable_run.py RUN_DIR MODEL_PATH [KILL]`` where KILL is one of
``step:S`` (after MD step S), ``dft:label_NNNNN`` (in the middle of that DFT calculation) or
``update:G:K`` (while chain K computes update G; chains before K have finished it). Without
KILL the run goes to the end. An existing RUN_DIR is resumed (``otfparsl.run``'s default), or
started over when ``$OTFPARSL_TEST_RESTART`` is 1 (``restart_from_scratch``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from ase.build import bulk
from label_emt import LabelEMT

KILL_ENV = "OTFPARSL_TEST_KILL"


def die() -> None:
    """SIGKILL this process (no cleanup, no flush: what a node failure or scancel -9 does)."""
    os.kill(os.getpid(), signal.SIGKILL)


class KillingEMT(LabelEMT):
    """EMT as the 'DFT' code; kills the process halfway through the labelling it is told to."""

    def before_label(self, workdir: Path) -> None:
        if os.environ.get(KILL_ENV) == f"dft:{workdir.name}":
            (workdir / "partial_output.txt").write_text("SCF iteration 3 ...\n")
            die()


def update_chain_or_die(job) -> dict:
    """The real chain-update task, killed mid-way for the update/chain named in KILL."""
    from otfparsl.workflow.tasks import update_chain

    if os.environ.get(KILL_ENV) == f"update:{job.generation}:{job.index}":
        threading.Timer(0.2, die).start()
        update_chain(job)
        time.sleep(60)  # the timer fires during the update or right after it, never later
    return update_chain(job)


class Submitter:
    """ThreadSubmitter whose chain updates go through :func:`update_chain_or_die`."""

    def __init__(self) -> None:
        from otfparsl.workflow.submit import ThreadSubmitter

        self.inner = ThreadSubmitter(chain_workers=1)

    def submit(self, role, fn, *args):
        from otfparsl.workflow.tasks import update_chain

        return self.inner.submit(role, update_chain_or_die if fn is update_chain else fn, *args)


def settings(model_path: str):
    from otfparsl.settings import RunSettings

    return RunSettings.from_dict(
        {
            "name": "killable",
            "structure": "unused.xyz",
            "model": {"family": "mace", "source": model_path, "dtype": "float64", "chain_device": "cpu"},
            "bayes": {"n_chains": 3, "n_steps": 40, "noise_off_steps": 8, "noise_ramp_steps": 3, "step_size": 1e-4, "seed": 3},
            "calibration": {"energy_threshold_eV": 0.004},
            # the kill points name DFT calls: in-run held-out checks only where a test asks for them
            "heldout": {"labels": int(os.environ.get("OTFPARSL_TEST_HELDOUT", "0")), "max_fraction": 0.5},
            "labeler": {"kind": "ase", "options": {"name": "killable_run:KillingEMT"}},
            "md": {
                "segments": [
                    {"ensemble": "langevin", "temperature_K": 300, "duration_fs": 40.0, "timestep_fs": 2.0},
                    {"ensemble": "langevin", "temperature_K": 600, "duration_fs": 40.0, "timestep_fs": 2.0},
                ],
                "seed": 5,
                "trajectory_interval": 3,
                "checkpoint_interval": 7,
                "walkers": int(os.environ.get("OTFPARSL_TEST_WALKERS", "1")),
            },
        }
    )


def main(run_dir: str, model_path: str, kill: str = "") -> None:
    from otfparsl.workflow.driver import run

    if kill:
        os.environ[KILL_ENV] = kill
    on_step = None
    if kill.startswith("step:"):
        target = int(kill.split(":")[1])

        def on_step(info) -> None:
            if info.step == target and info.walker == 0:
                die()

    submitter = Submitter()
    try:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        restart = os.environ.get("OTFPARSL_TEST_RESTART") == "1"
        run(settings(model_path), submitter=submitter, run_dir=run_dir, on_step=on_step, structure=atoms,
            restart_from_scratch=restart)  # fmt: skip
    finally:
        submitter.inner.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
