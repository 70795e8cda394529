"""A chain update whose HTEX worker is SIGKILLed mid-update: Parsl retries it, the file survives.

A real ``local_htex`` site runs the chains role on one CPU worker. The task's first attempt
kills its own worker process a fraction of a second into the SGHMC loop (the manager's watchdog
sees the dead worker, fails the task with ``WorkerLost`` and starts a new worker). With the
profile's ``retries`` the task is resubmitted and must give exactly the chain a clean,
uninterrupted update gives; without retries the caller sees ``WorkerLost`` and the chain file
must still be the original, complete one (updates replace it atomically).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import ase.io
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from dying_tasks import FIRST_ATTEMPT, KILLED, fail_first_attempts, update_chain_dying_once
from parsl.executors.high_throughput.errors import WorkerLost

from otfparsl.bayes.chain import load_sample
from otfparsl.bayes.sghmc import SGHMCConfig
from otfparsl.models import load_adapter
from otfparsl.models.base import ModelSpec
from otfparsl.training import ChainJob, init_chain_files, update_chain_file
from otfparsl.workflow.site import open_site

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SITE = REPO_ROOT / "sites" / "local_htex.py"
THREADS_SITE = REPO_ROOT / "sites" / "local_threads.py"
N_STEPS = 60  # about 2.5 s of SGHMC for the tiny MACE on 3 Cu cells, one thread
KILL_DELAY_S = 0.8


def make_setup(directory: Path) -> ChainJob:
    """One tiny-MACE chain file and three EMT-labelled rattled Cu cells, as a ChainJob."""
    spec = ModelSpec(family="mace", source="tiny", dtype="float64", seed=0)
    config = SGHMCConfig(
        n_steps=N_STEPS, batch_size=2, step_size=1e-4, noise_off_steps=4, noise_ramp_steps=2
    )
    [path] = init_chain_files(load_adapter(spec), directory / "chains", 1, 11, config, 0.5)
    frames = []
    for seed in range(3):
        atoms = bulk("Cu", "fcc", a=3.61 * (1 + 0.01 * seed), cubic=True)
        atoms.rattle(0.05, seed=seed)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    ase.io.write(directory / "labels.extxyz", frames, format="extxyz")
    return ChainJob(
        index=0,
        chain_path=str(path),
        labels_path=str(directory / "labels.extxyz"),
        n_labels=3,
        model=spec,
        energy_offset_eV=0.0,
        energy_sigma_eV=0.002,
    )


def copy_setup(job: ChainJob, directory: Path) -> ChainJob:
    """The same job on copies of its chain file and labels in ``directory``."""
    (directory / "chains").mkdir(parents=True)
    chain = directory / "chains" / Path(job.chain_path).name
    shutil.copy(job.chain_path, chain)
    shutil.copy(job.labels_path, directory / "labels.extxyz")
    return replace(job, chain_path=str(chain), labels_path=str(directory / "labels.extxyz"))


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[ChainJob, dict, dict]:
    """The original job, and a clean in-process update of a copy: (job, its stats, weights)."""
    job = make_setup(tmp_path_factory.mktemp("original"))
    clean = copy_setup(job, tmp_path_factory.mktemp("clean"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OTFPARSL_TORCH_THREADS=1): same summation order
    try:
        stats = update_chain_file(clean)
    finally:
        torch.set_num_threads(threads)
    return job, stats, load_sample(clean.chain_path)


def site_options(retries: int) -> dict[str, str]:
    return {
        "accelerators": "none",
        "chain_workers": "1",
        "heartbeat_period": "1",  # the manager looks for dead workers once per heartbeat
        "retries": str(retries),
        "worker_init": f"export PYTHONPATH={HERE}:{REPO_ROOT}:${{PYTHONPATH:-}}\n"
        "export OTFPARSL_TORCH_THREADS=1",
    }


def run_dying_update(job: ChainJob, run_dir: Path, retries: int):
    """Submit the dying task to ``chains`` on a fresh local_htex site; return its future's outcome."""
    markers = run_dir / "markers"
    markers.mkdir()
    with open_site(SITE, run_dir, site_options(retries)) as site:
        future = site.submit("chains", update_chain_dying_once, job, str(markers), KILL_DELAY_S)
        try:
            outcome: object = future.result(timeout=120)
        except Exception as exc:  # noqa: BLE001 - the test inspects what Parsl raised
            outcome = exc
    first = json.loads((markers / FIRST_ATTEMPT).read_text())
    killed = json.loads((markers / KILLED).read_text())
    return outcome, first, killed


