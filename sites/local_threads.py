"""Site profile for a laptop or CI: three thread pools in the orchestrator's process.

Roles: ``chains`` (``chain_threads`` threads, default 2), ``dft`` (1 thread), ``local``
(1 thread). Nothing is submitted anywhere; the default site of ``otfparsl run``.
``retries`` exists as in every profile, but threads are never lost, so it has no effect here.
"""

from __future__ import annotations

import os
from pathlib import Path

from parsl.config import Config
from parsl.executors import ThreadPoolExecutor

from otfparsl.workflow.site import retry_lost_workers
from otfparsl.workflow.site_options import RETRIES, SiteOption, resolve_options

OPTIONS = (
    SiteOption("chain_threads", "int", 2, "threads running chain updates at once", minimum=1),
    SiteOption("dft_threads", "int", 1, "threads running DFT labels at once", minimum=1),
    RETRIES,
)


def make_config(run_dir: str | os.PathLike[str], **options: object) -> Config:
    """Return a fresh Config with thread pools for the roles chains, dft and local."""
    opts = resolve_options("local_threads", OPTIONS, options)
    return Config(
        executors=[
            ThreadPoolExecutor(label="chains", max_threads=opts["chain_threads"]),
            ThreadPoolExecutor(label="dft", max_threads=opts["dft_threads"]),
            ThreadPoolExecutor(label="local", max_threads=1),
        ],
        run_dir=str(Path(run_dir) / "runinfo"),
        retries=opts["retries"],
        retry_handler=retry_lost_workers,
        strategy="none",
    )
