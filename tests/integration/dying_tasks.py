"""A chain-update task whose worker process is SIGKILLed in the middle of its first attempt.

HTEX workers unpickle task functions by module name, so this module must be importable there:
the test puts this folder on the workers' ``PYTHONPATH`` through the site's ``worker_init``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path

FIRST_ATTEMPT = "first_attempt.json"
KILLED = "killed.json"


def update_chain_dying_once(job, marker_dir: str, delay_s: float) -> dict:
    """Run ``otfparsl.workflow.tasks.update_chain(job)``; the first attempt's worker is killed.

    On the first attempt (no ``first_attempt.json`` in ``marker_dir`` yet) the foundation model
    is loaded first, so that the kill lands in the SGHMC loop and not in imports, then a timer
    SIGKILLs this process ``delay_s`` seconds into the update. Just before the kill the timer
    writes ``killed.json`` with the pid and the stack of the thread running the update.
    Later attempts run the update unchanged.
    """
    from otfparsl.models import cached_adapter
    from otfparsl.training import resolve_device
    from otfparsl.workflow.tasks import update_chain

    markers = Path(marker_dir)
    first = markers / FIRST_ATTEMPT
    if first.exists():
        return update_chain(job)
    cached_adapter(replace(job.model, device=resolve_device(job.model.device)))
    _write_json(first, {"pid": os.getpid(), "armed_at": time.time()})
    timer = threading.Timer(delay_s, _kill_self, (threading.get_ident(), markers / KILLED))
    timer.daemon = True
    timer.start()
    return update_chain(job)


def _kill_self(thread_id: int, record: Path) -> None:
    """Write where thread ``thread_id`` is, then SIGKILL this process (no cleanup runs)."""
    frame = sys._current_frames().get(thread_id)
    stack = [(f.filename, f.name) for f in traceback.extract_stack(frame)] if frame else []
    _write_json(record, {"pid": os.getpid(), "killed_at": time.time(), "stack": stack})
    os.kill(os.getpid(), signal.SIGKILL)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())


def fail_first_attempts(marker_dir: str, failures: int, lost_worker: bool) -> int:
    """Fail the first ``failures`` attempts, then return the number of attempts made.

    A failing attempt raises Parsl's ``WorkerLost`` (what HTEX reports for a dead worker) when
    ``lost_worker`` is true, else a ``ValueError`` (an error of the task itself).
    """
    from parsl.executors.high_throughput.errors import WorkerLost

    attempts = Path(marker_dir) / "attempts"
    with open(attempts, "a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    n_attempts = len(attempts.read_text(encoding="utf-8").split())
    if n_attempts <= failures:
        if lost_worker:
            raise WorkerLost(0, "test-host")
        raise ValueError(f"attempt {n_attempts} failed on purpose")
    return n_attempts
