"""The contract checks of otfparsl.testing catch broken adapters (they must not pass vacuously)."""

from __future__ import annotations

import pytest
import torch

from otfparsl.bayes.types import Prediction
from otfparsl.testing import (
    check_batched_equals_single,
    check_forces_are_gradient,
    check_rotation_invariance_of_features,
    check_stress_is_strain_derivative,
)


class _Broken(torch.nn.Module):
    """Wrap a core and corrupt one output."""

    def __init__(self, core, how):
        super().__init__()
        self.inner, self.how = core, how

    def forward(self, inputs, compute_stress=False, training=False):
        p = self.inner(inputs, compute_stress=compute_stress, training=training)
        if self.how == "forces":
            return Prediction(p.energy, 1.01 * p.forces, p.stress, p.features)
        if self.how == "stress":
            stress = None if p.stress is None else -p.stress
            return Prediction(p.energy, p.forces, stress, p.features)
        if self.how == "features":  # positions are not rotation invariant
            feats = torch.cat([p.features, inputs["positions"]], dim=1)
            return Prediction(p.energy, p.forces, p.stress, feats)
        # "batch": energy depends on the position of a structure in the batch
        shift = torch.arange(p.energy.shape[0], dtype=p.energy.dtype)
        return Prediction(p.energy + 1e-3 * shift, p.forces, p.stress, p.features)


class _Adapter:
    def __init__(self, adapter, how):
        self.inner = adapter
        self.core = _Broken(adapter.core, how)

    def prepare(self, atoms):
        return self.inner.prepare(atoms)

    def collate(self, items):
        return self.inner.collate(items)


def test_correct_adapter_passes(tiny_mace_adapter, water, al_cell):
    assert check_forces_are_gradient(tiny_mace_adapter, water, tol=1e-7) < 1e-7
    assert check_stress_is_strain_derivative(tiny_mace_adapter, al_cell, tol=1e-8) < 1e-8


@pytest.mark.parametrize("how", ["forces", "stress", "features", "batch"])
def test_broken_adapter_is_caught(tiny_mace_adapter, water, al_cell, cu_cell, how):
    broken = _Adapter(tiny_mace_adapter, how)
    with pytest.raises(AssertionError):
        if how == "forces":
            check_forces_are_gradient(broken, water, tol=1e-6)
        elif how == "stress":
            check_stress_is_strain_derivative(broken, al_cell, tol=1e-6)
        elif how == "features":
            check_rotation_invariance_of_features(broken, water, tol=1e-6)
        else:
            check_batched_equals_single(broken, [cu_cell, al_cell], tol=1e-8)
