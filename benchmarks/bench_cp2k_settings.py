"""Which CP2K setting labels a structure fast enough, and how far from the converged one?

Labels one structure (default: the 20-atom LaMnO3 Pbnm cell of ``workflows/lamno3``) with the
labeller options of ``--yaml`` (default: ``workflows/lamno3/run_small.yaml``) changed by each
named variant, one variant after the other, each from CP2K's atomic guess in its own
directory. Prints per variant the wall time, the SCF steps CP2K took, and the differences of
energy, forces and stress to the first variant (the reference), with the reference's force RMS.
A variant whose SCF does not converge is reported as such. Usage::

    python benchmarks/bench_cp2k_settings.py --variants ot-1e-6 ot-1e-5 smear500-1e-5 \\
        smear500-250Ry-1e-5

Needs CP2K (``apt-get install cp2k``); minutes per variant (the LaMnO3 cell: 3-14 min on 2
cores). To test an SCF on a structure away from the start (where a setting may diverge), give
``--structure`` a frame of a run, e.g. ``runs/lamno3_small/labels.extxyz@1``, and
``--max-scf`` to bound a diverging SCF. ``--reference FILE@INDEX`` compares every variant
with a stored label of the same structure instead of the first variant (the first label of a
run of ``run_small.yaml``, ``runs/lamno3_small/labels.extxyz@0``, is the converged OT one).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
from ase.units import GPa

from otfparsl.errors import LabelingFailed
from otfparsl.labelers.cp2k import CP2KLabeler
from otfparsl.settings import RunSettings

ROOT = Path(__file__).parents[1]

#: Named changes of the labeller options (applied over the YAML's).
VARIANTS: dict[str, dict] = {
    "ot-1e-6": {"eps_scf": 1e-6, "smearing_K": None},
    "ot-1e-5": {"eps_scf": 1e-5, "smearing_K": None},
    "smear500-1e-5": {"eps_scf": 1e-5, "smearing_K": 500},
    "smear500-250Ry-1e-5": {"eps_scf": 1e-5, "smearing_K": 500, "cutoff_Ry": 250},
    "smear500-broyden0.05-1e-5": {"eps_scf": 1e-5, "smearing_K": 500, "mixing_alpha": 0.05},
    "smear500-pulay0.1-1e-5": {"eps_scf": 1e-5, "smearing_K": 500, "mixing": "pulay", "mixing_alpha": 0.1},
    # Cheaper grids (where a GPW step of this cell spends its time), with one OT cycle of 200
    # steps, or with OT restarted every 25 steps (the committed setting):
    "ot-1e-6-rel30-epsdef1e-8": {"eps_scf": 1e-6, "smearing_K": None, "rel_cutoff_Ry": 30,
                                 "eps_default": 1e-8, "max_scf": 200},
    "ot-1e-6-rel30-epsdef1e-8-inner25": {"eps_scf": 1e-6, "smearing_K": None, "rel_cutoff_Ry": 30,
                                         "eps_default": 1e-8, "max_scf": 25, "max_outer_scf": 20},
}


def _read(spec: str):
    path, _, index = spec.partition("@")
    return ase.io.read(path, int(index or 0))


def _scf_steps(out: Path) -> int:
    text = out.read_text()
    return len(re.findall(r"^\s+\d+\s+(?:OT \w+|[\w.]+/Diag\.)\s", text, re.M))


def label_variant(options: dict, atoms, directory: Path) -> dict:
    """Label ``atoms`` with ``options`` in ``directory``; wall time, SCF steps, results."""
    directory.mkdir(parents=True)
    start = time.perf_counter()
    try:
        out = CP2KLabeler(**{**options, "scf_guess": "atomic"}).label(atoms.copy(), directory)
    except LabelingFailed as exc:
        return {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
                "wall_s": time.perf_counter() - start, "scf_steps": _scf_steps(directory / "cp2k.out")}  # fmt: skip
    return {
        "wall_s": time.perf_counter() - start, "scf_steps": _scf_steps(directory / "cp2k.out"),
        "energy": out.get_potential_energy(), "forces": out.get_forces(), "stress": out.get_stress(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--yaml", default=str(ROOT / "workflows/lamno3/run_small.yaml"))
    parser.add_argument("--structure", default=None, help="FILE[@INDEX]; default: the YAML's")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--workdir", default=None, help="keep the CP2K directories here")
    parser.add_argument("--max-scf", type=int, default=None, help="SCF step limit (default: YAML's)")
    parser.add_argument(
        "--reference", default=None,
        help="FILE[@INDEX] of a stored label of the same structure (e.g. a run's labels.extxyz@0) "
        "to compare every variant with, instead of the first variant",
    )  # fmt: skip
    args = parser.parse_args()
    settings = RunSettings.from_yaml(args.yaml).resolve_paths(Path(args.yaml).parent)
    atoms = _read(args.structure) if args.structure else ase.io.read(settings.structure)
    base = dict(settings.labeler.options)
    if args.max_scf:
        base["max_scf"] = args.max_scf
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_cp2k_"))
    print(f"{len(atoms)} atoms ({atoms.get_chemical_formula()}); CP2K directories in {root}")
    print("| variant | wall s | SCF steps | energy - ref eV | max force diff eV/Å | max stress diff GPa |")
    print("|---|---|---|---|---|---|")
    ref = None
    if args.reference:
        stored = _read(args.reference)
        if not np.allclose(stored.positions, atoms.positions, atol=1e-6):
            parser.error(f"--reference {args.reference} holds another structure than the one labelled")
        ref = {"energy": stored.get_potential_energy(), "forces": stored.get_forces(),
               "stress": stored.get_stress()}  # fmt: skip
        rms = float(np.sqrt((ref["forces"] ** 2).mean()))
        print(f"| {args.reference} (reference; force RMS {rms:.3f} eV/Å) | | | 0 | 0 | 0 |")
    for name in args.variants:
        result = label_variant({**base, **VARIANTS[name]}, atoms, root / name)
        if "failed" in result:
            print(f"| {name} | {result['wall_s']:.0f} | {result['scf_steps']} | {result['failed']} | | |")
            continue
        if ref is None:
            ref = result
            rms = float(np.sqrt((ref["forces"] ** 2).mean()))
            print(f"| {name} (reference; force RMS {rms:.3f} eV/Å) | {result['wall_s']:.0f} | "
                  f"{result['scf_steps']} | 0 | 0 | 0 |")  # fmt: skip
            continue
        de = result["energy"] - ref["energy"]
        df = float(np.abs(result["forces"] - ref["forces"]).max())
        ds = float(np.abs(result["stress"] - ref["stress"]).max() / GPa)
        print(f"| {name} | {result['wall_s']:.0f} | {result['scf_steps']} | {de:+.4f} | {df:.3f} | {ds:.2f} |")
    print(json.dumps({"variants": args.variants, "options": {n: VARIANTS[n] for n in args.variants}}))


if __name__ == "__main__":
    main()
