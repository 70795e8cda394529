"""Shared pieces of the label-cost benchmarks: models, systems, labelled sets, timed chain steps.

Every timing is a median of repeated measurements; chain steps are timed inside a real
:meth:`otfparsl.bayes.Chain.update` (minibatch draw, collate, forward, force and stress
gradients, double backward, sampler), from one step's callback to the next.
"""

from __future__ import annotations

import ctypes.util
import os
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from otfparsl.bayes.chain import Chain
from otfparsl.bayes.prior import TransferPrior
from otfparsl.bayes.sghmc import SGHMCConfig
from otfparsl.models import load_adapter
from otfparsl.models.base import ModelSpec, attach_labels
from otfparsl.testing import build_mace_mp0_medium_architecture
from otfparsl.training import build_bayesian_model

#: benchmark model name -> (family, source); the MP-0-medium architecture is built on demand
MODELS = {
    "chgnet": ("chgnet", "0.3.0"),
    "sevennet": ("sevennet", "7net-0"),
    "mace-tiny": ("mace", "tiny"),
    "mace-mp0-medium-arch": ("mace", None),
}
SYSTEMS = ("ethanol", "si64", "cazrs3")
CAZRS3_POSCAR = Path(__file__).parents[1] / "workflows" / "cazrs3_proton" / "POSCAR"
ENERGY_SIGMA_EV = 0.0217  # 0.1 K with the ethanol run's K = 0.5 kcal/mol; irrelevant to cost
STRESS_SIGMA_EV_PER_A3 = 2.71e-4


@dataclass(frozen=True)
class Case:
    """One benchmark configuration (picklable: worker processes rebuild everything from it)."""

    model: str
    system: str
    dtype: str
    device: str = "cpu"
    sampler: str = "flat"
    n_data: int = 5
    seed: int = 0


def spec_of(case: Case, workdir: str | os.PathLike[str]) -> ModelSpec:
    """Return the :class:`ModelSpec` of ``case`` (writing the MP-0-size file into ``workdir``)."""
    family, source = MODELS[case.model]
    if source is None:
        path = Path(workdir) / "mace-mp0-medium-arch.model"
        if not path.exists():
            build_mace_mp0_medium_architecture(path)
        source = str(path)
    return ModelSpec(family=family, source=source, dtype=case.dtype, device=case.device)


def system_atoms(name: str) -> Atoms:
    """Return the structure ``name``: ethanol (9 atoms), si64 (64-atom Si), cazrs3 (162 atoms)."""
    if name == "ethanol":
        return molecule("CH3CH2OH")
    if name == "si64":
        return bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))
    if name == "cazrs3":
        import ase.io

        return ase.io.read(CAZRS3_POSCAR, format="vasp")
    raise ValueError(f"system must be one of {SYSTEMS}; got {name!r}")


def labelled_set(adapter, atoms: Atoms, n: int, seed: int) -> list:
    """Return ``n`` rattled copies of ``atoms`` labelled by the model itself plus noise.

    Periodic structures also carry a stress label (a run computes stress for them).
    """
    rng = np.random.default_rng(seed)
    periodic = bool(np.all(atoms.pbc))
    frames = []
    for _ in range(n):
        a = atoms.copy()
        a.positions += rng.normal(0.0, 0.03, a.positions.shape)
        pred = adapter.core(adapter.collate([adapter.prepare(a)]).inputs, periodic, False)
        results = {
            "energy": float(pred.energy.detach()[0]) + 0.01,
            "forces": pred.forces.detach().double().cpu().numpy() + rng.normal(0, 0.05, (len(a), 3)),
        }
        if periodic:
            results["stress"] = pred.stress.detach().double().cpu().numpy()[0].reshape(3, 3)
        a.calc = SinglePointCalculator(a, **results)
        frames.append(attach_labels(adapter.prepare(a), a))
    return frames


def load_case(case: Case, workdir: str | os.PathLike[str]):
    """Return ``(adapter, dataset, periodic)`` of ``case``."""
    adapter = load_adapter(spec_of(case, workdir))
    atoms = system_atoms(case.system)
    return adapter, labelled_set(adapter, atoms, case.n_data, case.seed), bool(np.all(atoms.pbc))


def chain_step_times(adapter, dataset, periodic: bool, n_steps: int, sampler: str, seed: int = 0,
                     gradients: str = "autograd") -> list[float]:
    """Run one chain update of ``n_steps`` steps (noise on from step 0); return each step's seconds.

    The first step (lazy initialisations; with compiled gradients the compilation and the check
    against autograd) is left out of the returned list: see :func:`chain_update_times`.
    """
    return chain_update_times(adapter, dataset, periodic, n_steps, sampler, seed, gradients)[1:]


def chain_update_times(adapter, dataset, periodic: bool, n_steps: int, sampler: str, seed: int = 0,
                       gradients: str = "autograd", cpu: list[float] | None = None) -> list[float]:
    """Run one chain update of ``n_steps`` steps (noise on from step 0); return every step's seconds.

    With ``cpu`` (a list), every step's CPU seconds of this thread are appended to it.
    """
    import copy

    device = torch.device(adapter.spec.device)
    model = build_bayesian_model(adapter, copy.deepcopy(adapter.core))
    prior = TransferPrior.from_model(model, adapter.defaults.sigma_tl)
    cfg = SGHMCConfig(n_steps=n_steps, noise_off_steps=0, noise_ramp_steps=0,
                      step_size=adapter.defaults.step_size, sampler=sampler, gradients=gradients)
    stamps, cpu_stamps = [time.perf_counter()], [time.thread_time()]

    def tick(_: int) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.thread_time())

    Chain(model, prior, cfg, seed=seed).update(
        dataset, adapter.collate, ENERGY_SIGMA_EV, STRESS_SIGMA_EV_PER_A3, periodic,
        max_retries=0, callback=tick,
    )  # fmt: skip
    if cpu is not None:
        cpu.extend(np.diff(cpu_stamps))
    return list(np.diff(stamps))


def median_time(fn, repeat: int) -> float:
    """Return the median seconds of ``repeat`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def jemalloc_path() -> str | None:
    """Return the path of Debian's libjemalloc.so.2 if installed (``apt install libjemalloc2``)."""
    for candidate in ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2"):
        if os.path.exists(candidate):
            return candidate
    found = ctypes.util.find_library("jemalloc")
    return found


def with_dtype(case: Case, dtype: str) -> Case:
    """Return ``case`` with another dtype."""
    return replace(case, dtype=dtype)
