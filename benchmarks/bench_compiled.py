"""Compiled vs autograd chain gradients (issue 10, item 2), side by side in one process.

Variants, each one real :meth:`otfparsl.bayes.Chain.update` on the case's labelled set (one
torch thread, as a chain worker runs), in this order:

* ``before``: float64, reference sampler, autograd: a chain step when issue 10 was filed;
* ``f32 autograd``: float32, flat sampler, autograd: the defaults before compiled gradients;
* ``f32 compiled``: float32, flat sampler, ``gradients="compiled"`` (inductor). Its first step
  holds the compilation and the check against autograd, reported as "first step";
* ``f32 compiled, warm``: the same after ``torch._dynamo.reset()``: a new worker process whose
  inductor cache (on disk) is warm: what every later worker pays;
* ``f64 compiled`` (``--f64``): the float64 compiled path.

``--cold`` points inductor's cache to an empty temporary folder first, so the first compiled
variant pays the full (cold) compilation. Steps after the first are timed one by one; the
median is reported with this thread's CPU time per step.

Usage::

    python benchmarks/bench_compiled.py --model mace-tiny --system ethanol --steps 20 --cold
    python benchmarks/bench_compiled.py --model mace-mp0-medium-arch --system si64 --steps 3 --cold
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile

import torch
from _cost import Case, chain_update_times, load_case

from otfparsl.bayes import functional

VARIANTS = {
    "before": ("float64", "reference", "autograd"),
    "f32 autograd": ("float32", "flat", "autograd"),
    "f32 compiled": ("float32", "flat", "compiled"),
    "f32 compiled, warm": ("float32", "flat", "compiled"),
    "f64 compiled": ("float64", "flat", "compiled"),
}


class _Checks(logging.Handler):
    """Collect the chain's "checked against autograd" lines (the relative gradient difference)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "checked against autograd" in message or "compiled chain gradients off" in message:
            self.lines.append(message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mace-tiny")
    parser.add_argument("--system", default="ethanol")
    parser.add_argument("--steps", type=int, default=20, help="measured steps per variant (+1 first)")
    parser.add_argument("--n-data", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="start from an empty inductor cache")
    parser.add_argument("--f64", action="store_true", help="also the float64 compiled path")
    args = parser.parse_args()
    torch.set_num_threads(1)
    checks = _Checks()
    logging.getLogger("otfparsl").addHandler(checks)
    logging.getLogger("otfparsl").setLevel(logging.INFO)
    names = [n for n in VARIANTS if args.f64 or n != "f64 compiled"]
    with tempfile.TemporaryDirectory() as workdir:
        if args.cold:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(workdir, "inductor")
        print(f"inductor cache: {functional.use_persistent_cache()}  load: {os.getloadavg()[0]:.1f}")
        loaded = {}
        rows = []
        for name in names:
            dtype, sampler, gradients = VARIANTS[name]
            if dtype not in loaded:
                loaded[dtype] = load_case(Case(args.model, args.system, dtype, n_data=args.n_data), workdir)
            adapter, dataset, periodic = loaded[dtype]
            if name.endswith("warm"):
                torch._dynamo.reset()  # a fresh worker: traces again, finds inductor's code on disk
                functional._CACHE.clear()
            cpu: list[float] = []
            steps = chain_update_times(adapter, dataset, periodic, args.steps + 1, sampler, 0, gradients, cpu)
            rows.append((name, steps[0], statistics.median(steps[1:]), statistics.median(cpu[1:])))
            print(f"  {name}: first step {steps[0]:.2f} s, median {1e3 * rows[-1][2]:.1f} ms", flush=True)
    before = rows[0][2]
    plain = next(r[2] for r in rows if r[0] == "f32 autograd")
    print(f"\n{args.model} on {args.system} ({args.n_data} structures), 1 torch thread, "
          f"{args.steps} measured steps; load {os.getloadavg()[0]:.1f}")
    print("| variant | first step s | chain-step ms (median) | CPU ms (median) | vs before | vs f32 autograd |")
    print("|---|---|---|---|---|---|")
    for name, first, median, cpu in rows:
        print(f"| {name} | {first:.2f} | {1e3 * median:.1f} | {1e3 * cpu:.1f} | "
              f"{before / median:.2f}x | {plain / median:.2f}x |")
    for line in checks.lines:
        print("check:", line)


if __name__ == "__main__":
    main()
