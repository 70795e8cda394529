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
from pathlib import Path

from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor

from otfparsl.workflow.site import (
    RETRIES,
    SiteOption,
    interchange_launch_cmd,
    resolve_options,
    retry_lost_workers,
)
from otfparsl.workflow.slurm import slurm_provider

OPTIONS = (
    SiteOption("account", "str", "", "Slurm account (--account); empty = cluster default"),
    SiteOption("partition", "str", "", "partition for both roles unless gpu_/cpu_partition is set"),
    SiteOption("gpu_partition", "str", "", "partition of the GPU nodes (chains)"),
    SiteOption("cpu_partition", "str", "", "partition of the CPU nodes (dft)"),
    SiteOption("qos", "str", "", "Slurm QOS (--qos)"),
    SiteOption("walltime", "walltime", "04:00:00", "walltime of each block, [D-]HH:MM:SS"),
    SiteOption(
        "worker_init",
        "str",
        "",
        "shell lines before the workers start (module load, venv activate)",
    ),
    SiteOption("nodes", "int", 1, "GPU nodes per chains block", minimum=1),
    SiteOption(
        "gpus_per_node",
        "int",
        8,
        "GPUs per node and chain workers per node; 0 = no GPU request",
        minimum=0,
    ),
    SiteOption("chain_workers", "int", 8, "chain workers per node when gpus_per_node=0", minimum=1),
    SiteOption("dft_nodes", "int", 1, "CPU nodes per dft block", minimum=1),
    SiteOption("dft_workers", "int", 1, "DFT labels running at once per dft block", minimum=1),
    SiteOption("cores_per_dft", "int", 32, "MPI ranks of one DFT label", minimum=1),
    SiteOption(
        "mpi_command", "str", "srun -n {cores}", "MPI launcher prefix; {cores} = cores_per_dft"
    ),
    SiteOption(
        "min_blocks", "int", 1, "blocks kept per role while idle (0 releases idle nodes)", minimum=0
    ),
    SiteOption("max_blocks", "int", 1, "most chains blocks at once", minimum=1),
    SiteOption("dft_max_blocks", "int", 1, "most dft blocks at once", minimum=1),
    SiteOption("exclusive", "bool", True, "ask for whole nodes (--exclusive)"),
    SiteOption("address", "str", "", "address workers use to reach this process; empty = try all"),
    RETRIES,
)


def make_config(run_dir: str | os.PathLike[str], **options: object) -> Config:
    """Return a fresh Config: chains on L40S nodes, dft on CPU nodes, local as a thread."""
    opts = resolve_options("slurm_l40s", OPTIONS, options)
    gpus = opts["gpus_per_node"]
    chains = HighThroughputExecutor(
        label="chains",
        available_accelerators=gpus,
        max_workers_per_node=gpus or opts["chain_workers"],
        cores_per_worker=1e-3,  # the worker count is set above, not from the core count
        address=opts["address"] or None,
        interchange_launch_cmd=interchange_launch_cmd(),
        provider=slurm_provider(opts, "chains", gres=f"gpu:{gpus}" if gpus else None),
    )
    dft = HighThroughputExecutor(
        label="dft",
        max_workers_per_node=opts["dft_workers"],
        cores_per_worker=1e-3,
        address=opts["address"] or None,
        interchange_launch_cmd=interchange_launch_cmd(),
        provider=slurm_provider(opts, "dft", gres=None),
    )
    return Config(
        executors=[chains, dft, ThreadPoolExecutor(label="local", max_threads=1)],
        run_dir=str(Path(run_dir) / "runinfo"),
        retries=opts["retries"],
        retry_handler=retry_lost_workers,
        strategy="simple",
        max_idletime=600.0,
    )
