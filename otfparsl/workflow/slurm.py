"""The builder every Slurm site profile shares: options, providers and the Config.

A Slurm profile (``sites/slurm_*.py``) declares only what differs: its name, its GPU options
(:func:`slurm_options`), and how many chain workers a node gets
(:func:`slurm_config`). Roles: ``chains`` on GPU nodes (HTEX, one block = ``nodes`` node(s)),
``dft`` on CPU nodes (HTEX + SimpleLauncher, each label starting its own MPI run inside the
allocation), ``local`` as one thread.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.launchers import SimpleLauncher, SingleNodeLauncher, SrunLauncher
from parsl.providers import SlurmProvider

from otfparsl.workflow.site import interchange_launch_cmd, retry_lost_workers
from otfparsl.workflow.site_options import RETRIES, SiteOption

#: Options of every Slurm profile (accounts and partitions are options, never written in a file).
COMMON_OPTIONS: tuple[SiteOption, ...] = (
    SiteOption("account", "str", "", "Slurm account (--account); empty = cluster default"),
    SiteOption("partition", "str", "", "partition for both roles unless gpu_/cpu_partition is set"),
    SiteOption("gpu_partition", "str", "", "partition of the GPU nodes (chains)"),
    SiteOption("cpu_partition", "str", "", "partition of the CPU nodes (dft)"),
    SiteOption("qos", "str", "", "Slurm QOS (--qos)"),
    SiteOption("walltime", "walltime", "04:00:00", "walltime of each block, [D-]HH:MM:SS"),
    SiteOption("worker_init", "str", "", "shell lines before the workers start (module load, venv activate)"),
    SiteOption("nodes", "int", 1, "GPU nodes per chains block", minimum=1),
    SiteOption("chain_workers", "int", 8, "chain workers per node when gpus_per_node=0", minimum=1),
    SiteOption("dft_nodes", "int", 1, "CPU nodes per dft block", minimum=1),
    SiteOption("dft_workers", "int", 1, "DFT labels running at once per dft block", minimum=1),
    SiteOption("cores_per_dft", "int", 32, "MPI ranks of one DFT label", minimum=1),
    SiteOption("mpi_command", "str", "srun -n {cores}", "MPI launcher prefix; {cores} = cores_per_dft"),
    SiteOption("min_blocks", "int", 1, "blocks kept per role while idle (0 releases idle nodes)", minimum=0),
    SiteOption("max_blocks", "int", 1, "most chains blocks at once", minimum=1),
    SiteOption("dft_max_blocks", "int", 1, "most dft blocks at once", minimum=1),
    SiteOption("exclusive", "bool", True, "ask for whole nodes (--exclusive)"),
    SiteOption("address", "str", "", "address workers use to reach this process; empty = try all"),
    RETRIES,
)


def slurm_options(*own: SiteOption) -> tuple[SiteOption, ...]:
    """The options of a Slurm profile: the common ones plus the profile's own (GPU layout)."""
    return (*COMMON_OPTIONS, *own)


def slurm_config(
    run_dir: str | os.PathLike[str], opts: dict, chain_workers: int, chains_init: str = ""
) -> Config:
    """Build a Slurm site's Config from its resolved options.

    Parameters
    ----------
    run_dir
        The run directory (Parsl's ``runinfo/`` goes inside).
    opts
        The profile's resolved options (:func:`~otfparsl.workflow.site_options.resolve_options`).
    chain_workers
        Chain workers per GPU node, each pinned to a GPU through ``available_accelerators``
        (0 GPUs per node: ``opts["chain_workers"]`` CPU workers instead).
    chains_init
        Extra shell lines for the chain blocks (e.g. a check that nvidia-smi is there).
    """
    gpus = opts["gpus_per_node"]
    chains = HighThroughputExecutor(
        label="chains",
        available_accelerators=chain_workers if gpus else 0,
        max_workers_per_node=chain_workers if gpus else opts["chain_workers"],
        cores_per_worker=1e-3,  # the worker count is set above, not from the core count
        address=opts["address"] or None,
        interchange_launch_cmd=interchange_launch_cmd(),
        provider=slurm_provider(opts, "chains", gres=f"gpu:{gpus}" if gpus else None, chains_init=chains_init),
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


def slurm_provider(opts: dict, role: str, gres: str | None, chains_init: str = "") -> SlurmProvider:
    """Build the SlurmProvider of one role (``chains`` or ``dft``) from resolved site options.

    ``chains`` blocks run on the GPU partition (SrunLauncher across several nodes); ``dft``
    blocks run on the CPU partition with SimpleLauncher and export ``OTFPARSL_MPI_COMMAND``
    (e.g. ``srun -n 72``) and ``OTFPARSL_DFT_CORES`` for the DFT code's launch. ``chains_init``
    is appended to the chain blocks' worker_init.
    """

    if role == "chains":
        partition = opts["gpu_partition"] or opts["partition"]
        nodes, max_blocks = opts["nodes"], opts["max_blocks"]
        launcher = SrunLauncher() if nodes > 1 else SingleNodeLauncher()
        init = "\n".join(filter(None, [opts["worker_init"], chains_init]))
    else:
        partition = opts["cpu_partition"] or opts["partition"]
        nodes, max_blocks = opts["dft_nodes"], opts["dft_max_blocks"]
        launcher = SimpleLauncher()
        mpi = opts["mpi_command"].format(cores=opts["cores_per_dft"])
        init = "\n".join([
            opts["worker_init"],
            f"export OTFPARSL_DFT_CORES={opts['cores_per_dft']}",
            f"export OTFPARSL_MPI_COMMAND={shlex.quote(mpi)}",
        ])
    min_blocks = min(opts["min_blocks"], max_blocks)
    return SlurmProvider(
        partition=partition or None,
        account=opts["account"] or None,
        qos=opts["qos"] or None,
        nodes_per_block=nodes,
        gres=gres,
        init_blocks=min_blocks,
        min_blocks=min_blocks,
        max_blocks=max_blocks,
        walltime=opts["walltime"],
        worker_init=init,
        exclusive=opts["exclusive"],
        launcher=launcher,
        cmd_timeout=60,
    )
