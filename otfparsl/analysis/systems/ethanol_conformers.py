"""Ethanol: conformers of the H-O-C-C dihedral, their transitions, and DFT calls around them.

Method.md section 7 (the paper's ethanol run): rare conformer transitions are labelled more
often than they occur. The hydroxyl torsion H-O-C-C defines three conformers: anti (phi near
180 deg), gauche+ (near +60 deg) and gauche- (near -60 deg). A frame is assigned to a conformer
when it is inside that conformer's core (anti |phi| >= 150 deg, gauche 30 <= |phi| <= 90 deg,
with the sign of phi); between cores it keeps the last conformer (a transition-based
assignment, so recrossings of a barrier do not count as transitions). A transition is the first
frame in the core of a new conformer. DFT calls within ``WINDOW_FS`` of a transition are
compared with the others by Fisher's exact test (:mod:`otfparsl.analysis.events`).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from otfparsl.analysis.events import window_rate_test
from otfparsl.analysis.systems import SystemAnalysis
from otfparsl.analysis.systems._series import RunSeries
from otfparsl.errors import ConfigurationError
from otfparsl.run.directory import RunDirectory

#: Half-width of the window around a transition, fs (the paper's window for proton jumps).
WINDOW_FS = 15.0
CONFORMERS = ("anti", "gauche+", "gauche-")


def torsion_atoms(atoms: Atoms) -> tuple[int, int, int, int]:
    """Indices (H, O, C1, C2) of ethanol's hydroxyl torsion, found by distances."""
    symbols = np.array(atoms.get_chemical_symbols())
    oxygens, carbons, hydrogens = (np.flatnonzero(symbols == s) for s in ("O", "C", "H"))
    if len(oxygens) != 1 or len(carbons) != 2:
        raise ConfigurationError(
            f"the ethanol analysis needs C2H6O (one O, two C); got {atoms.get_chemical_formula()}"
        )
    o = int(oxygens[0])
    dist = atoms.get_distances(o, range(len(atoms)))
    h = int(hydrogens[np.argmin(dist[hydrogens])])
    c1 = int(carbons[np.argmin(dist[carbons])])
    c2 = int(carbons[carbons != c1][0])
    return h, o, c1, c2


def dihedrals_deg(frames: list[Atoms]) -> np.ndarray:
    """H-O-C-C dihedral of every frame, degrees in (-180, 180]."""
    h, o, c1, c2 = torsion_atoms(frames[0])
    phi = np.array([f.get_dihedral(h, o, c1, c2) for f in frames])
    return np.where(phi > 180.0, phi - 360.0, phi)


def core(phi_deg: float) -> str | None:
    """The conformer whose core holds ``phi_deg``, or None between cores."""
    if abs(phi_deg) >= 150.0:
        return "anti"
    if 30.0 <= abs(phi_deg) <= 90.0:
        return "gauche+" if phi_deg > 0 else "gauche-"
    return None


def assign(phi_deg: np.ndarray) -> list[str]:
    """Transition-based conformer of every frame (the first frame: its nearest conformer)."""
    nearest = {"anti": 180.0, "gauche+": 60.0, "gauche-": -60.0}
    state = min(nearest, key=lambda c: abs((phi_deg[0] - nearest[c] + 180.0) % 360.0 - 180.0))
    out = []
    for phi in phi_deg:
        state = core(phi) or state
        out.append(state)
    return out


def analyse(rd: RunDirectory, window_fs: float = WINDOW_FS) -> tuple[dict, object]:
    """Conformer populations, transitions, and the DFT-call rate test around transitions."""
    import matplotlib.pyplot as plt

    series = RunSeries.read(rd)
    phi = dihedrals_deg(series.frames)
    states = assign(phi)
    changes = [k for k in range(1, len(states)) if states[k] != states[k - 1]]
    transitions = [{"time_fs": float(series.frame_time_fs[k]), "from": states[k - 1], "to": states[k]} for k in changes]
    test = window_rate_test(series.step_time_fs, series.called, [t["time_fs"] for t in transitions], window_fs)
    result = {
        "analysis": "ethanol_conformers", "n_frames": len(states),
        "frame_interval_fs": float(np.median(np.diff(series.frame_time_fs))) if len(states) > 1 else None,
        "populations": {c: states.count(c) / len(states) for c in CONFORMERS},
        "transitions": transitions, "dft_calls_near_transitions": test,
    }  # fmt: skip
    fig, (ax, rug) = plt.subplots(2, 1, sharex=True, figsize=(8, 3.8), gridspec_kw={"height_ratios": [6, 1]})
    # 0-360 deg, so that anti (180) is one band in the middle, not split at +-180
    ax.plot(series.frame_time_fs, phi % 360.0, ".", ms=3, color="0.3", label="H-O-C-C dihedral")
    for lo, hi, color in ((150, 210, "tab:blue"), (30, 90, "tab:green"), (270, 330, "tab:orange")):
        ax.axhspan(lo, hi, color=color, alpha=0.12)
    for y, name in ((180, "anti"), (60, "gauche+"), (300, "gauche-")):
        ax.text(1.01, y / 360, name, transform=ax.transAxes, va="center", fontsize=8)
    for t in transitions:
        for axis in (ax, rug):
            axis.axvspan(t["time_fs"] - window_fs, t["time_fs"] + window_fs, color="tab:purple", alpha=0.15)
    rug.vlines(series.call_times_fs, 0, 1, color="tab:red")
    ax.set(ylabel="dihedral (deg)", ylim=(0, 360), yticks=range(0, 361, 60), title=_title(test, len(transitions)))
    rug.set(xlabel="time (fs)", ylim=(0, 1), yticks=[])
    rug.set_ylabel("DFT\ncalls", rotation=0, ha="right", va="center", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    return result, fig


def _title(test: dict, n_transitions: int) -> str:
    if not n_transitions:
        return "no conformer transition in this run: nothing to compare"
    p = "n/a" if test["p_value"] is None else f"{test['p_value']:.3g}"
    return (f"{n_transitions} transitions; DFT calls {test['calls_inside']}/{test['steps_inside']} steps within "
            f"{test['window_fs']:g} fs vs {test['calls_outside']}/{test['steps_outside']} elsewhere (p = {p})")


ANALYSIS = SystemAnalysis(
    name="ethanol_conformers", run=analyse,
    summary="H-O-C-C conformers (anti, gauche+/-), transitions, DFT-call rate near transitions (Fisher exact)",
)  # fmt: skip
