"""Member spread and actual error of a CHGNet ensemble vs the SGHMC settings, on ethanol.

For every setting (n_steps, step size gamma_0, prior width sigma_TL) the script runs M chains
from the pretrained CHGNet 0.3.0 for ONE update each on a few PySCF B3LYP/6-31G labels (with
otfparsl's own chain files and update task, as an on-the-fly run does), then evaluates the
ensemble on held-out frames of a Langevin trajectory at 300 K and reports how large the member
spread is next to the real error of the ensemble mean.

Frames: MD step 0 (the first training label, which fixes the energy offset
c = E_pretrained - E_DFT of method.md section 6), ``--frames`` held-out frames every
``--interval`` MD steps, and ``--labels - 1`` further training frames half an interval away
from held-out ones, spread over the trajectory. DFT labels are cached in
``--cache/labels.extxyz`` (one entry per MD step, matched by position).

Usage::

    nice -n 10 python benchmarks/study_spread.py --labels 1 --n-steps 50 200 800 \\
        --step-size 1e-4 3e-4 1e-3 --sigma-tl 0.2 --out /tmp/spread_l1.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.io import read

from otfparsl.bayes.sghmc import SGHMCConfig
from otfparsl.calculators.ensemble import EnsembleCalculator
from otfparsl.data import LabelledDataset
from otfparsl.errors import SamplerDiverged
from otfparsl.labelers import make_labeler
from otfparsl.md.dynamics import Segment
from otfparsl.md.programme import TemperatureProgramme
from otfparsl.models import load_adapter
from otfparsl.models.base import ModelAdapter, ModelSpec
from otfparsl.run.chains import load_samples
from otfparsl.settings import BayesSettings
from otfparsl.training import ChainJob, build_bayesian_model, init_chain_files, update_chain_file

REPO = Path(__file__).resolve().parents[1]
STRUCTURE = REPO / "workflows" / "ethanol" / "ethanol.xyz"
SPEC = ModelSpec(family="chgnet", source="0.3.0", dtype="float32")
#: K of the ethanol demo (0.5 kcal/mol), eV per structure.
THRESHOLD_EV = 0.0217
ENERGY_SIGMA_EV = 0.1 * THRESHOLD_EV
#: The paper's noise schedule as fractions of its 2000 steps (method.md section 3).
NOISE_OFF_FRACTION = 398 / 2000
NOISE_RAMP_FRACTION = 100 / 2000
LABELER_OPTIONS = {"xc": "b3lyp", "basis": "6-31g", "grid_response": True, "num_threads": 1}


@dataclass(frozen=True)
class Setting:
    """One point of the grid: SGHMC steps per update, gamma_0, sigma_TL."""

    n_steps: int
    step_size: float
    sigma_tl: float

    def config(self) -> SGHMCConfig:
        """Return the sampler settings, noise schedule at the paper's fractions of n_steps."""
        return SGHMCConfig(
            n_steps=self.n_steps,
            step_size=self.step_size,
            noise_off_steps=int(NOISE_OFF_FRACTION * self.n_steps + 0.5),
            noise_ramp_steps=int(NOISE_RAMP_FRACTION * self.n_steps + 0.5),
        )


def parse_args() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=3, help="chains M (chain k has seed + k)")
    parser.add_argument("--n-steps", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--step-size", type=float, nargs="+", default=[1e-4])
    parser.add_argument("--sigma-tl", type=float, nargs="+", default=[0.2])
    parser.add_argument("--labels", type=int, default=1, help="training labels (first: MD step 0)")
    parser.add_argument("--frames", type=int, default=12, help="held-out frames")
    parser.add_argument("--interval", type=int, default=40, help="MD steps between held-out frames")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the chains")
    parser.add_argument("--md-seed", type=int, default=1, help="seed of velocities and thermostat")
    parser.add_argument("--divergence-retries", type=int,
                        default=BayesSettings.model_fields["divergence_retries"].default,
                        help="halvings of gamma_0 after NaN/inf (default: a run's)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/study_spread_cache"))
    parser.add_argument("--out", type=Path, default=Path("results.json"))
    return parser.parse_args()


