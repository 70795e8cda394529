"""Submitters: how the on-the-fly loop hands work to a role (`dft`, `chains`, `local`).

The loop only calls ``submitter.submit(role, fn, *args) -> Future``. :class:`ThreadSubmitter`
uses plain thread pools (no Parsl); a loaded site profile
(:class:`otfparsl.workflow.site.Site`, from ``open_site``) sends each call to the Parsl executor
labelled ``role``. Both return ``concurrent.futures.Future`` objects
(Parsl's AppFuture is one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol


class Submitter(Protocol):
    """Something that runs ``fn(*args)`` on the executor of a role and returns a Future."""

    def submit(self, role: str, fn: Callable[..., Any], /, *args: Any) -> Future: ...


class ThreadSubmitter:
    """One thread pool per role, in this process (laptop, tests; no Parsl).

    Parameters
    ----------
    chain_workers
        Threads of the `chains` pool (chain updates running at once). Sets torch's intra-op
        threads of this process to ``cpu_count // chain_workers``.
    dft_workers
        Threads of the `dft` pool (DFT calls running at once).
    """

    def __init__(self, chain_workers: int = 2, dft_workers: int = 1) -> None:
        import os

        import torch

        # torch's intra-op pool is shared by every thread of this process: give each concurrent
        # chain update its share of the cores instead of oversubscribing them (spin-waits).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // chain_workers))
        self._pools = {
            "chains": ThreadPoolExecutor(chain_workers, thread_name_prefix="otf-chains"),
            "dft": ThreadPoolExecutor(dft_workers, thread_name_prefix="otf-dft"),
            "local": ThreadPoolExecutor(1, thread_name_prefix="otf-local"),
        }

    def submit(self, role: str, fn: Callable[..., Any], /, *args: Any) -> Future:
        """Run ``fn(*args)`` on the pool of ``role``."""
        return self._pools[role].submit(fn, *args)

    def close(self) -> None:
        """Wait for running work and stop the pools."""
        for pool in self._pools.values():
            pool.shutdown(wait=True)

    def __enter__(self) -> ThreadSubmitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gather(futures: Sequence[Future]) -> Future:
    """Return a Future of the list of results, done when every future is done.

    The first exception of any future becomes the exception of the combined future.
    """
    combined: Future = Future()
    remaining = [len(futures)]
    lock = threading.Lock()

    def _done(_: Future) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                combined.set_exception(errors[0])
            else:
                combined.set_result([f.result() for f in futures])

    if not futures:
        combined.set_result([])
    for future in futures:
        future.add_done_callback(_done)
    return combined
