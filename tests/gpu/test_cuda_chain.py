"""Chain updates on a CUDA device: what a GPU `chains` worker does in a run.

A tiny in-process MACE (float64) and rattled, strained 4-atom Cu cells labelled with EMT. The
chain files are initialised on the CPU, as the orchestrator does, and updated with
``ModelSpec(device="cuda")``; the files they leave must be CPU files that a CPU ensemble reads.
Short cycles (200 steps for the fit, 40 for continuation) keep the module at about a minute
on an H100 (the tiny model is launch-bound there). Skips without CUDA.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("mace")

import ase.io  # noqa: E402

from otfparsl.bayes.chain import Chain, read_chain_header  # noqa: E402
from otfparsl.bayes.sghmc import SGHMCConfig  # noqa: E402
from otfparsl.calculators.ensemble import EnsembleCalculator  # noqa: E402
from otfparsl.models import cached_adapter  # noqa: E402
from otfparsl.models.base import attach_labels  # noqa: E402
from otfparsl.run.chains import load_samples  # noqa: E402
from otfparsl.testing import emt_copper_frames  # noqa: E402
from otfparsl.training import (  # noqa: E402
    ChainJob,
    build_bayesian_model,
    init_chain_files,
    update_chain_file,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# cuBLAS is deterministic only with a fixed workspace; it must be set before cuBLAS starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

ENERGY_SIGMA_EV = 0.01  # 0.1 K with K = 0.1 eV
N_FRAMES = 8
FIT = SGHMCConfig(n_steps=200, batch_size=5, step_size=1e-3, noise_off_steps=40, noise_ramp_steps=10)
SHORT = SGHMCConfig(n_steps=40, batch_size=5, step_size=1e-3, noise_off_steps=10, noise_ramp_steps=5)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_mace_spec, tiny_mace_adapter):
    """Labels file, energy offset, CPU/CUDA adapters and a chain-file factory (CPU init)."""
    root = tmp_path_factory.mktemp("gpu_chains")
    frames = emt_copper_frames(N_FRAMES, stress=True)
    labels = root / "labels.extxyz"
    ase.io.write(labels, frames, format="extxyz")
    frames = list(ase.io.read(labels, index=":"))  # what a chain task sees
    cpu = tiny_mace_adapter
    e_pre = float(cpu.core(cpu.collate([cpu.prepare(frames[0])]).inputs, False, False).energy[0])
    offset = e_pre - float(frames[0].get_potential_energy())  # method.md section 6
    cuda_spec = replace(tiny_mace_spec, device="cuda")

    def chain_files(name: str, config: SGHMCConfig, n_chains: int = 1):
        return init_chain_files(cpu, root / name, n_chains, 0, config, cpu.defaults.sigma_tl)

    def job(path, spec=cuda_spec) -> ChainJob:
        return ChainJob(index=0, chain_path=str(path), labels_path=str(labels), n_labels=len(frames),
                        model=spec, energy_offset_eV=offset, energy_sigma_eV=ENERGY_SIGMA_EV)

    return {"frames": frames, "offset": offset, "cpu": cpu, "cuda_spec": cuda_spec,
            "chain_files": chain_files, "job": job, "root": root}


@pytest.fixture
def deterministic():
    """Deterministic CUDA kernels for the duration of one test."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def _force_rmse(ensemble: EnsembleCalculator, frames) -> float:
    """RMSE of the ensemble's mean forces against the EMT forces, eV/Å."""
    err = [ensemble.predict_members(a)["forces"].mean(0) - a.get_forces() for a in frames]
    return float(np.sqrt(np.mean(np.concatenate(err) ** 2)))


def _all_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _all_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _all_tensors(value)


def test_cuda_update_fits_and_leaves_a_cpu_file(run):
    (path,) = run["chain_files"]("fit", FIT)
    pretrained = load_samples([path])
    stats = update_chain_file(run["job"](path))
    assert stats["n_steps"] == FIT.n_steps and stats["n_retries"] == 0 and not stats["reused"]

    # every tensor in the file is a CPU tensor, without map_location
    state = torch.load(path, weights_only=True)
    assert state["noise_rng_device"] == "cuda"
    assert all(t.device.type == "cpu" for t in _all_tensors(state))

    cpu, frames = run["cpu"], run["frames"]
    (sample,) = load_samples([path])
    before = _force_rmse(EnsembleCalculator(cpu, pretrained, ENERGY_SIGMA_EV), frames)
    ensemble = EnsembleCalculator(cpu, [sample], ENERGY_SIGMA_EV)
    after = _force_rmse(ensemble, frames)
    assert np.isfinite(after) and after < 0.75 * before, (before, after)

    # the CPU ensemble and the CUDA model agree on the energy of the same sample (float64)
    cuda = cached_adapter(run["cuda_spec"])
    model = build_bayesian_model(cuda, copy.deepcopy(cuda.core))
    model.load_trainable_state(sample)
    for atoms in frames[:3]:
        e_cuda = float(model(cuda.collate([cuda.prepare(atoms)]), True, False).energy[0])
        e_cpu = float(ensemble.predict_members(atoms)["energy"][0])
        assert np.isfinite(e_cpu) and abs(e_cuda - e_cpu) < 1e-5, (e_cuda, e_cpu)


