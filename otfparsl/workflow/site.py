"""Load a Parsl site profile, check it, and start/stop Parsl around a run.

A site profile is a Python file (``sites/*.py``) that defines
``make_config(run_dir, **options) -> parsl.config.Config`` and returns a fresh configuration
with exactly the executor labels of :func:`roles`. Options are strings from the command line
(``--site-option key=value``) or environment variables ``OTFPARSL_SITE_<KEY>``; a profile
declares them as :class:`~otfparsl.workflow.site_options.SiteOption` values and converts them with
:func:`~otfparsl.workflow.site_options.resolve_options` (Parsl-free, in ``site_options``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import parsl
from parsl.app.app import python_app
from parsl.config import Config
from parsl.dataflow.dflow import DataFlowKernel
from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost
from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

from otfparsl.errors import SiteError

logger = logging.getLogger(__name__)

ROLES: tuple[str, ...] = ("chains", "dft", "local")


def roles() -> tuple[str, ...]:
    """Return the executor labels every site profile defines: chains, dft, local."""
    return ROLES


#: Failures of the machinery rather than of the task: the worker process died (WorkerLost, e.g.
#: SIGKILL by the OOM killer) or its whole pool stopped answering (ManagerLost: node failure,
#: batch job killed at its wall time).
LOST_WORKER_ERRORS: tuple[type[BaseException], ...] = (WorkerLost, ManagerLost)


def retry_lost_workers(exception: BaseException, task_record: Mapping[str, Any]) -> float:
    """Parsl ``retry_handler``: retry tasks whose worker was lost, never tasks that raised.

    A lost worker costs 1 of the ``Config.retries`` budget, so such a task is resubmitted up to
    ``retries`` times. Any other exception (a DFT code that failed, a bug, a diverged chain) is
    the task's own result: it costs more than any budget, so it reaches the caller at once (the
    run's DFT retry policy in the run YAML handles failed labels, separately).

    Parameters
    ----------
    exception
        What the task's attempt raised (Parsl unwraps remote exceptions).
    task_record
        Parsl's record of the task (``func_name``, ``fail_count``, ...).

    Returns
    -------
    float
        1.0 for :data:`LOST_WORKER_ERRORS`, ``inf`` otherwise.
    """
    if isinstance(exception, LOST_WORKER_ERRORS):
        logger.warning(
            "task %s (%s) lost its worker on attempt %d: %s; resubmitting if retries are left",
            task_record.get("id"),
            task_record.get("func_name"),
            task_record.get("fail_count", 0),
            exception,
        )
        return 1.0
    return float("inf")


def interchange_launch_cmd() -> list[str]:
    """Return the HTEX interchange command run with this interpreter (no PATH lookup)."""
    return [sys.executable, "-m", "parsl.executors.high_throughput.interchange"]


def local_worker_launch_cmd() -> str:
    """Return the HTEX worker-pool command for pools on this machine, run with this interpreter.

    Parsl's default starts ``process_worker_pool.py`` from PATH, which needs an activated
    environment; on a cluster ``worker_init`` activates it, on this machine we know the
    interpreter already.
    """
    script, _, rest = DEFAULT_LAUNCH_CMD.partition(" ")
    if script != "process_worker_pool.py":
        raise SiteError(f"unexpected Parsl HTEX launch command {DEFAULT_LAUNCH_CMD!r}; check the parsl version")
    module = "parsl.executors.high_throughput.process_worker_pool"
    return f"{shlex.quote(sys.executable)} -m {module} {rest}"


# ----------------------------------------------------------------------------- loading
def load_site(path: str | os.PathLike[str]) -> ModuleType:
    """Import a site profile file and check that it defines ``make_config``.

    Raises
    ------
    SiteError
        When the file is missing, fails to import, or has no callable ``make_config``.
    """
    site_path = Path(path)
    if not site_path.is_file():
        nearby = sorted(p.name for p in site_path.parent.glob("*.py")) if site_path.parent.is_dir() else []
        hint = f" Profiles in {site_path.parent}: {', '.join(nearby)}" if nearby else ""
        raise SiteError(f"site profile {str(site_path)!r} does not exist.{hint}")
    module_name = f"otfparsl_site_{site_path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, site_path)
    if spec is None or spec.loader is None:
        raise SiteError(f"site profile {str(site_path)!r} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise SiteError(f"site profile {str(site_path)!r} failed to import: {exc!r}") from exc
    if not callable(getattr(module, "make_config", None)):
        raise SiteError(
            f"site profile {str(site_path)!r} defines no function make_config(run_dir, **options) "
            "returning a parsl Config; see sites/README.md"
        )
    return module


def build_config(
    path: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    options: Mapping[str, object] | None = None,
) -> Config:
    """Load a site profile and build a fresh Config with exactly the standard roles.

    Raises
    ------
    SiteError
        When the profile cannot be loaded, ``make_config`` fails or returns something else than
        a Config, or the executor labels differ from :func:`roles`.
    """
    module = load_site(path)
    try:
        config = module.make_config(run_dir, **dict(options or {}))
    except SiteError:
        raise
    except Exception as exc:
        raise SiteError(f"site profile {str(path)!r}: make_config failed: {exc!r}") from exc
    if not isinstance(config, Config):
        raise SiteError(
            f"site profile {str(path)!r}: make_config returned {type(config).__name__}, "
            "expected parsl.config.Config"
        )
    labels = [executor.label for executor in config.executors]
    missing = [r for r in ROLES if r not in labels]
    extra = [label for label in labels if label not in ROLES]
    if missing or extra or len(labels) != len(ROLES):
        raise SiteError(
            f"site profile {str(path)!r} must define exactly the executors {list(ROLES)}; "
            f"got {labels} (missing: {missing or 'none'}, extra: {extra or 'none'})"
        )
    return config


# ----------------------------------------------------------------------------- running
@dataclass
class Site:
    """A loaded, running site: the Parsl DataFlowKernel and how to submit to a role."""

    path: Path
    run_dir: Path
    config: Config
    dfk: DataFlowKernel
    _apps: dict[tuple[Callable[..., Any], str], Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """Profile name (the file stem, e.g. ``local_threads``)."""
        return self.path.stem

    def submit(self, role: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Run ``func(*args, **kwargs)`` as a Parsl python_app on the executor ``role``.

        ``func`` must be importable on the workers (a module-level function) and take and return
        picklable values.
        """
        if role not in ROLES:
            raise SiteError(f"unknown role {role!r}; roles are {list(ROLES)}")
        key = (func, role)
        if key not in self._apps:
            self._apps[key] = python_app(func, executors=[role], data_flow_kernel=self.dfk)
        return self._apps[key](*args, **kwargs)


