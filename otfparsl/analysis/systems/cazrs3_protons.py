"""CaZrS3 with interstitial protons: proton jumps between S atoms, DFT calls near them, proton MSD.

Method.md section 7 (the paper's CaZrS3 runs): DFT calls were 56 % more frequent within 15 fs of
a proton jump (p = 0.0012), and the proton mean squared displacement of production runs.

- **Host S of a proton**: per trajectory frame, the S atom nearest to each H (minimum image of
  the periodic cell).
- **Jump** (dwell-time hysteresis): a change of the nearest S counts only when the proton stays
  nearest to the new S for at least ``min_dwell_fs`` (default 30 fs, a few S-H stretch periods
  of about 13 fs): the time between the first and the last frame of that uninterrupted stretch
  is at least ``min_dwell_fs``. A proton rattling across the midpoint of an S-H...S bridge and
  back in less time is not a jump; a stretch still too short when the trajectory ends is
  reported as ``pending`` only. The jump time is that of the first frame nearest to the new S.
- **S-S distance before a jump**: the minimum-image distance between the old and the new host S
  in the frame just before the jump frame.
- **DFT calls near jumps**: :func:`otfparsl.analysis.events.window_rate_test` with a window of
  15 fs around each jump time (Fisher's exact test, one-sided) on walker 0's MD steps.
- **Proton MSD**: :mod:`otfparsl.analysis.msd` on the final stretch of frames with a constant
  frame interval (the NVE segment of the workflow's Langevin -> NVE programme), for the
  on-the-fly run and for every production run under ``RUN_DIR/md/*/`` (``otfparsl md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.geometry import get_distances

from otfparsl.analysis.events import window_rate_test
from otfparsl.analysis.msd import diffusion_coefficient, msd, unwrapped_positions
from otfparsl.analysis.systems import SystemAnalysis
from otfparsl.analysis.systems._series import RunSeries
from otfparsl.errors import ConfigurationError
from otfparsl.run.directory import RunDirectory

#: Half-width of the window around a jump, fs (the paper's).
WINDOW_FS = 15.0
#: Least time a proton must stay nearest to a new S for the change to count as a jump, fs.
MIN_DWELL_FS = 30.0


@dataclass(frozen=True)
class Jump:
    """One proton jump: when, which proton (atom index), from and to which S, S-S distance (Å)."""

    frame: int
    time_fs: float
    proton: int
    from_s: int
    to_s: int
    s_s_distance_A: float


def proton_and_sulfur_indices(atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """Atom indices of the H and of the S atoms; raise unless both are present."""
    symbols = np.array(atoms.get_chemical_symbols())
    protons, sulfurs = np.flatnonzero(symbols == "H"), np.flatnonzero(symbols == "S")
    if protons.size == 0 or sulfurs.size < 2:
        raise ConfigurationError(
            f"the proton analysis needs H atoms and at least two S atoms; got {atoms.get_chemical_formula()}. "
            "Use analyses: [cazrs3_protons] only for runs with protons in a sulfide"
        )
    return protons, sulfurs


def nearest_sulfur(frames: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest S of every proton in every frame (minimum image).

    Returns
    -------
    indices : numpy.ndarray
        ``(n_frames, n_protons)`` atom index of the nearest S.
    distances_A : numpy.ndarray
        ``(n_frames, n_protons)`` H-S distance to it, Å.
    """
    protons, sulfurs = proton_and_sulfur_indices(frames[0])
    indices = np.empty((len(frames), protons.size), dtype=int)
    distances = np.empty((len(frames), protons.size))
    for k, frame in enumerate(frames):
        _, dist = get_distances(
            frame.positions[protons], frame.positions[sulfurs], cell=frame.cell, pbc=frame.pbc
        )
        nearest = np.argmin(dist, axis=1)
        indices[k] = sulfurs[nearest]
        distances[k] = dist[np.arange(protons.size), nearest]
    return indices, distances