def _cuda_chain(run, path) -> Chain:
    cuda = cached_adapter(run["cuda_spec"])
    return Chain.load(path, build_bayesian_model(cuda, copy.deepcopy(cuda.core)))


def test_cuda_continuation_is_bit_identical(run, deterministic):
    (path,) = run["chain_files"]("continue", SHORT)
    cuda = cached_adapter(run["cuda_spec"])
    data = [attach_labels(cuda.prepare(a), a, run["offset"]) for a in run["frames"]]
    args = (data, cuda.collate, ENERGY_SIGMA_EV, 1e-3, True)
    _cuda_chain(run, path).update(*args)  # warm-up: every run below sees a warm process

    straight = _cuda_chain(run, path)
    straight.update(*args)
    straight.update(*args)

    first = _cuda_chain(run, path)
    first.update(*args)
    middle = run["root"] / "continue" / "middle.pt"
    first.save(middle)
    resumed = _cuda_chain(run, middle)
    assert resumed.device.type == "cuda"
    resumed.update(*args)

    a, b = straight.sample(), resumed.sample()
    assert resumed.n_updates == straight.n_updates == 2
    assert all(torch.equal(a[n], b[n]) for n in a)
    # the second update moved the weights (the comparison is not of two untouched states)
    assert any(not torch.equal(a[n], first.sample()[n]) for n in a)


_RESUME_SCRIPT = """
import pickle, sys, torch
torch.use_deterministic_algorithms(True)
from otfparsl.training import update_chain_file
with open(sys.argv[1], "rb") as handle:
    update_chain_file(pickle.load(handle))
"""


@pytest.mark.xfail(
    strict=False,
    reason="measured on an H100 (2026-11-25): the first update of a fresh process differs from a "
    "warm one by ~1e-15 even with deterministic kernels and torch.jit.optimized_execution(False); "
    "e3nn's TorchScript profiling executor re-optimises after the first calls. Continuation is "
    "bit-identical within one process and on CPU across processes (tests/integration/test_resume.py).",
)
def test_cuda_continuation_in_a_new_process_is_bit_identical(run, deterministic):
    """A resumed run updates its chains in a fresh worker process, not in a warm one."""
    (path,) = run["chain_files"]("new_process", SHORT)
    update_chain_file(run["job"](path))  # warm-up, and the file a resumed run starts from
    resumed = path.with_name("resumed.pt")
    shutil.copyfile(path, resumed)
    update_chain_file(run["job"](path))  # the uninterrupted chain, in this (warm) process

    job_file = path.with_name("job.pkl")
    job_file.write_bytes(pickle.dumps(run["job"](resumed)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", _RESUME_SCRIPT, str(job_file)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = load_samples([path, resumed])
    assert read_chain_header(resumed)["n_updates"] == read_chain_header(path)["n_updates"] == 2
    assert all(torch.equal(a[n], b[n]) for n in a), max(float((a[n] - b[n]).abs().max()) for n in a)


def test_cuda_file_continues_on_cpu_with_reseeded_noise(run, caplog):
    (path,) = run["chain_files"]("to_cpu", SHORT)
    update_chain_file(run["job"](path))  # written by a CUDA worker
    copy_path = path.with_name("chain_copy.pt")
    shutil.copyfile(path, copy_path)
    on_cuda = load_samples([path])[0]

    cpu_spec = replace(run["cuda_spec"], device="cpu")
    with caplog.at_level(logging.WARNING, logger="otfparsl.bayes.chain"):
        stats = update_chain_file(run["job"](path, cpu_spec))
    assert stats["n_steps"] == SHORT.n_steps and stats["n_retries"] == 0
    assert any("written on cuda, loaded on cpu" in r.getMessage() for r in caplog.records)
    assert torch.load(path, weights_only=True)["noise_rng_device"] == "cpu"

    after = load_samples([path])[0]
    assert all(torch.isfinite(t).all() for t in after.values())
    assert any(not torch.equal(after[n], on_cuda[n]) for n in after)
    # the reseeded noise stream is a deterministic function of the chain: a retry agrees
    update_chain_file(run["job"](copy_path, cpu_spec))
    again = load_samples([copy_path])[0]
    assert all(torch.equal(after[n], again[n]) for n in after)