@contextmanager
def open_site(
    path: str | os.PathLike[str],
    run_dir: str | os.PathLike[str] = ".",
    options: Mapping[str, object] | None = None,
) -> Iterator[Site]:
    """Start Parsl with a site profile; always clean up (``dfk.cleanup()``, ``parsl.clear()``).

    Parameters
    ----------
    path
        Site profile file, e.g. ``sites/local_threads.py``.
    run_dir
        Run directory; Parsl writes its logs to ``run_dir/runinfo``.
    options
        Site options (see the profile's ``OPTIONS``).
    """
    config = build_config(path, run_dir, options)
    try:
        dfk = parsl.load(config)
    except Exception as exc:
        _shutdown_partial(config)
        raise SiteError(
            f"site profile {str(path)!r} could not start Parsl: {exc!r}. "
            f"Logs: {Path(run_dir) / 'runinfo'} (note: only one site can be open per process)."
        ) from exc
    try:
        yield Site(path=Path(path), run_dir=Path(run_dir), config=config, dfk=dfk)
    finally:
        try:
            dfk.cleanup()
        finally:
            parsl.clear()


def _shutdown_partial(config: Config) -> None:
    """Stop the executors a failed ``parsl.load`` may have started (e.g. an interchange)."""
    for executor in config.executors:
        try:
            executor.shutdown()
        except Exception as exc:  # noqa: BLE001 - best effort; the load error is what matters
            logger.debug("shutdown of executor %s after a failed load: %r", executor.label, exc)
    parsl.clear()


