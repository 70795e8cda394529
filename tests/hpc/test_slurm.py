"""The slurm_l40s profile on a real (single-node) Slurm: DFT and chain tasks run as batch jobs.

Parsl's SlurmProvider submits one block per role with sbatch; the worker pool starts inside the
job on this host and connects back to the interchange over loopback. The GPU request is off
(``gpus_per_node=0``), so the same profile a GPU cluster uses runs here.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from otfparsl.workflow.site import open_site

pytestmark = pytest.mark.slurm
logger = logging.getLogger(__name__)

SITE = Path(__file__).resolve().parents[2] / "sites" / "slurm_l40s.py"
# Where this module is importable from, for the workers that unpickle its task functions.
IMPORT_ROOT = Path(__file__).resolve().parents[len(__name__.split(".")) - 1]
REPO_ROOT = Path(__file__).resolve().parents[2]


def _job_env() -> dict[str, str | None]:
    keys = ("SLURM_JOB_ID", "SLURM_STEP_ID", "OTFPARSL_MPI_COMMAND", "PARSL_WORKER_RANK")
    return {"hostname": socket.gethostname(), "pid": str(os.getpid())} | {k: os.environ.get(k) for k in keys}


def h2() -> object:
    from ase import Atoms

    return Atoms("H2", positions=[(0.0, 0.0, 0.0), (0.0, 0.0, 0.74)])


def label_task(workdir: str) -> tuple[object, dict, str]:
    """A DFT label (PySCF HF/STO-3G of H2) plus one MPI-launched step, inside the dft job."""
    import shlex

    from otfparsl.labelers import make_labeler

    labelled = make_labeler("pyscf", xc="hf", basis="sto-3g", verbose=0).label(h2(), Path(workdir))
    mpi = shlex.split(os.environ.get("OTFPARSL_MPI_COMMAND", ""))
    step = subprocess.run([*mpi, "printenv", "SLURM_STEP_ID"], capture_output=True, text=True, timeout=60)
    return labelled, _job_env(), step.stdout.strip() or step.stderr.strip()


def chain_update_task(job) -> dict:
    """The real chain update (otfparsl's `chains` task), plus where it ran."""
    from otfparsl.workflow.tasks import update_chain

    return update_chain(job) | _job_env()


def make_chain_job(directory: Path):
    """One tiny-MACE chain file and one EMT-labelled Cu cell, as a ChainJob."""
    import ase.io
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from otfparsl.bayes.sghmc import SGHMCConfig
    from otfparsl.models import load_adapter
    from otfparsl.models.base import ModelSpec
    from otfparsl.training import ChainJob, init_chain_files

    spec = ModelSpec(family="mace", source="tiny", dtype="float64", seed=0)
    config = SGHMCConfig(n_steps=20, batch_size=5, step_size=1e-3, noise_off_steps=4, noise_ramp_steps=2)
    [path] = init_chain_files(load_adapter(spec), directory / "chains", 1, 7, config, 0.5)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=3)
    atoms.calc = EMT()
    atoms.get_forces()
    ase.io.write(directory / "labels.extxyz", atoms, format="extxyz")
    return ChainJob(index=0, chain_path=str(path), labels_path=str(directory / "labels.extxyz"),
                    n_labels=1, model=spec, energy_offset_eV=-6.0, energy_sigma_eV=0.002)


@pytest.fixture
def slurm_site(slurm_cluster, tmp_path):
    """Open the slurm_l40s profile on the test cluster; scancel whatever is left afterwards."""
    options = {
        "partition": slurm_cluster.partition,
        "gpus_per_node": "0",
        "chain_workers": "1",
        "cores_per_dft": "1",
        "walltime": "00:10:00",
        "exclusive": "false",
        "address": "127.0.0.1",
        "worker_init": f"export PATH={Path(sys.executable).parent}:$PATH\n"
        f"export PYTHONPATH={IMPORT_ROOT}:{REPO_ROOT}:${{PYTHONPATH:-}}",
    }
    start = time.perf_counter()
    try:
        with open_site(SITE, tmp_path, options) as site:
            yield site, start
    finally:
        jobs = slurm_cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
        if jobs:
            slurm_cluster.run("scancel", *jobs, check=False)


def test_dft_and_chain_tasks_run_as_slurm_jobs(slurm_site, slurm_cluster, tmp_path):
    import dataclasses
    import shutil

    import torch

    from otfparsl.bayes.chain import load_sample

    site, start = slurm_site
    job = make_chain_job(tmp_path)
    pristine = tmp_path / "pristine.pt"
    shutil.copy(job.chain_path, pristine)

    label_future = site.submit("dft", label_task, str(tmp_path / "labels" / "0"))
    chain_future = site.submit("chains", chain_update_task, job)
    labelled, dft_env, step_id = label_future.result(timeout=240)
    chain = chain_future.result(timeout=240)
    elapsed = time.perf_counter() - start
    running = slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.split()
    logger.info("slurm ready %.2f s; both tasks done %.2f s after open_site", slurm_cluster.ready_s, elapsed)

    # Both ran inside batch jobs of this cluster, in worker processes (not this process).
    assert dft_env["SLURM_JOB_ID"] in running and chain["SLURM_JOB_ID"] in running
    assert dft_env["SLURM_JOB_ID"] != chain["SLURM_JOB_ID"]  # one block per role
    assert {dft_env["pid"], chain["pid"]}.isdisjoint({str(os.getpid())})
    # The DFT job can launch an MPI step with the profile's srun prefix.
    assert dft_env["OTFPARSL_MPI_COMMAND"] == "srun -n 1" and step_id.isdigit()

    # Physics: the label equals PySCF run here, and the forces on H2 are equal and opposite.
    from otfparsl.labelers import make_labeler

    local = make_labeler("pyscf", xc="hf", basis="sto-3g", verbose=0).label(h2(), tmp_path / "local")
    assert labelled.get_potential_energy() == pytest.approx(local.get_potential_energy(), abs=1e-8)
    forces = labelled.get_forces()
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-6)
    assert abs(forces[0, 2]) > 1e-3  # 0.74 Å is not exactly the HF/STO-3G minimum (0.712 Å)

    # The chain file was replaced by the updated chain, equal to the same update run here.
    assert chain["n_steps"] == 20 and chain["n_data"] == 1
    local_job = dataclasses.replace(job, chain_path=str(tmp_path / "here.pt"))
    shutil.copy(pristine, local_job.chain_path)
    chain_update_task(local_job)
    remote, local, before = (load_sample(p) for p in (job.chain_path, local_job.chain_path, pristine))
    for key, value in local.items():
        torch.testing.assert_close(remote[key], value, rtol=0, atol=1e-10)
    assert any(not torch.equal(remote[k], before[k]) for k in before)
