"""Submitters: how the on-the-fly loop hands work to a role (`dft`, `chains`, `local`).

The loop only calls ``submitter.submit(role, fn, *args) -> Future``. :class:`ThreadSubmitter`
uses plain thread pools (no Parsl); :class:`ProcessSubmitter` runs chain updates in worker
processes with one torch thread each (measured fastest on CPU, docs/performance.md); a loaded
site profile
(:class:`otfparsl.workflow.site.Site`, from ``open_site``) sends each call to the Parsl executor
labelled ``role``. Both return ``concurrent.futures.Future`` objects
(Parsl's AppFuture is one).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

log = logging.getLogger(__name__)


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


class ProcessSubmitter:
    """Chain updates in worker processes, DFT and bookkeeping in threads (one machine, no Parsl).

    Each `chains` worker is a spawned process with ``torch_threads`` intra-op threads; it keeps
    its loaded model between tasks (``models.cached_adapter``), so only its first update pays
    for the import and the model load. Measured on 2 cores (docs/performance.md), 2 processes x
    1 torch thread update chains faster than 2 threads x 1 torch thread in one process (CHGNet
    1.11x in CPU time, 1.25x in wall time; tiny MACE 1.06x CPU), presumably because threads
    share the GIL and the allocator, and than one chain on 2 torch threads. This process (the MD loop's ensemble predictions) gets
    ``cpu_count // chain_workers`` torch threads, as with :class:`ThreadSubmitter`: more
    threads than free cores make torch's spin-waiting kernels collapse (a tiny-MACE forward
    took 2.2 s instead of milliseconds with 2 threads on 2 busy cores).

    Parameters
    ----------
    chain_workers
        Worker processes of the `chains` role (chain updates running at once); default: the
        number of cores, at most 8.
    dft_workers
        Threads of the `dft` pool (DFT calls running at once).
    torch_threads
        Intra-op threads of each chain worker.

    Notes
    -----
    With one torch thread per chain the workers compute exactly what :class:`ThreadSubmitter`
    computes with one torch thread per chain (the same kernels in the same order): the chain
    files are bit-identical between the two. float32 chain workers flush denormals to zero
    (:func:`otfparsl.workflow.tasks.update_chain`), in both submitters. jemalloc, optional
    (1.1x measured in the issue's study): start the run as ``LD_PRELOAD=/usr/lib/x86_64-linux-
    gnu/libjemalloc.so.2 otfparsl run ...`` (Debian: ``apt install libjemalloc2``); the spawned
    workers inherit it.
    """

    def __init__(
        self,
        chain_workers: int | None = None,
        dft_workers: int = 1,
        torch_threads: int = 1,
    ) -> None:
        import multiprocessing

        import torch

        self._chain_workers = chain_workers or min(8, os.cpu_count() or 1)
        self._torch_threads = torch_threads
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // self._chain_workers))
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # submissions may come from several threads
        self._pools: dict[str, Any] = {
            "dft": ThreadPoolExecutor(dft_workers, thread_name_prefix="otf-dft"),
            "local": ThreadPoolExecutor(1, thread_name_prefix="otf-local"),
        }

    def _chain_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            self._chain_workers, mp_context=self._context,
            initializer=_init_chain_worker, initargs=(self._torch_threads, os.getpid()),
        )  # fmt: skip
        for _ in range(self._chain_workers):  # start every worker (imports) at once
            pool.submit(os.getpid)
        return pool

    def submit(self, role: str, fn: Callable[..., Any], /, *args: Any) -> Future:
        """Run ``fn(*args)`` on the pool of ``role`` (``fn`` and ``args`` picklable for `chains`).

        A chain worker that died (killed, out of memory) breaks its pool: the updates it held
        fail with ``BrokenProcessPool`` and the next submission starts a fresh pool.
        """
        if role != "chains":
            return self._pools[role].submit(fn, *args)
        with self._lock:
            if "chains" not in self._pools:  # a run that updates no chain (refused, an audit)
                self._pools["chains"] = self._chain_pool()  # starts no worker
            try:
                return self._pools["chains"].submit(fn, *args)
            except BrokenProcessPool:
                log.warning("a chain worker process died; starting a fresh pool of %d workers",
                            self._chain_workers)  # fmt: skip
                self._pools["chains"] = self._chain_pool()
                return self._pools["chains"].submit(fn, *args)

    def close(self, interrupted: bool = False) -> None:
        """Wait for running work and stop the pools and worker processes.

        ``interrupted`` (Ctrl-C, an error): drop the queued chain updates and terminate the
        workers at once instead of waiting for their running updates (minutes each): the run's
        checkpoint never counts an update that did not finish, so a resume redoes it.
        """
        chains = self._pools.pop("chains", None)
        if chains is not None and interrupted:
            # ProcessPoolExecutor has no public terminate before Python 3.14 (terminate_workers)
            for process in list((getattr(chains, "_processes", None) or {}).values()):
                process.terminate()
        if chains is not None:  # after a terminate, this fails the updates it held at once
            chains.shutdown(wait=True, cancel_futures=interrupted)
        for pool in self._pools.values():  # a running DFT call ends with its program
            pool.shutdown(wait=True, cancel_futures=interrupted)

    def __enter__(self) -> ProcessSubmitter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(interrupted=exc_type is not None)


def local_submitter(chain_workers: int | None = None, dft_workers: int = 1) -> ProcessSubmitter:
    """Return the submitter of a run on this machine without a site: the measured fastest.

    Chain updates in ``chain_workers`` processes with one torch thread each (default: the
    number of cores, at most 8); see docs/performance.md for the measurements.
    """
    return ProcessSubmitter(chain_workers=chain_workers, dft_workers=dft_workers, torch_threads=1)


def _init_chain_worker(torch_threads: int, parent_pid: int) -> None:
    """Set up a chain worker process: torch threads, a log handler, signals, a parent watch.

    Ctrl-C in a terminal reaches the whole process group: the workers ignore it and the run
    (the parent) decides, stopping them through :meth:`ProcessSubmitter.close`. A worker whose
    parent died without stopping it (kill -9, out of memory) exits within a second instead of
    lingering, as the spawn workers of ``concurrent.futures`` otherwise do.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # first: the imports below take seconds
    import torch

    import otfparsl.training  # noqa: F401 - the heavy imports, once per worker

    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    os.environ["OTFPARSL_TORCH_THREADS"] = str(torch_threads)
    torch.set_num_threads(torch_threads)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="chain worker %(process)d: %(message)s")


def _exit_with_parent(parent_pid: int, period_s: float = 0.5) -> None:
    while os.getppid() == parent_pid:
        time.sleep(period_s)
    os._exit(1)


def gather(futures: Sequence[Future]) -> Future:
    """Return a Future of the list of results, done when every future is done.

    The first exception of any future becomes the exception of the combined future; a cancelled
    future (queued work dropped by an interrupted close) counts as a ``CancelledError``.
    """
    combined: Future = Future()
    remaining = [len(futures)]
    lock = threading.Lock()

    def _done(_: Future) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            errors = [CancelledError() if f.cancelled() else f.exception() for f in futures]
            errors = [e for e in errors if e is not None]
            if errors:
                combined.set_exception(errors[0])
            else:
                combined.set_result([f.result() for f in futures])

    if not futures:
        combined.set_result([])
    for future in futures:
        future.add_done_callback(_done)
    return combined
