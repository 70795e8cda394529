"""Benchmark of the Bayesian core, measured side by side in one run.

Prints, for each model on the same structure:
  * one ensemble prediction with M members vs one single-model forward (energy + forces), ratio;
  * one chain update (default 2000 SGHMC steps, batch 5) on a small labelled data set, on each
    device given with ``--device`` (e.g. ``--device cpu cuda`` for CPU and GPU side by side);
    the forward and ensemble timings stay on the CPU.

Models: ``chgnet`` (CHGNet 0.3.0), ``sevennet`` (SevenNet-0), ``mace-mp0-medium-arch`` (MACE-MP-0
medium's exact architecture, 4.69 M parameters, with random weights: the cost of MACE-MP-0 medium
without downloading it), ``mace-tiny``.

Usage: python benchmarks/bench_core.py [--model chgnet|sevennet|mace-mp0-medium-arch|mace-tiny]
                                       [--steps 2000] [--members 8] [--device cpu [cuda ...]]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _cost import median_time
from ase.build import molecule
from ase.calculators.emt import EMT  # noqa: F401 - documented alternative reference
from ase.calculators.singlepoint import SinglePointCalculator

from otfparsl.bayes.chain import Chain
from otfparsl.bayes.prior import TransferPrior
from otfparsl.bayes.sghmc import SGHMCConfig
from otfparsl.calculators.ensemble import EnsembleCalculator
from otfparsl.models import load_adapter
from otfparsl.models.base import ModelSpec, attach_labels
from otfparsl.testing import build_mace_mp0_medium_architecture
from otfparsl.training import build_bayesian_model

SPECS = {
    "chgnet": ModelSpec(family="chgnet", source="0.3.0", dtype="float32"),
    "mace-tiny": ModelSpec(family="mace", source="tiny", dtype="float64"),
    "sevennet": ModelSpec(family="sevennet", source="7net-0", dtype="float32"),
}
#: MACE-MP-0 medium's architecture with random weights, built into a temporary .model file.
MP0_ARCH = "mace-mp0-medium-arch"


def _spec(name: str, workdir: str) -> ModelSpec:
    """Return the spec of benchmark model ``name`` (building the MP-0-size file in ``workdir``)."""
    if name == MP0_ARCH:
        path = build_mace_mp0_medium_architecture(Path(workdir) / "mace-mp0-medium-arch.model")
        return ModelSpec(family="mace", source=str(path), dtype="float32")
    return SPECS[name]


def _labelled_set(adapter, n: int, seed: int = 0):
    """Rattled ethanol frames labelled with the pretrained model's own forces + noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        pred = adapter.core(adapter.collate([adapter.prepare(atoms)]).inputs, False, False)
        forces = pred.forces.detach().double().numpy() + rng.normal(0, 0.05, (len(atoms), 3))
        atoms.calc = SinglePointCalculator(atoms, energy=float(pred.energy) + 0.01, forces=forces)
        frames.append(attach_labels(adapter.prepare(atoms), atoms))
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted([*SPECS, MP0_ARCH]), default="chgnet")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--device", nargs="+", default=["cpu"],
                        help="torch device(s) of the chain update, e.g. cpu cuda (default: cpu)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        _benchmark(args, _spec(args.model, workdir))


def _benchmark(args: argparse.Namespace, spec: ModelSpec) -> None:
    """Time prediction and one chain update of the model of ``spec`` (see the module docstring)."""
    torch.manual_seed(0)
    adapter = load_adapter(spec)
    atoms = molecule("CH3CH2OH")

    model = build_bayesian_model(adapter)
    base = model.trainable_state()
    samples = [{k: v + 1e-3 * torch.randn_like(v) for k, v in base.items()} for _ in range(args.members)]
    ensemble = EnsembleCalculator(adapter, samples, energy_sigma_eV=0.002)

    def single() -> None:
        adapter.core(adapter.collate([adapter.prepare(atoms)]).inputs, False, False)

    def ensemble_call() -> None:
        ensemble.calculate(atoms.copy(), ["energy", "forces"])

    t_single = median_time(single, args.repeat)
    t_ensemble = median_time(ensemble_call, args.repeat)
    print(f"model={args.model} structure=ethanol (9 atoms) torch_threads={torch.get_num_threads()}")
    print(f"single forward (E+F)          : {t_single * 1e3:8.2f} ms")
    print(f"ensemble of {args.members} (E+F+std)     : {t_ensemble * 1e3:8.2f} ms")
    print(f"ratio ensemble / single       : {t_ensemble / t_single:8.2f}  (ideal loop: {args.members})")

    dataset = _labelled_set(adapter, 12)  # prepared graphs are CPU tensors: valid on any device
    off = min(398, args.steps // 5)
    config = SGHMCConfig(n_steps=args.steps, batch_size=5, step_size=adapter.defaults.step_size,
                         noise_off_steps=off, noise_ramp_steps=min(100, args.steps // 10))
    times = {}
    for device in args.device:
        times[device] = _time_update(adapter, device, dataset, config)
    for device, t_update in times.items():
        print(f"ratio chain update ({device}) / single forward (cpu): {t_update / t_single:10.0f}")
    if "cpu" in times:
        for device, t_update in times.items():
            if device != "cpu":
                print(f"speed-up of the chain update on {device} vs cpu: {times['cpu'] / t_update:8.2f}x")


def _time_update(adapter, device: str, dataset, config: SGHMCConfig) -> float:
    """Time one chain update on ``device`` (after a 10-step warm-up); return seconds."""
    dev_adapter = adapter if device == adapter.spec.device else load_adapter(replace(adapter.spec, device=device))
    times = []
    for n_steps in (min(10, config.n_steps), config.n_steps):
        cfg = replace(config, n_steps=n_steps, noise_off_steps=min(config.noise_off_steps, n_steps))
        chain_model = build_bayesian_model(dev_adapter, copy.deepcopy(dev_adapter.core))
        params = {n: p for n, p in chain_model.named_parameters() if p.requires_grad}
        chain = Chain(chain_model, TransferPrior(params, adapter.defaults.sigma_tl), cfg, seed=0)
        start = time.perf_counter()
        stats = chain.update(dataset, dev_adapter.collate, energy_sigma_eV=0.002,
                             stress_sigma_eV_per_A3=1e-3, compute_stress=False)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    t_update = times[-1]
    print(f"chain update on {device} ({config.n_steps} steps, batch 5, N={len(dataset)}): "
          f"{t_update:8.2f} s = {t_update / config.n_steps * 1e3:.2f} ms/step; "
          f"final loss {stats.final_loss:.4g}")
    return t_update


if __name__ == "__main__":
    main()
