"""How far apart are chain updates computed with 1 and with 2 torch threads?

Intra-op threads split reductions (sums in matmuls, scatters) differently, so a chain update on
2 torch threads is not bit-identical to one on 1 thread; thread and process workers with the
same thread count are (tests/unit/workflow/test_submit.py). This prints the largest relative
difference of the final weights, and of the forces predicted with them, after one update of
``--steps`` SGHMC steps with noise, for float64 and float32.

Usage::

    python benchmarks/check_thread_tolerance.py --model mace-tiny --system ethanol --steps 200
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import torch
from _cost import ENERGY_SIGMA_EV, STRESS_SIGMA_EV_PER_A3, Case, load_case

from otfparsl.bayes import Chain, SGHMCConfig, TransferPrior
from otfparsl.training import build_bayesian_model


def _update(loaded, threads: int, n_steps: int):
    adapter, dataset, periodic = loaded
    torch.set_num_threads(threads)
    model = build_bayesian_model(adapter, copy.deepcopy(adapter.core))
    prior = TransferPrior.from_model(model, adapter.defaults.sigma_tl)
    cfg = SGHMCConfig(n_steps=n_steps, noise_off_steps=n_steps // 5, noise_ramp_steps=n_steps // 20,
                      step_size=adapter.defaults.step_size)
    Chain(model, prior, cfg, seed=0).update(dataset, adapter.collate, ENERGY_SIGMA_EV,
                                            STRESS_SIGMA_EV_PER_A3, periodic, max_retries=0)
    forces = model(adapter.collate(dataset), periodic, False).forces.detach()
    return model.trainable_state(), forces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mace-tiny")
    parser.add_argument("--system", default="ethanol")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    print("| model | dtype | steps | max rel. weight difference | max force difference / force RMS |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as workdir:
        for dtype in ("float64", "float32"):
            loaded = load_case(Case(args.model, args.system, dtype), workdir)
            (w1, f1), (w2, f2) = _update(loaded, 1, args.steps), _update(loaded, 2, args.steps)
            rel = max(float(((w1[n] - w2[n]).abs() / w1[n].abs().clamp_min(1e-3)).max()) for n in w1)
            force = float((f1 - f2).abs().max() / f1.pow(2).mean().sqrt())
            print(f"| {args.model} | {dtype} | {args.steps} | {rel:.2e} | {force:.2e} |")


if __name__ == "__main__":
    main()