def frame_steps(n_labels: int, n_frames: int, interval: int) -> tuple[list[int], list[int]]:
    """Return the MD steps of the training frames and of the held-out frames.

    Held-out frames lie at ``interval, 2 interval, ...``; training frames at 0 and then at
    multiples of ``interval`` plus ``interval // 2``, spread evenly, so no frame is in both sets.
    """
    heldout = [interval * (j + 1) for j in range(n_frames)]
    length = interval * n_frames
    train = [0] + [interval * round(j * length / (n_labels * interval)) + interval // 2
                   for j in range(1, n_labels)]
    return train, heldout


def pretrained_sample(adapter: ModelAdapter) -> dict[str, torch.Tensor]:
    """Return the pretrained weights with the zero-initialised sigma head (one sample)."""
    return build_bayesian_model(adapter).trainable_state()


def md_frames(adapter: ModelAdapter, steps: list[int], seed: int) -> dict[int, Atoms]:
    """Run Langevin MD (300 K, 0.5 fs, 0.01/fs) with the pretrained CHGNet; keep ``steps``."""
    atoms = read(STRUCTURE)
    atoms.calc = EnsembleCalculator(adapter, [pretrained_sample(adapter)], ENERGY_SIGMA_EV)
    programme = TemperatureProgramme([Segment(300.0, 0.5 * max(steps), "langevin", 0.5, 0.01)])
    programme.initialize_velocities(atoms, seed)
    dynamics = programme.make_dynamics(atoms, 0, seed)
    frames = {}

    def keep() -> None:  # ASE calls observers after step 0 (the start) and every step
        if dynamics.nsteps in steps:
            frames[dynamics.nsteps] = atoms.copy()

    dynamics.attach(keep, interval=1)
    dynamics.run(max(steps))
    return frames


def labelled_frames(frames: dict[int, Atoms], cache: Path) -> dict[int, Atoms]:
    """Label the frames with PySCF, reusing labels of the same MD step and positions in ``cache``.

    The returned structures are those read back from the cache (positions as stored there), so
    that every model sees exactly the labelled geometry.
    """
    cache.mkdir(parents=True, exist_ok=True)
    dataset = LabelledDataset(cache / "labels.extxyz")
    labeler = make_labeler("pyscf", **LABELER_OPTIONS)

    def cached(data: LabelledDataset, step: int) -> Atoms | None:
        atoms = frames[step]
        return next((a for a in data.frames if a.info.get("md_step") == step
                     and np.allclose(a.positions, atoms.positions, atol=1e-6)), None)

    for step in sorted(frames):
        if cached(dataset, step) is None:
            labelled = labeler.label(frames[step], cache / f"pyscf_step_{step:05d}")
            labelled.info["md_step"] = step
            dataset.append(labelled)
            print(f"labelled MD step {step} in {labelled.info['label_seconds']:.1f} s", flush=True)
    stored = LabelledDataset(dataset.path)
    return {step: cached(stored, step) for step in frames}


