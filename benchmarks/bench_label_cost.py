"""What will one DFT label cost me? Prediction and chain-update cost per model, system and dtype.

For each ``MODEL:SYSTEM`` case, dtype and device, side by side in one run:

* **one forward** (energy + forces, + stress for periodic cells) of the system on a prebuilt
  graph, and one
  **ensemble prediction** of ``--members`` members (``EnsembleCalculator``: mean, std, members),
  in this process with ``--predict-threads`` torch threads (default ``cores // workers``, as
  the orchestrator of a local run has them);
* **one SGHMC chain step** in the configuration ``otfparsl run`` uses on this machine without a
  site (:class:`otfparsl.workflow.submit.ProcessSubmitter`): ``--workers`` chain processes with
  one torch thread each, all busy at once, float32 with denormals flushed; batch of 5 distinct
  structures (the data set has 5, so the whole set is the batch: an upper bound, a larger data
  set draws 5 with repeats). The figure is the wall time per chain-step with every worker busy
  (loop wall / (workers x steps)): the throughput a run gets;
* **one full update of M chains x 2000 steps**, extrapolated from those steps:
  M x n_steps x (wall per chain-step). It is not run in full (hours on 2 CPU cores).

``--device cuda`` rows are printed as "open" where no GPU is visible. Usage::

    python benchmarks/bench_label_cost.py --cases chgnet:ethanol sevennet:ethanol \\
        mace-mp0-medium-arch:si64 mace-mp0-medium-arch:cazrs3 --dtypes float32 float64 \\
        --device cpu cuda --steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from _cost import MODELS, SYSTEMS, Case, load_case, median_time, system_atoms
from bench_workers import Layout, run_layout

from otfparsl.calculators.ensemble import EnsembleCalculator
from otfparsl.training import build_bayesian_model


def _predict_times(case: Case, workdir: str, members: int, repeat: int) -> tuple[float, float]:
    """Return (one forward, one ensemble prediction) in seconds, medians of ``repeat``."""
    adapter, _, periodic = load_case(case, workdir)
    atoms = system_atoms(case.system)
    base = build_bayesian_model(adapter).trainable_state()
    gen = torch.Generator().manual_seed(0)
    samples = [{k: v + 1e-3 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in base.items()}
               for _ in range(members)]  # fmt: skip
    ensemble = EnsembleCalculator(adapter, samples, energy_sigma_eV=0.002)
    properties = ["energy", "forces", "stress"] if periodic else ["energy", "forces"]

    inputs = adapter.collate([adapter.prepare(atoms)]).inputs  # a prebuilt graph

    def single() -> None:
        adapter.core(inputs, periodic, False)

    def predict() -> None:
        ensemble.calculate(atoms.copy(), properties)

    return median_time(single, repeat), median_time(predict, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["chgnet:ethanol", "sevennet:ethanol"],
                        help=f"MODEL:SYSTEM, models {sorted(MODELS)}, systems {list(SYSTEMS)}")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--device", nargs="+", default=["cpu"])
    parser.add_argument("--steps", type=int, default=5, help="measured SGHMC steps per worker")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the measured ones")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--members", type=int, default=8, help="ensemble members = chains M")
    parser.add_argument("--update-steps", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5, help="repeats of the predictions")
    parser.add_argument("--predict-threads", type=int, default=0,
                        help="torch threads of the predictions (0: cores // workers)")
    args = parser.parse_args()
    torch.set_num_threads(args.predict_threads or max(1, (os.cpu_count() or 1) // args.workers))
    rows = []
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as workdir:
        for spec in args.cases:
            model, system = spec.split(":")
            for device in args.device:
                for dtype in args.dtypes:
                    case = Case(model=model, system=system, dtype=dtype, device=device)
                    rows.append(_measure(case, args, workdir))
                    loads.append(os.getloadavg()[0])
                    print(rows[-1], flush=True)
    _print_table(rows, args, loads)


def _measure(case: Case, args: argparse.Namespace, workdir: str) -> str:
    """Return one markdown row for ``case``."""
    label = f"| {case.model} | {case.system} | {case.dtype} | {case.device} |"
    if case.device.startswith("cuda") and not torch.cuda.is_available():
        return f"{label} open: no GPU lent | | | |"
    forward, ensemble = _predict_times(case, workdir, args.members, args.repeat)
    if case.device == "cpu":
        layout = Layout("run", "processes", args.workers, 1, flush_denormal=case.dtype == "float32")
    else:  # one chain per GPU process, as the GPU site profiles run them
        layout = Layout("run", "processes", 1, 1)
    start = time.perf_counter()
    wall, cpu = run_layout(case, layout, args.steps, workdir, None, warmup=args.warmup)
    spent = time.perf_counter() - start
    update = wall * args.members * args.update_steps
    return (f"{label} {forward * 1e3:.1f} | {ensemble * 1e3:.1f} | {wall * 1e3:.1f} "
            f"({cpu * 1e3:.1f} CPU) | {update / 60:.1f} min (extrapolated) | "
            f"{wall / forward:.1f}x | {spent:.0f} s |")  # fmt: skip


def _print_table(rows: list[str], args: argparse.Namespace, loads: list[float]) -> None:
    print(f"\nmachine: {os.cpu_count()} cores, torch {torch.__version__}, predictions on "
          f"{torch.get_num_threads()} torch thread(s), "
          f"chain workers {args.workers} processes x 1 torch thread, {args.steps} measured + "
          f"{args.warmup} warm-up steps per worker, M = {args.members}, update = "
          f"{args.update_steps} steps; 1-min load average {min(loads):.2f}-{max(loads):.2f}")  # fmt: skip
    print("| model | system | dtype | device | one forward ms | ensemble of M ms | chain-step ms "
          "(wall per chain-step, all workers busy) | M-chain update | chain-step / forward | "
          "time to measure |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
