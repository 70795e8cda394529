"""What checkpointing costs, next to what it protects, measured in one run.

For a 9-atom molecule (the ethanol demo) and an 864-atom Cu cell (the paper's
LaMnO3 runs are of this order), prints:
  * the per-step snapshot (MD + integrator + calculator state, taken after every MD step);
  * one commit of checkpoint.json (JSON of every walker's snapshot + calibration state with
    ``--interventions`` recorded interventions, written atomically with fsync);
  * the ratio of one commit to one ensemble MD step of tiny MACE on the same structure
    (an upper bound of the relative overhead at checkpoint_interval 1).

Usage: python benchmarks/bench_checkpoint.py [--repeats 20] [--interventions 500]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _cost import median_time  # the timing rule of every benchmark
from ase.build import bulk, molecule
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from otfparsl import jsonable
from otfparsl.calculators.ensemble import EnsembleCalculator
from otfparsl.calibration import Calibrator
from otfparsl.fileio import atomic_write_text
from otfparsl.md import Segment, make_dynamics
from otfparsl.md.state import capture_md_state
from otfparsl.models import load_adapter
from otfparsl.models.base import ModelSpec
from otfparsl.training import build_bayesian_model


def _calibrator(n: int) -> Calibrator:
    cal = Calibrator(energy_threshold_eV=0.02)
    rng = np.random.default_rng(0)
    for step in range(n):
        cal.update(step=step, predicted_energy=0.0, predicted_std=0.01, label_energy=float(rng.normal(0, 0.01)))
    return cal


def measure(name: str, atoms, ensemble: EnsembleCalculator, calibrator: Calibrator, repeats: int, folder: Path) -> None:
    atoms.calc = ensemble
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = make_dynamics(atoms, Segment(300.0, 10.0), seed=1)
    dyn.run(1)
    results = dict(ensemble.results)

    def snapshot() -> dict:
        return {"md": capture_md_state(atoms, dyn), "calc": {"results": dict(results)}}

    snap = snapshot()

    def commit() -> None:
        state = {"walkers": [snap], "calibration": calibrator.to_dict(), "learner": {"generation": 3}}
        atomic_write_text(folder / "checkpoint.json", jsonable.dumps(state))

    t_snap = median_time(snapshot, repeats)
    t_commit = median_time(commit, repeats)
    t_step = median_time(lambda: dyn.run(1), max(3, repeats // 4))
    size_kb = (folder / "checkpoint.json").stat().st_size / 1024
    print(
        f"{name:>22s}: snapshot {t_snap * 1e3:8.3f} ms   commit {t_commit * 1e3:8.2f} ms ({size_kb:7.0f} KiB)   "
        f"MD step (tiny MACE, {ensemble.n_members} members) {t_step * 1e3:9.1f} ms   commit/step {t_commit / t_step:6.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--interventions", type=int, default=500)
    parser.add_argument("--members", type=int, default=8)
    args = parser.parse_args()
    adapter = load_adapter(ModelSpec(family="mace", source="tiny", dtype="float64"))
    samples = [build_bayesian_model(adapter).trainable_state() for _ in range(args.members)]
    ensemble = EnsembleCalculator(adapter, samples, energy_sigma_eV=0.002)
    calibrator = _calibrator(args.interventions)
    structures = {
        "ethanol (9 atoms)": molecule("CH3CH2OH"),
        "Cu 6x6x6x4 (864 atoms)": bulk("Cu", "fcc", a=3.61, cubic=True).repeat((6, 6, 6)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, atoms in structures.items():
            measure(name, atoms, ensemble, calibrator, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