def host_changes(
    hosts: np.ndarray, times_fs: np.ndarray, min_dwell_fs: float
) -> tuple[list[tuple[int, int, int]], int]:
    """Jumps of one proton from its nearest-S sequence, with dwell-time hysteresis.

    Parameters
    ----------
    hosts
        ``(n_frames,)`` index of the nearest S per frame.
    times_fs
        ``(n_frames,)`` frame times, fs.
    min_dwell_fs
        Least duration of an uninterrupted stretch nearest to a new S, fs.

    Returns
    -------
    list of (frame, from_s, to_s), and 1 if a stretch nearest to a new S was still too short at
    the end of the trajectory (pending), else 0.
    """
    state, k, n = int(hosts[0]), 1, len(hosts)
    found: list[tuple[int, int, int]] = []
    while k < n:
        if hosts[k] == state:
            k += 1
            continue
        last = k
        while last + 1 < n and hosts[last + 1] == hosts[k]:
            last += 1
        if times_fs[last] - times_fs[k] >= min_dwell_fs:
            found.append((k, state, int(hosts[k])))
            state = int(hosts[k])
        elif last == n - 1:
            return found, 1
        k = last + 1
    return found, 0


def detect_jumps(
    frames: Sequence[Atoms],
    times_fs: np.ndarray,
    min_dwell_fs: float = MIN_DWELL_FS,
    hosts: np.ndarray | None = None,
) -> tuple[list[Jump], int]:
    """All proton jumps of a trajectory in time order, and the number of pending host changes.

    ``hosts`` (``(n_frames, n_protons)`` nearest-S indices of :func:`nearest_sulfur`) is computed
    when not given.
    """
    protons, _ = proton_and_sulfur_indices(frames[0])
    hosts = nearest_sulfur(frames)[0] if hosts is None else hosts
    jumps, pending = [], 0
    for column, proton in enumerate(protons):
        changes, open_end = host_changes(hosts[:, column], times_fs, min_dwell_fs)
        pending += open_end
        for k, old, new in changes:
            distance = float(frames[k - 1].get_distance(old, new, mic=True))
            jumps.append(Jump(k, float(times_fs[k]), int(proton), old, new, distance))
    return sorted(jumps, key=lambda j: (j.time_fs, j.proton)), pending


def final_uniform_stretch(times_fs: np.ndarray, rtol: float = 1e-6) -> int:
    """Index of the first frame of the final stretch of frames with a constant interval."""
    if len(times_fs) < 3:
        return 0
    steps = np.diff(times_fs)
    changed = np.flatnonzero(~np.isclose(steps, steps[-1], rtol=rtol, atol=1e-9))
    return int(changed[-1] + 1) if changed.size else 0


def proton_msd(frames: Sequence[Atoms], times_fs: np.ndarray) -> dict:
    """Proton MSD (Å^2) over the final constant-interval stretch, and its Einstein fit (D)."""
    start = final_uniform_stretch(times_fs)
    frames, times = list(frames[start:]), np.asarray(times_fs[start:])
    if len(frames) < 4:
        return {
            "n_frames": len(frames),
            "from_fs": None,
            "lag_fs": [],
            "msd_A2": [],
            "D_A2_per_fs": None,
            "D_cm2_per_s": None,
        }
    protons, _ = proton_and_sulfur_indices(frames[0])
    curve = msd(unwrapped_positions(frames), protons)
    lags = np.arange(len(curve)) * float(times[1] - times[0])
    fit = {
        k: (v if np.isfinite(v) else None) for k, v in diffusion_coefficient(lags, curve).items()
    }  # JSON: no NaN
    return {
        "n_frames": len(frames),
        "from_fs": float(times[0]),
        "lag_fs": lags.tolist(),
        "msd_A2": curve.tolist(),
        **fit,
    }


def _production_runs(rd: RunDirectory, min_dwell_fs: float) -> list[dict]:
    """Proton MSD and jump count of every production run under ``RUN_DIR/md/*/``."""
    out = []
    for path in sorted(rd.production.glob("*/trajectory.extxyz")) if rd.production.is_dir() else []:
        frames = list(ase.io.read(path, index=":", format="extxyz"))
        if len(frames) < 2:
            continue
        times = np.array([f.info["time_fs"] for f in frames], dtype=float)
        jumps, _ = detect_jumps(frames, times, min_dwell_fs)
        out.append(
            {
                "run": str(Path(path).parent.name),
                "n_jumps": len(jumps),
                "msd": proton_msd(frames, times),
            }
        )
    return out


