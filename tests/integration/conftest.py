"""Integration fixtures: a tiny MACE pre-fitted to EMT copper, saved as a .model file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from otfparsl.models import load_adapter
from otfparsl.models.base import ModelSpec
from otfparsl.testing import pretrain_on_reference


def emt_copper_frames(n_frames: int = 16, seed: int = 0):
    """Rattled and strained 4-atom Cu cells labelled with EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.61 * (1 + rng.uniform(-0.03, 0.03)), cubic=True)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    return frames


@pytest.fixture(scope="session")
def cu_foundation_model(tmp_path_factory) -> str:
    """Path of a tiny MACE fitted to EMT Cu (a small stand-in for a foundation model)."""
    adapter = load_adapter(ModelSpec(family="mace", source="tiny", dtype="float64", seed=0))
    rmse = pretrain_on_reference(adapter, emt_copper_frames(8), n_steps=200, learning_rate=5e-3)
    assert rmse < 0.2, f"pre-fit failed: force RMSE {rmse:.3f} eV/Å"
    path = tmp_path_factory.mktemp("foundation") / "cu_emt_tiny.model"
    torch.save(adapter.core.model, path)
    return str(path)