def evaluate(adapter: ModelAdapter, samples: list[dict[str, torch.Tensor]], frames: list[Atoms],
             offset_eV: float) -> dict[str, float]:
    """Compare the ensemble with DFT + offset on ``frames``.

    Returns the median / max member spread (std of member energies, ddof = 1), the median
    ``energy_std``, mean, RMSE and max |e| of the ensemble-mean energy error e, rms of z = e / energy_std, the
    fraction of frames with |e| > K and the force RMSE of the ensemble mean, all in eV (eV/Å).
    """
    calc = EnsembleCalculator(adapter, samples, ENERGY_SIGMA_EV)
    errors, stds, spreads, force_errors = [], [], [], []
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = calc
        errors.append(atoms.get_potential_energy() - (frame.get_potential_energy() + offset_eV))
        stds.append(calc.results["energy_std"])
        members = calc.results["energy_members"]
        spreads.append(float(np.std(members, ddof=1)) if len(members) > 1 else 0.0)
        force_errors.append(calc.results["forces"] - frame.get_forces())
    errors, stds = np.asarray(errors), np.asarray(stds)
    return {
        "spread_median_eV": float(np.median(spreads)),
        "spread_max_eV": float(np.max(spreads)),
        "energy_std_median_eV": float(np.median(stds)),
        "mean_error_eV": float(np.mean(errors)),
        "rmse_eV": float(np.sqrt(np.mean(errors**2))),
        "max_abs_error_eV": float(np.max(np.abs(errors))),
        "rms_z": float(np.sqrt(np.mean((errors / stds) ** 2))),
        "fraction_above_K": float(np.mean(np.abs(errors) > THRESHOLD_EV)),
        "force_rmse_eV_per_A": float(np.sqrt(np.mean(np.square(force_errors)))),
    }


def weight_shift(samples: list[dict[str, torch.Tensor]], reference: dict[str, torch.Tensor],
                 ) -> float:
    """Return the rms over all weights and chains of theta - theta_pretrained (weight units)."""
    total, count = 0.0, 0
    for sample in samples:
        for name, value in sample.items():
            total += float(((value.double() - reference[name].double()) ** 2).sum())
            count += value.numel()
    return math.sqrt(total / count)


@dataclass(frozen=True)
class Study:
    """What every setting of one invocation shares: the model, the frames and the offset.

    Attributes
    ----------
    adapter
        The pretrained CHGNet.
    args
        The command line (chains, labels, seeds, retries).
    labels_path
        ``labels.extxyz`` holding the training labels, first frame first.
    offset_eV
        c = E_pretrained - E_DFT of the first frame, eV.
    train, heldout
        Labelled training and held-out frames.
    """

    adapter: ModelAdapter
    args: argparse.Namespace
    labels_path: Path
    offset_eV: float
    train: list[Atoms]
    heldout: list[Atoms]

    def update_chains(self, setting: Setting, workdir: Path,
                      ) -> tuple[list[dict[str, torch.Tensor]] | None, list[dict], str | None]:
        """Run one update of every chain; return the samples (None if a chain diverged), the
        chains' update statistics and the divergence message."""
        args = self.args
        paths = init_chain_files(self.adapter, workdir, args.chains, args.seed, setting.config(),
                                 setting.sigma_tl)
        stats = []
        for k, path in enumerate(paths):
            job = ChainJob(index=k, chain_path=str(path), labels_path=str(self.labels_path),
                           n_labels=args.labels, model=SPEC, energy_offset_eV=self.offset_eV,
                           energy_sigma_eV=ENERGY_SIGMA_EV,
                           divergence_retries=args.divergence_retries)
            start = time.perf_counter()
            try:
                stats.append(update_chain_file(job))
            except SamplerDiverged as exc:
                stats.append({"chain": k, "wall_time_s": time.perf_counter() - start})
                return None, stats, str(exc)
        return load_samples(paths), stats, None

    def row(self, setting: Setting, workdir: Path) -> dict:
        """Run and evaluate one setting; return its row of the results."""
        samples, stats, diverged = self.update_chains(setting, workdir)
        attempts = [s.get("n_retries", self.args.divergence_retries) + 1 for s in stats]
        row = {
            **asdict(setting),
            "labels": self.args.labels,
            "chains": self.args.chains,
            "diverged": diverged,
            # a diverged attempt may stop early (checked every 100 steps): then a lower bound
            "seconds_per_chain_step": sum(s["wall_time_s"] for s in stats)
            / (setting.n_steps * sum(attempts)),
            "retries": [s.get("n_retries") for s in stats],
            "step_size_used": [s.get("step_size") for s in stats],
            "final_loss": [s.get("final_loss") for s in stats],
        }
        if samples is None:
            return row
        row["weight_rms_shift"] = weight_shift(samples, pretrained_sample(self.adapter))
        row["heldout"] = evaluate(self.adapter, samples, self.heldout, self.offset_eV)
        row["train"] = evaluate(self.adapter, samples, self.train, self.offset_eV)
        return row


