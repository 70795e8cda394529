"""Integration fixtures: a tiny MACE pre-fitted to EMT copper, saved as a .model file."""

from __future__ import annotations

import pytest
import torch

from otfparsl.models import load_adapter
from otfparsl.models.base import ModelSpec
from otfparsl.testing import emt_copper_frames, pretrain_on_reference


@pytest.fixture(scope="session")
def cu_foundation_model(tmp_path_factory) -> str:
    """Path of a tiny MACE fitted to EMT Cu (a small stand-in for a foundation model)."""
    adapter = load_adapter(ModelSpec(family="mace", source="tiny", dtype="float64", seed=0))
    rmse = pretrain_on_reference(adapter, emt_copper_frames(8), n_steps=200, learning_rate=5e-3)
    assert rmse < 0.2, f"pre-fit failed: force RMSE {rmse:.3f} eV/Å"
    path = tmp_path_factory.mktemp("foundation") / "cu_emt_tiny.model"
    torch.save(adapter.core.model, path)
    return str(path)
