"""The CLI demo's chain-step against one CHGNet forward (issue 10's first goal).

Runs the embedded ethanol demo as a user does (``otfparsl run``, worker processes, PySCF labels;
``--bayes-steps`` overrides ``bayes.n_steps``, the issue used 100, the YAML's value), then, in
this process with the same torch threads as the run's orchestrator, times one CHGNet
energy+forces forward on a prebuilt graph (CHGNet's own ``model([graph])``, median of
``--repeat``). The chain-step is the run's chain-update wall time / (chains x steps x updates),
as the issue defines it: with both workers busy, so it is a throughput.

Usage::

    python benchmarks/bench_cli_demo.py --workdir /tmp/demo
    python benchmarks/bench_cli_demo.py --workdir /tmp/demo --reuse   # only re-read the run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "workflows" / "ethanol" / "run.yaml"
GOAL = 4.5
WHEN_FILED = 7.2


def _run_demo(workdir: Path, n_steps: int) -> Path:
    settings = yaml.safe_load(DEMO.read_text())
    settings["bayes"]["n_steps"] = n_steps
    settings["structure"] = str(DEMO.parent / settings["structure"])
    run_yaml = workdir / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(settings, sort_keys=False))
    run_dir = workdir / "run"
    start = time.perf_counter()
    cli = Path(sys.executable).parent / "otfparsl"
    subprocess.run([str(cli), "run", str(run_yaml), "--run-dir", str(run_dir), "--restart-from-scratch"],
                   check=True, cwd=workdir)
    print(f"run took {time.perf_counter() - start:.0f} s")
    return run_dir


def _chgnet_forward_ms(repeat: int) -> float:
    from ase.build import molecule
    from chgnet.model import CHGNet
    from pymatgen.io.ase import AseAtomsAdaptor

    model = CHGNet.load(verbose=False)
    graph = model.graph_converter(AseAtomsAdaptor.get_structure(molecule("CH3CH2OH", vacuum=10.0)))
    model([graph])
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        model([graph], task="ef")
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--bayes-steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--reuse", action="store_true", help="read an existing run in WORKDIR/run")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    run_dir = args.workdir / "run" if args.reuse else _run_demo(args.workdir, args.bayes_steps)
    summary = json.loads((run_dir / "summary.json").read_text())
    settings = yaml.safe_load((run_dir / "run.yaml").read_text())
    chains, steps = settings["bayes"]["n_chains"], settings["bayes"]["n_steps"]
    updates = summary["dft_calls"]
    chain_step_ms = 1e3 * summary["update_s"] / (chains * steps * updates)
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // min(8, os.cpu_count() or 1)))
    forward_ms = _chgnet_forward_ms(args.repeat)
    ratio = chain_step_ms / forward_ms
    print(f"load {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after")
    print(f"run: {summary['n_steps']} MD steps, {updates} DFT labels = chain updates, {chains} chains x "
          f"{steps} steps, chain updates {summary['update_s']:.1f} s of {summary['wall_s']:.1f} s wall")
    print(f"chain-step {chain_step_ms:.1f} ms; CHGNet forward ({torch.get_num_threads()} torch "
          f"thread) {forward_ms:.1f} ms; ratio {ratio:.2f}x (goal <= {GOAL}x, {WHEN_FILED}x when filed)")


if __name__ == "__main__":
    main()