HEADER = (f"{'steps':>5} {'gamma0':>7} {'sTL':>5} {'spread med':>10} {'spread max':>10} "
          f"{'std med':>8} {'mean e':>7} {'RMSE':>7} {'max|e|':>7} {'rms z':>6} {'>K':>5} {'F RMSE':>6} "
          f"{'trainE':>7} {'trainF':>6} {'dW rms':>8} {'s/step':>6}")


def format_row(row: dict) -> str:
    """One line of the printed table (energies in eV, forces in eV/Å)."""
    head = f"{row['n_steps']:>5} {row['step_size']:>7.0e} {row['sigma_tl']:>5}"
    if row["diverged"]:
        return f"{head}  DIVERGED: {row['diverged'][:80]}"
    h, t = row["heldout"], row["train"]
    return (f"{head} {h['spread_median_eV']:>10.5f} {h['spread_max_eV']:>10.5f} "
            f"{h['energy_std_median_eV']:>8.5f} {h['mean_error_eV']:>7.4f} {h['rmse_eV']:>7.4f} {h['max_abs_error_eV']:>7.4f} "
            f"{h['rms_z']:>6.1f} {h['fraction_above_K']:>5.2f} {h['force_rmse_eV_per_A']:>6.3f} "
            f"{t['rmse_eV']:>7.4f} {t['force_rmse_eV_per_A']:>6.3f} {row['weight_rms_shift']:>8.2e} "
            f"{row['seconds_per_chain_step']:>6.3f}")


def main() -> None:
    """Label the frames, run the grid, print the table and write the JSON."""
    args = parse_args()
    torch.set_num_threads(1)
    adapter = load_adapter(SPEC)
    train_steps, heldout_steps = frame_steps(args.labels, args.frames, args.interval)
    frames = labelled_frames(md_frames(adapter, train_steps + heldout_steps, args.md_seed),
                             args.cache)
    train = [frames[s] for s in train_steps]
    heldout = [frames[s] for s in heldout_steps]
    pretrained = EnsembleCalculator(adapter, [pretrained_sample(adapter)], ENERGY_SIGMA_EV)
    offset_eV = pretrained.get_potential_energy(train[0].copy()) - train[0].get_potential_energy()
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads "
                   f"{torch.get_num_threads()}",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train_md_steps": train_steps,
        "heldout_md_steps": heldout_steps,
        "energy_offset_eV": offset_eV,
        "pretrained": {"heldout": evaluate(adapter, [pretrained_sample(adapter)], heldout, offset_eV),
                       "train": evaluate(adapter, [pretrained_sample(adapter)], train, offset_eV)},
        "rows": [],
    }
    p = results["pretrained"]
    print(f"pretrained: held-out mean e {p['heldout']['mean_error_eV']:.4f} eV, RMSE "
          f"{p['heldout']['rmse_eV']:.4f} eV, max |e| "
          f"{p['heldout']['max_abs_error_eV']:.4f} eV, force RMSE "
          f"{p['heldout']['force_rmse_eV_per_A']:.3f} eV/A; train force RMSE "
          f"{p['train']['force_rmse_eV_per_A']:.3f} eV/A")
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="study_spread_") as tmp:
        labels_path = Path(tmp) / "labels.extxyz"
        dataset = LabelledDataset(labels_path)
        for atoms in train:
            dataset.append(atoms)
        study = Study(adapter, args, labels_path, offset_eV, train, heldout)
        grid = itertools.product(args.n_steps, args.step_size, args.sigma_tl)
        for index, (n_steps, step_size, sigma_tl) in enumerate(grid):
            setting = Setting(n_steps, step_size, sigma_tl)
            row = study.row(setting, Path(tmp) / f"chains_{index}")
            results["rows"].append(row)
            print(format_row(row), flush=True)
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
