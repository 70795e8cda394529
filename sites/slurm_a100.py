"""Site profile for a Slurm cluster with GPU nodes of 2x NVIDIA A100 and CPU nodes for DFT.

How eight chains share two GPUs
-------------------------------
The method updates 8 SGHMC chains per intervention. On a 2x A100 node the ``chains`` pool has
``gpus_per_node * chains_per_gpu`` = 2 x 4 = 8 workers, so all 8 updates of an intervention run
at once, four per A100 (the paper's setting: about 20 min per update of 8 chains on 2 A100 for
162 atoms). A fine-tuning step on a few hundred atoms leaves most of an A100 idle, so four
concurrent processes per GPU keep it busy; with one worker per GPU (``chains_per_gpu=1``) the
8 updates would run in four waves and take about four times longer per intervention. Memory:
four MACE-MP-0 training processes fit easily in 40 or 80 GB. For one GPU per chain use
``nodes=4 chains_per_gpu=1`` (4 nodes x 2 GPUs, ``SrunLauncher``).

Pinning: Parsl names the accelerators "0".."7" and each worker maps its id to a physical GPU
as ``id // (workers / GPUs seen by nvidia-smi -L)``: workers 0-3 get ``CUDA_VISIBLE_DEVICES=0``,
4-7 get ``1``. This needs ``nvidia-smi`` on the node's PATH and Slurm to expose exactly the
allocated GPUs (``--gres``, ``--exclusive``); the block fails at start, with a message in its
stderr, when nvidia-smi is missing. Check with ``otfparsl sites check``.

Roles ``dft`` and ``local`` are as in ``slurm_l40s.py``: HTEX on the CPU partition with
``SimpleLauncher``, each label running ``srun -n <cores_per_dft> <code>`` inside the allocation
(prefix exported as ``OTFPARSL_MPI_COMMAND``), and one local thread. Accounts and partitions
are options, never written here.
Lost workers and nodes are retried as in ``slurm_l40s.py`` (option ``retries``).
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

# Parsl shares GPUs between workers only when nvidia-smi can count them; fail loudly otherwise.
NVIDIA_SMI_CHECK = (
    "command -v nvidia-smi >/dev/null || { echo 'slurm_a100: nvidia-smi not on PATH: Parsl "
    "cannot share GPUs between chain workers; add it in worker_init or set chains_per_gpu=1' >&2; "
    "exit 1; }"
)

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
    SiteOption("gpus_per_node", "int", 2, "GPUs per node; 0 = no GPU request", minimum=0),
    SiteOption("chains_per_gpu", "int", 4, "chain workers sharing one GPU", minimum=1),
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
    """Return a fresh Config: 8 chains on 2x A100 nodes, dft on CPU nodes, local as a thread."""
    opts = resolve_options("slurm_a100", OPTIONS, options)
    gpus = opts["gpus_per_node"]
    workers = gpus * opts["chains_per_gpu"]
    chains = HighThroughputExecutor(
        label="chains",
        available_accelerators=workers,
        max_workers_per_node=workers or opts["chain_workers"],
        cores_per_worker=1e-3,  # the worker count is set above, not from the core count
        address=opts["address"] or None,
        interchange_launch_cmd=interchange_launch_cmd(),
        provider=slurm_provider(
            opts,
            "chains",
            gres=f"gpu:{gpus}" if gpus else None,
            chains_init=NVIDIA_SMI_CHECK if gpus and opts["chains_per_gpu"] > 1 else "",
        ),
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
