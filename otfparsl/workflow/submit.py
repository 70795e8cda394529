"""Submitters: how the on-the-fly loop hands work to a role (`dft`, `chains`, `local`).

The loop only calls ``submitter.submit(role, fn, *args) -> Future``. :class:`ThreadSubmitter`
uses plain thread pools (no Parsl); :class:`ParslSubmitter` sends each call to the Parsl executor
labelled ``role`` of the loaded site profile. Both return ``concurrent.futures.Future`` objects
(Parsl's AppFuture is one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

ROLES = ("chains", "dft", "local")


class Submitter(Protocol):
    """Something that runs ``fn(*args)`` on the executor of a role and returns a Future."""

    def submit(self, role: str, fn: Callable[..., Any], /, *args: Any) -> Future: ...


class ThreadSubmitter:
    """One thread pool per role, in this process (laptop, tests; no Parsl).

    Parameters
    ----------
    chain_workers
        Threads of the `chains` pool (chain updates running at once).
    dft_workers
        Threads of the `dft` pool (DFT calls running at once).
    """

    def __init__(self, chain_workers: int = 2, dft_workers: int = 1) -> None:
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


class ParslSubmitter:
    """Submit to the executors of the currently loaded Parsl configuration, by role label."""

    def __init__(self) -> None:
        from parsl import python_app

        self._python_app = python_app
        self._apps: dict[tuple[str, Callable], Any] = {}
        self._lock = threading.Lock()

    def submit(self, role: str, fn: Callable[..., Any], /, *args: Any) -> Future:
        """Run ``fn(*args)`` as a Parsl python_app on the executor labelled ``role``."""
        with self._lock:
            app = self._apps.get((role, fn))
            if app is None:
                app = self._python_app(fn, executors=[role])
                self._apps[(role, fn)] = app
        return app(*args)


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
