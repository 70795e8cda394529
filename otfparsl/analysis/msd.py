"""Mean squared displacement of MD trajectories (proton MSD of the paper's production runs).

Positions are unwrapped across periodic boundaries frame by frame (the minimum-image step
between consecutive frames), so frames must be close enough in time that no atom moves more
than half a cell between two of them. The MSD at lag tau averages over every time origin,

    MSD(tau) = < |r_i(t + tau) - r_i(t)|^2 >_{i in species, t},

and the diffusion coefficient is read off the Einstein relation MSD = 6 D tau by a
least-squares line through the second half of the lags (the ballistic start left out).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

#: 1 Å^2/fs in cm^2/s.
A2_PER_FS_IN_CM2_PER_S = 1e-16 / 1e-15


def unwrapped_positions(frames: Sequence[Atoms]) -> np.ndarray:
    """Return ``(n_frames, n_atoms, 3)`` Cartesian positions (Å) unwrapped across the cell."""
    positions = np.array([f.positions for f in frames], dtype=float)
    if not np.any(frames[0].pbc) or len(frames) < 2:
        return positions
    out = positions.copy()
    for k in range(1, len(frames)):
        cell = frames[k].cell
        step = positions[k] - positions[k - 1]
        frac = np.linalg.solve(cell.array.T, step.T).T
        frac -= np.round(frac) * frames[k].pbc
        out[k] = out[k - 1] + frac @ cell.array
    return out


def msd(positions: np.ndarray, indices: Sequence[int], max_lag: int | None = None) -> np.ndarray:
    """Return MSD(lag) in Å^2 for lags 0..max_lag (frames), averaged over atoms and origins.

    Parameters
    ----------
    positions
        ``(n_frames, n_atoms, 3)`` unwrapped positions, Å.
    indices
        The atoms to average over.
    max_lag
        Largest lag in frames; default half the trajectory.
    """
    sel = positions[:, list(indices), :]
    n_frames = len(sel)
    max_lag = max(n_frames // 2, 1) if max_lag is None else max_lag
    out = np.zeros(max_lag + 1)
    for lag in range(1, max_lag + 1):
        diff = sel[lag:] - sel[:-lag]
        out[lag] = float(np.mean(np.sum(diff**2, axis=-1)))
    return out


def diffusion_coefficient(lags_fs: np.ndarray, msd_A2: np.ndarray) -> dict[str, float]:
    """Fit MSD = 6 D tau + c on the second half of the lags; D in Å^2/fs and cm^2/s."""
    half = len(lags_fs) // 2
    if len(lags_fs) - half < 2:
        return {"D_A2_per_fs": float("nan"), "D_cm2_per_s": float("nan"), "fit_from_fs": float("nan"), "fit_to_fs": float("nan")}
    slope, _ = np.polyfit(lags_fs[half:], msd_A2[half:], 1)
    d = float(slope / 6.0)
    return {"D_A2_per_fs": d, "D_cm2_per_s": d * A2_PER_FS_IN_CM2_PER_S,
            "fit_from_fs": float(lags_fs[half]), "fit_to_fs": float(lags_fs[-1])}  # fmt: skip


def msd_by_element(frames: Sequence[Atoms], frame_interval_fs: float) -> dict[str, dict]:
    """MSD per element of one trajectory: lags (fs), MSD (Å^2) and the diffusion fit."""
    positions = unwrapped_positions(frames)
    symbols = np.array(frames[0].get_chemical_symbols())
    out = {}
    for symbol in sorted(set(symbols)):
        curve = msd(positions, np.flatnonzero(symbols == symbol))
        lags = np.arange(len(curve)) * frame_interval_fs
        out[symbol] = {"lag_fs": lags.tolist(), "msd_A2": curve.tolist(), **diffusion_coefficient(lags, curve)}
    return out
