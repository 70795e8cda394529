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

from parsl.config import Config

from otfparsl.workflow.site_options import SiteOption, resolve_options
from otfparsl.workflow.slurm import slurm_config, slurm_options

# Parsl shares GPUs between workers only when nvidia-smi can count them; fail loudly otherwise.
NVIDIA_SMI_CHECK = (
    "command -v nvidia-smi >/dev/null || { echo 'slurm_a100: nvidia-smi not on PATH: Parsl "
    "cannot share GPUs between chain workers; add it in worker_init or set chains_per_gpu=1' >&2; "
    "exit 1; }"
)

OPTIONS = slurm_options(
    SiteOption("gpus_per_node", "int", 2, "GPUs per node; 0 = no GPU request", minimum=0),
    SiteOption("chains_per_gpu", "int", 4, "chain workers sharing one GPU", minimum=1),
)


def make_config(run_dir: str | os.PathLike[str], **options: object) -> Config:
    """Return a fresh Config: 8 chains on 2x A100 nodes, dft on CPU nodes, local as a thread."""
    opts = resolve_options("slurm_a100", OPTIONS, options)
    workers = opts["gpus_per_node"] * opts["chains_per_gpu"]
    shared = opts["gpus_per_node"] and opts["chains_per_gpu"] > 1
    return slurm_config(run_dir, opts, chain_workers=workers, chains_init=NVIDIA_SMI_CHECK if shared else "")
