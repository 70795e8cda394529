"""MSD and diffusion coefficient: a random walk of known D, unwrapped across periodic boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from otfparsl.analysis.msd import msd, msd_by_element, unwrapped_positions


def _random_walk(n_frames: int, n_atoms: int, d_A2_per_fs: float, dt_fs: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = rng.normal(scale=np.sqrt(2 * d_A2_per_fs * dt_fs), size=(n_frames - 1, n_atoms, 3))
    start = rng.uniform(0, 5, size=(1, n_atoms, 3))
    return np.concatenate([start, start + np.cumsum(steps, axis=0)])


def test_unwrapping_undoes_the_periodic_wrap_of_a_triclinic_cell():
    cell = np.array([[6.0, 0.0, 0.0], [1.5, 5.0, 0.0], [0.5, 0.7, 7.0]])
    true = _random_walk(300, 4, 0.05, 1.0, seed=1)  # steps ~0.3 Å, far below half a cell
    frames = [Atoms("H4", positions=p, cell=cell, pbc=True) for p in true]
    for frame in frames:
        frame.wrap()
    assert not np.allclose(frames[-1].positions, true[-1])  # the wrap moved atoms
    unwrapped = unwrapped_positions(frames)
    np.testing.assert_allclose(unwrapped - unwrapped[0], true - true[0], atol=1e-9)


def test_msd_of_a_random_walk_gives_its_diffusion_coefficient():
    d, dt = 0.02, 2.0
    positions = _random_walk(4000, 30, d, dt, seed=2)
    curve = msd(positions, range(30), max_lag=50)
    lags = np.arange(51) * dt
    assert curve[0] == 0.0
    np.testing.assert_allclose(curve[1:], 6 * d * lags[1:], rtol=0.05)  # MSD = 6 D t
    frames = [Atoms("H30", positions=p) for p in positions[:400]]
    fitted = msd_by_element(frames, dt)["H"]
    assert fitted["D_A2_per_fs"] == pytest.approx(d, rel=0.15)
    assert fitted["D_cm2_per_s"] == pytest.approx(fitted["D_A2_per_fs"] * 0.1)


def test_msd_is_per_element():
    positions = _random_walk(200, 4, 0.01, 1.0, seed=3)
    positions[:, 2:, :] = positions[0, 2:, :]  # the two O atoms stay put
    frames = [Atoms("H2O2", positions=p) for p in positions]
    result = msd_by_element(frames, 1.0)
    assert set(result) == {"H", "O"}
    assert max(result["O"]["msd_A2"]) == 0.0 and max(result["H"]["msd_A2"]) > 0.0
