"""Slurm providers shared by the Slurm site profiles (one role per block of nodes)."""

from __future__ import annotations

import shlex

from parsl.launchers import SimpleLauncher, SingleNodeLauncher, SrunLauncher
from parsl.providers import SlurmProvider


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