# ----------------------------------------------------------------------------- checking
@dataclass(frozen=True)
class RoleReport:
    """What one no-op task on one role saw."""

    role: str
    ok: bool
    elapsed_s: float
    hostname: str = ""
    pid: int = 0
    cuda_visible_devices: str | None = None
    cuda_device_count: int | None = None
    slurm_job_id: str | None = None
    worker_rank: str | None = None
    error: str = ""


def probe() -> dict[str, Any]:
    """Describe the worker this task runs on (hostname, pid, GPUs, Slurm job)."""
    import os
    import socket

    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "worker_rank": os.environ.get("PARSL_WORKER_RANK"),
        "cuda_device_count": None,
    }
    try:
        import torch
    except ImportError:
        return info
    info["cuda_device_count"] = int(torch.cuda.device_count())
    return info


def check_site(
    path: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    options: Mapping[str, object] | None = None,
    timeout_s: float = 300.0,
) -> list[RoleReport]:
    """Start the site, run one no-op task per role, and report what each worker saw.

    Parameters
    ----------
    timeout_s
        Total seconds to wait for all roles (a batch job may queue; raise it on busy clusters).

    Returns
    -------
    list of RoleReport
        One per role, in the order of :func:`roles`; ``ok`` is False with ``error`` set for a
        role whose task failed or did not finish in time.
    """
    reports: list[RoleReport] = []
    with open_site(path, run_dir, options) as site:
        start = time.perf_counter()
        done_at: dict[str, float] = {}
        futures = {role: site.submit(role, probe) for role in ROLES}
        for role, fut in futures.items():
            fut.add_done_callback(lambda _, role=role: done_at.setdefault(role, time.perf_counter()))
        for role, fut in futures.items():
            left = max(0.0, timeout_s - (time.perf_counter() - start))
            reports.append(_wait_report(role, fut, left, site))
            reports[-1] = replace(reports[-1], elapsed_s=done_at.get(role, time.perf_counter()) - start)
    return reports


def _wait_report(role: str, fut: Future, timeout_s: float, site: Site) -> RoleReport:
    """Wait for one probe future and turn its result or failure into a report."""
    try:
        info = fut.result(timeout=timeout_s)
    except FutureTimeout:
        return RoleReport(
            role, False, 0.0,
            error=f"no result within the time limit; the block may still be queued "
            f"(check squeue) or failed to start (see {site.run_dir / 'runinfo'})",
        )
    except Exception as exc:  # noqa: BLE001 - reported to the user, not swallowed
        return RoleReport(role, False, 0.0, error=repr(exc))
    return RoleReport(role=role, ok=True, elapsed_s=0.0, **info)


def format_report(reports: Sequence[RoleReport]) -> list[str]:
    """Format :func:`check_site` reports as text lines, one per role plus a summary."""
    lines = []
    for r in reports:
        if not r.ok:
            lines.append(f"{r.role:<7} FAILED after {r.elapsed_s:.1f} s: {r.error}")
            continue
        gpus = "no torch" if r.cuda_device_count is None else f"{r.cuda_device_count} CUDA device(s)"
        parts = [
            f"{r.role:<7} ok in {r.elapsed_s:.1f} s",
            f"host={r.hostname}",
            f"pid={r.pid}",
            f"CUDA_VISIBLE_DEVICES={r.cuda_visible_devices if r.cuda_visible_devices is not None else '-'}",
            gpus,
        ]
        if r.slurm_job_id:
            parts.append(f"slurm_job={r.slurm_job_id}")
        lines.append("  ".join(parts))
    failed = [r.role for r in reports if not r.ok]
    lines.append(f"{len(reports) - len(failed)}/{len(reports)} roles ok" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return lines
