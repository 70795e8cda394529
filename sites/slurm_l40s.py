"""Site profile for a Slurm cluster with GPU nodes of 8x NVIDIA L40S and CPU nodes for DFT.

Roles
-----
chains
    HighThroughputExecutor on a SlurmProvider: one block = ``nodes`` GPU node(s) asking for
    ``--gres=gpu:<gpus_per_node>``; ``available_accelerators=gpus_per_node`` gives one worker
    per GPU, each pinned by ``CUDA_VISIBLE_DEVICES``, so the 8 chain updates of an intervention
    run at once, one per L40S. ``gpus_per_node=0`` drops the GPU request (GPU-less test nodes);
    the pool then has ``chain_workers`` CPU workers.
dft
    HighThroughputExecutor on a SlurmProvider for the CPU partition with ``SimpleLauncher``:
    the worker pool runs once on the batch host and each DFT label starts its own MPI run
    inside the allocation, ``srun -n <cores_per_dft> <code>``. The command prefix is exported
    to the tasks as ``OTFPARSL_MPI_COMMAND`` (and the core count as ``OTFPARSL_DFT_CORES``);
    the labeler's command line uses it (VASP, Quantum ESPRESSO, ... through their ASE
    calculator command). PySCF runs in-process and uses OpenMP threads instead.
    Why not MPIExecutor: it needs a per-task resource specification and hands the launcher to
    bash apps, while our labels are ASE calculators whose command strings already take a
    launcher prefix; HTEX + SimpleLauncher keeps the task a plain python function.
local
    One thread in the orchestrator's process.

Accounts and partitions are options (``--site-option account=...`` or
``OTFPARSL_SITE_ACCOUNT``), never written here. A task whose worker or node was lost
(``WorkerLost``, ``ManagerLost``: killed worker, node failure, wall-time kill) is resubmitted up
to ``retries`` times; errors raised by the task itself are not (see sites/README.md).
"""

from __future__ import annotations

import os

from parsl.config import Config

from otfparsl.workflow.site_options import SiteOption, resolve_options
from otfparsl.workflow.slurm import slurm_config, slurm_options

OPTIONS = slurm_options(
    SiteOption(
        "gpus_per_node", "int", 8, "GPUs per node and chain workers per node; 0 = no GPU request", minimum=0
    ),
)


def make_config(run_dir: str | os.PathLike[str], **options: object) -> Config:
    """Return a fresh Config: chains on L40S nodes, dft on CPU nodes, local as a thread."""
    opts = resolve_options("slurm_l40s", OPTIONS, options)
    return slurm_config(run_dir, opts, chain_workers=opts["gpus_per_node"])