def analyse(
    rd: RunDirectory, window_fs: float = WINDOW_FS, min_dwell_fs: float = MIN_DWELL_FS
) -> tuple[dict, object]:
    """Jumps, S-S distances before them, DFT calls near them (Fisher), proton MSD; and a figure."""
    series = RunSeries.read(rd)
    hosts, _ = nearest_sulfur(series.frames)
    jumps, pending = detect_jumps(series.frames, series.frame_time_fs, min_dwell_fs, hosts)
    test = window_rate_test(
        series.step_time_fs, series.called, [j.time_fs for j in jumps], window_fs
    )
    result = {
        "analysis": "cazrs3_protons", "n_frames": len(series.frames),
        "frame_interval_fs": float(np.median(np.diff(series.frame_time_fs))) if len(series.frames) > 1 else None,
        "min_dwell_fs": min_dwell_fs, "hysteresis": "dwell time: the new nearest S must hold for min_dwell_fs",
        "n_dft_calls": int(series.called.sum()), "n_jumps": len(jumps), "pending_host_changes": pending,
        "jumps": [asdict(j) for j in jumps], "dft_calls_near_jumps": test,
        "proton_msd": proton_msd(series.frames, series.frame_time_fs),
        "production_runs": _production_runs(rd, min_dwell_fs),
    }  # fmt: skip
    return result, _figure(series, hosts, jumps, result, window_fs)


def _figure(
    series: RunSeries, hosts: np.ndarray, jumps: list[Jump], result: dict, window_fs: float
) -> object:
    import matplotlib.pyplot as plt

    fig, (ax_d, ax_m) = plt.subplots(
        2, 1, figsize=(8.5, 6.5), gridspec_kw={"height_ratios": [3, 2]}
    )
    t_ps = series.frame_time_fs / 1000.0
    protons, _ = proton_and_sulfur_indices(series.frames[0])
    for column, proton in enumerate(protons):
        ax_d.step(t_ps, hosts[:, column], where="post", lw=0.8, label=f"H {proton}: nearest S")
    for k, jump in enumerate(jumps):
        ax_d.axvspan((jump.time_fs - window_fs) / 1000, (jump.time_fs + window_fs) / 1000, color="tab:purple",
                     alpha=0.25, label=f"jump ± {window_fs:g} fs" if k == 0 else None)  # fmt: skip
    low, high = float(hosts.min()), float(hosts.max())
    pad = max(1.0, 0.05 * (high - low))
    ax_d.vlines(
        series.call_times_fs / 1000.0, high + pad, high + 2 * pad, color="tab:red", label="DFT call"
    )
    ax_d.set(xlabel="time (ps)", ylabel="nearest S (atom index)", title=_title(result, window_fs))
    ax_d.legend(loc="lower right", fontsize=7)
    curves = [("on-the-fly run", result["proton_msd"])] + [
        (p["run"], p["msd"]) for p in result["production_runs"]
    ]
    for name, curve in curves:
        if curve["lag_fs"]:
            d = curve["D_cm2_per_s"]
            ax_m.plot(np.array(curve["lag_fs"]) / 1000, curve["msd_A2"], lw=0.9,
                      label=f"{name}: D = {d:.2e} cm²/s" if d is not None and np.isfinite(d) else name)  # fmt: skip
    ax_m.set(xlabel="lag (ps)", ylabel="proton MSD (Å²)")
    if ax_m.lines:
        ax_m.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _title(result: dict, window_fs: float) -> str:
    test = result["dft_calls_near_jumps"]
    if not result["n_jumps"]:
        return f"no proton jump (dwell >= {result['min_dwell_fs']:g} fs) in this run: nothing to compare"
    p = "n/a" if test["p_value"] is None else f"{test['p_value']:.3g}"
    ratio = "n/a" if test["rate_ratio"] is None else f"{test['rate_ratio']:.2f}x"
    return (
        f"{result['n_jumps']} jumps; DFT calls {test['calls_inside']}/{test['steps_inside']} steps within "
        f"{window_fs:g} fs vs {test['calls_outside']}/{test['steps_outside']} elsewhere ({ratio}, p = {p})"
    )


ANALYSIS = SystemAnalysis(
    name="cazrs3_protons", run=analyse,
    summary="Protons in CaZrS3: jumps between S (S-S distance before each), DFT-call rate within 15 fs of jumps (Fisher exact), proton MSD",
)  # fmt: skip
