"""The two kinds of remote work, as thin plain functions over the science packages.

They take and return picklable values (Atoms, paths, frozen dataclasses, numbers) so that any
executor (a thread pool, a Parsl HighThroughputExecutor on a Slurm node) can run them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ase import Atoms

from otfparsl.training import ChainJob, update_chain_file


def label_structure(atoms: Atoms, kind: str, options: dict[str, Any], workdir: str) -> Atoms:
    """Label one structure with a DFT code in its own working directory.

    Returns the labelled copy (SinglePointCalculator with the raw DFT energy, forces, stress);
    ``info["label_seconds"]`` holds the wall time of the calculation. The result is also kept in
    ``workdir/label.json`` so that a resumed run never pays for it twice.
    """
    from otfparsl.labelers import make_labeler
    from otfparsl.run.label_cache import label_key, save_label

    start = time.perf_counter()
    labelled = make_labeler(kind, **options).label(atoms, Path(workdir))
    labelled.info.setdefault("label_seconds", time.perf_counter() - start)
    save_label(workdir, label_key(atoms, kind, options), labelled)
    return labelled


def update_chain(job: ChainJob) -> dict:
    """Run one SGHMC update of one chain file (see :func:`otfparsl.training.update_chain_file`).

    In a Parsl worker process, torch gets ``cpu_count // PARSL_WORKER_COUNT`` intra-op threads
    (or ``OTFPARSL_TORCH_THREADS``), so that the workers of one node do not oversubscribe it.
    A float32 chain is computed with denormals flushed to zero (``torch.set_flush_denormal``,
    1.15x on CPU; the flag is per thread, so it covers a chain that runs on one torch thread,
    as the local submitters and one-thread Parsl workers do), then the flag is cleared again.
    """
    import os
    import socket

    import torch

    _share_cores_among_workers()
    flush = job.model.dtype == "float32"
    torch.set_flush_denormal(flush)
    try:
        result = update_chain_file(job)
    finally:
        if flush:
            torch.set_flush_denormal(False)
    return {**result, "host": socket.gethostname(), "pid": os.getpid()}


def _share_cores_among_workers() -> None:
    import os

    import torch

    explicit = os.environ.get("OTFPARSL_TORCH_THREADS")
    workers = os.environ.get("PARSL_WORKER_COUNT")
    if explicit:
        torch.set_num_threads(int(explicit))
    elif workers:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


def noop(role: str) -> dict:
    """Report where a task of ``role`` runs (used by ``otfparsl sites check``)."""
    import os
    import socket

    return {"role": role, "host": socket.gethostname(), "pid": os.getpid()}