def assert_killed_mid_update(first: dict, killed: dict, clean_stats: dict) -> None:
    """The first attempt's worker died inside the SGHMC loop, before a clean update would end."""
    assert killed["pid"] == first["pid"]
    functions = {(Path(filename).name, name) for filename, name in killed["stack"]}
    assert ("chain.py", "update") in functions and ("chain.py", "_cycle") in functions
    assert killed["killed_at"] - first["armed_at"] < clean_stats["wall_time_s"]


def assert_no_temporary_files(chains_dir: Path) -> None:
    """No ``.chain_K.pt.*.tmp`` left by an interrupted atomic write (nor any other hidden file)."""
    names = [p.name for p in chains_dir.iterdir()]
    assert "chain_0.pt" in names
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names


def assert_weights_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_killed_worker_is_retried_and_gives_the_clean_update(original, tmp_path):
    job, clean_stats, clean_weights = original
    work = copy_setup(job, tmp_path / "work")
    before = load_sample(work.chain_path)
    stats, first, killed = run_dying_update(work, tmp_path, retries=2)

    assert isinstance(stats, dict), f"the task failed despite retries: {stats!r}"
    assert_killed_mid_update(first, killed, clean_stats)
    assert stats["pid"] != killed["pid"]  # a new worker process ran the retry
    assert stats["n_steps"] == N_STEPS and stats["final_loss"] == clean_stats["final_loss"]
    assert_no_temporary_files(Path(work.chain_path).parent)
    after = load_sample(work.chain_path)
    assert_weights_equal(after, clean_weights)
    assert any(not torch.equal(after[n], before[n]) for n in before)  # the update did something


@pytest.mark.slow
def test_without_retries_the_caller_sees_worker_lost_and_the_original_file(original, tmp_path):
    job, clean_stats, _ = original
    work = copy_setup(job, tmp_path / "work")
    before = load_sample(work.chain_path)
    outcome, first, killed = run_dying_update(work, tmp_path, retries=0)

    assert isinstance(outcome, WorkerLost), f"expected WorkerLost, got {outcome!r}"
    assert_killed_mid_update(first, killed, clean_stats)
    assert_no_temporary_files(Path(work.chain_path).parent)
    assert_weights_equal(load_sample(work.chain_path), before)
    assert_weights_equal(load_sample(work.chain_path), load_sample(job.chain_path))


@pytest.mark.parametrize(
    ("retries", "failures", "lost_worker", "expected"),
    [
        (2, 2, True, 3),  # two lost workers: both retried, the third attempt succeeds
        (2, 3, True, WorkerLost),  # a third lost worker exceeds the budget
        (2, 1, False, ValueError),  # the task's own error: reported at once, never retried
        (0, 1, True, WorkerLost),
    ],
)
def test_only_lost_workers_are_retried_within_the_budget(
    tmp_path, retries, failures, lost_worker, expected
):
    markers = tmp_path / "markers"
    markers.mkdir()
    with open_site(THREADS_SITE, tmp_path, {"retries": str(retries)}) as site:
        future = site.submit("chains", fail_first_attempts, str(markers), failures, lost_worker)
        try:
            outcome: object = future.result(timeout=30)
        except Exception as exc:  # noqa: BLE001 - the test inspects what Parsl raised
            outcome = exc
    attempts = len((markers / "attempts").read_text().split())
    if isinstance(expected, int):
        assert outcome == expected == attempts
    else:
        assert isinstance(outcome, expected), repr(outcome)
        assert attempts == (1 if expected is ValueError else retries + 1)
