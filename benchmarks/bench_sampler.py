"""Flat vs reference SGHMC sampler, side by side in one process (one torch thread).

Two measurements, alternated ``--repeat`` times, medians of wall and of this thread's CPU time:

* **sampler + prior**: one step's sampler work on the model's real parameter set, with a cheap
  linear stand-in for the data term (``Σ c·θ``) so that only the prior and the update differ:
  the reference sampler differentiates ``-log p(θ)/N`` through autograd and loops over the
  parameter tensors; the flat one adds ``(θ - θ_pre)/(N σ²)`` to one flat gradient;
* **chain step**: a whole SGHMC step of a real chain update (minibatch, forward, forces, double
  backward, sampler) on the case's labelled set.

Usage::

    python benchmarks/bench_sampler.py --model mace-tiny --system ethanol --dtype float64
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import torch
from _cost import Case, chain_step_times, load_case

from otfparsl.bayes import AMSGradSGHMC, SGHMCConfig, TransferPrior
from otfparsl.bayes.flat import FlatSGHMC
from otfparsl.training import build_bayesian_model


def _sampler_only(adapter, sampler: str, n_steps: int) -> tuple[float, float]:
    """Return (wall, CPU) seconds per step of the sampler and prior alone."""
    model = build_bayesian_model(adapter, copy.deepcopy(adapter.core))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    prior = TransferPrior(dict(named), adapter.defaults.sigma_tl)
    gen = torch.Generator().manual_seed(0)
    coeffs = [1e-3 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    cfg = SGHMCConfig()
    if sampler == "flat":
        flat = FlatSGHMC(params, [prior.mean[n] for n, _ in named], prior.sigma_tl, cfg,
                         torch.Generator().manual_seed(1))
    else:
        ref = AMSGradSGHMC(params, cfg, torch.Generator().manual_seed(1))
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n_steps):
        data = sum((c * p).sum() for c, p in zip(coeffs, params, strict=True))
        if sampler == "flat":
            flat.step(data, 1e-4, 1.0, 10)
        else:
            (data - prior.log_prob(dict(named)) / 10).backward()
            ref.step(1e-4, 1.0, 10)
    return (time.perf_counter() - wall) / n_steps, (time.thread_time() - cpu) / n_steps


def _chain_step(loaded, sampler: str, n_steps: int) -> tuple[float, float]:
    adapter, dataset, periodic = loaded
    cpu = time.thread_time()
    steps = chain_step_times(adapter, dataset, periodic, n_steps + 1, sampler)
    return statistics.median(steps), (time.thread_time() - cpu) / (n_steps + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mace-tiny")
    parser.add_argument("--system", default="ethanol")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, list[tuple[float, float]]] = {}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as workdir:
        loaded = load_case(Case(args.model, args.system, args.dtype), workdir)
        for sampler in ("reference", "flat"):  # warm-up
            _sampler_only(loaded[0], sampler, 2)
            _chain_step(loaded, sampler, 2)
        for _ in range(args.repeat):
            for sampler in ("reference", "flat"):
                results.setdefault(f"sampler+prior {sampler}", []).append(
                    _sampler_only(loaded[0], sampler, args.steps))
                results.setdefault(f"chain step {sampler}", []).append(
                    _chain_step(loaded, sampler, args.steps))
                loads.append(os.getloadavg()[0])
    n_params = sum(p.numel() for p in build_bayesian_model(loaded[0]).parameters() if p.requires_grad)
    print(f"{args.model} {args.system} {args.dtype}, {n_params} sampled weights, 1 torch thread, "
          f"{args.repeat} rounds x {args.steps} steps, 1-min load {min(loads):.2f}-{max(loads):.2f}")
    print("| measurement | sampler | wall ms | CPU ms | flat speed-up (wall, CPU) |")
    print("|---|---|---|---|---|")
    for what in ("sampler+prior", "chain step"):
        ref = [statistics.median(x) for x in zip(*results[f"{what} reference"], strict=True)]
        flat = [statistics.median(x) for x in zip(*results[f"{what} flat"], strict=True)]
        print(f"| {what} | reference | {ref[0] * 1e3:.2f} | {ref[1] * 1e3:.2f} | |")
        print(f"| {what} | flat | {flat[0] * 1e3:.2f} | {flat[1] * 1e3:.2f} | "
              f"{ref[0] / flat[0]:.2f}x, {ref[1] / flat[1]:.2f}x |")


if __name__ == "__main__":
    main()
