"""Local submitters: chain updates in worker processes equal those in threads, bit for bit;
the worker processes stop with the run (Ctrl-C, errors, the run killed)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

import ase.io
import pytest
import torch
from processes import alive

pytest.importorskip("mace")

from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402

from otfparsl.bayes import SGHMCConfig, load_sample  # noqa: E402
from otfparsl.models import ModelSpec, load_adapter  # noqa: E402
from otfparsl.training import ChainJob, init_chain_files  # noqa: E402
from otfparsl.workflow.submit import (  # noqa: E402
    ProcessSubmitter,
    ThreadSubmitter,
    gather,
    local_submitter,
)
from otfparsl.workflow.tasks import update_chain  # noqa: E402


def _jobs(directory: Path, dtype: str, n_chains: int = 2) -> list[ChainJob]:
    """Tiny-MACE chain files and three EMT-labelled Cu cells, one ChainJob per chain."""
    spec = ModelSpec(family="mace", source="tiny", dtype=dtype, seed=0)
    config = SGHMCConfig(n_steps=20, batch_size=2, step_size=1e-3, noise_off_steps=4,
                         noise_ramp_steps=2)
    paths = init_chain_files(load_adapter(spec), directory / "chains", n_chains, 5, config, 0.5)
    frames = []
    for seed in range(3):
        atoms = bulk("Cu", "fcc", a=3.61 * (1 + 0.01 * seed), cubic=True)
        atoms.rattle(0.05, seed=seed)
        atoms.calc = EMT()
        atoms.get_stress()
        frames.append(atoms)
    ase.io.write(directory / "labels.extxyz", frames, format="extxyz")
    return [ChainJob(index=k, chain_path=str(p), labels_path=str(directory / "labels.extxyz"),
                     n_labels=3, model=spec, energy_offset_eV=0.0, energy_sigma_eV=0.01,
                     generation=1) for k, p in enumerate(paths)]  # fmt: skip


def _copy(jobs: list[ChainJob], directory: Path) -> list[ChainJob]:
    (directory / "chains").mkdir(parents=True)
    out = []
    for job in jobs:
        path = directory / "chains" / Path(job.chain_path).name
        shutil.copy(job.chain_path, path)
        out.append(replace(job, chain_path=str(path)))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_process_workers_equal_thread_workers_bitwise(tmp_path, dtype):
    """One torch thread per chain in both: same kernels, same order, same chain files."""
    jobs = _jobs(tmp_path / "setup", dtype)
    in_threads, in_processes = _copy(jobs, tmp_path / "threads"), _copy(jobs, tmp_path / "procs")
    threads = torch.get_num_threads()  # both submitters set this process's torch threads
    try:
        with ThreadSubmitter(chain_workers=os.cpu_count() or 1) as submitter:  # 1 torch thread
            stats_t = gather([submitter.submit("chains", update_chain, j) for j in in_threads])
            stats_t = stats_t.result()
        with ProcessSubmitter(chain_workers=2, torch_threads=1) as submitter:
            stats_p = gather([submitter.submit("chains", update_chain, j) for j in in_processes])
            stats_p = stats_p.result()
    finally:
        torch.set_num_threads(threads)
    assert {s["pid"] for s in stats_p}.isdisjoint({os.getpid()})
    for a, b, sa, sb in zip(in_threads, in_processes, stats_t, stats_p, strict=True):
        wa, wb = load_sample(a.chain_path), load_sample(b.chain_path)
        assert all(torch.equal(wa[n], wb[n]) for n in wa)
        assert sa["final_loss"] == sb["final_loss"] and not sa["reused"]
    before = load_sample(jobs[0].chain_path)
    assert any(not torch.equal(before[n], wa[n]) for n in wa)  # the chains moved


def test_flush_denormal_is_cleared_after_a_float32_update(tmp_path):
    """update_chain flushes denormals only while a float32 chain computes."""
    [job] = _jobs(tmp_path, "float32", n_chains=1)
    update_chain(replace(job, generation=None))
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a float32 denormal
    assert float(tiny * 1.0) != 0.0


def test_a_dead_chain_worker_fails_its_task_and_the_pool_restarts():
    threads = torch.get_num_threads()
    try:
        with local_submitter(chain_workers=1) as submitter:
            dying = submitter.submit("chains", os._exit, 3)
            with pytest.raises(BrokenProcessPool):
                dying.result(timeout=120)
            assert submitter.submit("chains", os.getpid).result(timeout=120) != os.getpid()
            assert submitter.submit("local", os.getpid).result() == os.getpid()
    finally:
        torch.set_num_threads(threads)


def test_an_interrupted_close_stops_a_running_update_at_once():
    """Ctrl-C or an error: close(interrupted=True) terminates the workers, no waiting."""
    threads = torch.get_num_threads()
    try:
        submitter = local_submitter(chain_workers=1)
        assert submitter.submit("chains", os.getpid).result(timeout=120) != os.getpid()
        endless = submitter.submit("chains", time.sleep, 3600)
        queued = submitter.submit("chains", time.sleep, 3600)
        while not endless.running():
            time.sleep(0.05)
        submitter.close(interrupted=True)
        assert endless.done() and queued.done()
        for future in (endless, queued):  # their worker was terminated, not waited for
            assert future.cancelled() or isinstance(future.exception(), BrokenProcessPool)
    finally:
        torch.set_num_threads(threads)


_ORPHANING_RUN = """
import os, signal, sys, time
from otfparsl.workflow.submit import local_submitter

submitter = local_submitter(chain_workers=1)
worker = submitter.submit("chains", os.getpid).result(timeout=120)
print(worker, flush=True)
os.kill(worker, signal.SIGINT)  # what Ctrl-C in a terminal sends to the whole process group
time.sleep(1)
assert submitter.submit("chains", os.getpid).result(timeout=60) == worker, "SIGINT killed it"
submitter.submit("chains", time.sleep, 3600)
time.sleep(1)
os.kill(os.getpid(), signal.SIGKILL)  # the run dies without stopping its workers
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to see the orphaned worker")
def test_a_chain_worker_ignores_sigint_and_exits_when_its_run_is_killed(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _ORPHANING_RUN], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    worker = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 30
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(worker), "the orphaned chain worker still runs its 1-hour task"


def test_gather_fails_with_cancelled_error_when_a_future_was_cancelled():
    """An interrupted close cancels queued updates: gather reports it, no callback error."""
    from concurrent.futures import CancelledError, Future

    done, dropped = Future(), Future()
    combined = gather([done, dropped])
    assert dropped.cancel()
    done.set_result(1)
    assert isinstance(combined.exception(timeout=1), CancelledError)
    assert gather([done]).result(timeout=1) == [1]
