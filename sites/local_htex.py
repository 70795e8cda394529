"""Site profile for one workstation: HighThroughputExecutor workers, one per visible GPU.

Roles
-----
chains
    HTEX on a LocalProvider with one worker per accelerator; each worker sees only its own GPU
    (``CUDA_VISIBLE_DEVICES`` is set per worker by Parsl). Accelerators come from the
    ``accelerators`` option, else ``CUDA_VISIBLE_DEVICES``, else ``torch.cuda.device_count()``;
    with no GPU the pool has ``chain_workers`` CPU workers instead.
dft
    HTEX with ``dft_workers`` CPU workers (a label may itself use OpenMP/MPI threads).
local
    One thread in the orchestrator's process.

Everything listens and connects on the loopback address, so nothing leaves the machine.
A task whose worker process dies (``WorkerLost``) is resubmitted up to ``retries`` times; the
pool checks for dead workers every ``heartbeat_period`` seconds and restarts them.
"""

from __future__ import annotations

import os
from pathlib import Path

from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.providers import LocalProvider

from otfparsl.workflow.site import (
    interchange_launch_cmd,
    local_worker_launch_cmd,
    retry_lost_workers,
)
from otfparsl.workflow.site_options import RETRIES, SiteOption, resolve_options

LOOPBACK = "127.0.0.1"

OPTIONS = (
    SiteOption(
        "accelerators",
        "str",
        "",
        "comma-separated GPU ids for chain workers; 'none' = CPU only; empty = detect",
    ),
    SiteOption("chain_workers", "int", 2, "CPU chain workers when no GPU is found", minimum=1),
    SiteOption("dft_workers", "int", 1, "DFT labelling workers", minimum=1),
    SiteOption(
        "worker_init", "str", "", "shell lines run before the workers start (e.g. module load ...)"
    ),
    SiteOption("heartbeat_period", "int", 30, "seconds between worker heartbeats", minimum=1),
    RETRIES,
)


def detect_accelerators(spec: str = "") -> list[str]:
    """Return the GPU ids chain workers should be pinned to (empty list: no GPU).

    Parameters
    ----------
    spec
        ``"0,1"`` for explicit ids, ``"none"`` for no GPU, ``""`` to detect from
        ``CUDA_VISIBLE_DEVICES`` or, when unset, ``torch.cuda.device_count()``.
    """
    if spec.strip().lower() == "none":
        return []
    if spec.strip():
        return [item.strip() for item in spec.split(",") if item.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        # Keep the ids as given: a worker's CUDA_VISIBLE_DEVICES replaces the parent's, so it
        # must name the same physical device (an index, or a GPU-... UUID).
        return [
            item.strip() for item in visible.split(",") if item.strip() and item.strip() != "-1"
        ]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def make_config(run_dir: str | os.PathLike[str], **options: object) -> Config:
    """Return a fresh Config: HTEX for chains and dft on this machine, a thread for local."""
    opts = resolve_options("local_htex", OPTIONS, options)
    accelerators = detect_accelerators(opts["accelerators"])
    common = dict(
        address=LOOPBACK,
        loopback_address=LOOPBACK,
        heartbeat_period=opts["heartbeat_period"],
        heartbeat_threshold=4 * opts["heartbeat_period"],
        cpu_affinity="none",
        interchange_launch_cmd=interchange_launch_cmd(),
        launch_cmd=local_worker_launch_cmd(),
    )
    chains = HighThroughputExecutor(
        label="chains",
        available_accelerators=accelerators,
        max_workers_per_node=len(accelerators) or opts["chain_workers"],
        cores_per_worker=1e-3,  # worker count is set explicitly, not from the core count
        provider=_provider(opts["worker_init"]),
        **common,
    )
    dft = HighThroughputExecutor(
        label="dft",
        max_workers_per_node=opts["dft_workers"],
        cores_per_worker=1e-3,
        provider=_provider(opts["worker_init"]),
        **common,
    )
    return Config(
        executors=[chains, dft, ThreadPoolExecutor(label="local", max_threads=1)],
        run_dir=str(Path(run_dir) / "runinfo"),
        retries=opts["retries"],
        retry_handler=retry_lost_workers,
        strategy="none",
        strategy_period=1,  # the first block starts on the first poll; 5 s default is slow here
    )


def _provider(worker_init: str) -> LocalProvider:
    return LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=worker_init)
