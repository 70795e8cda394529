"""EnsembleCalculator: predictive mean and std of M samples, one neighbour list, cache."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase.stress import full_3x3_to_voigt_6_stress

from otfparsl.calculators.ensemble import EnsembleCalculator
from otfparsl.training import build_bayesian_model

ENERGY_SIGMA = 0.002


def _samples(adapter, n_members: int, scale: float = 0.02, seed: int = 0):
    """Weight samples: the pretrained weights moved by seeded Gaussian noise (head included)."""
    model = build_bayesian_model(adapter)
    base = model.trainable_state()
    gen = torch.Generator().manual_seed(seed)
    return [
        {k: v + scale * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in base.items()}
        for _ in range(n_members)
    ]


def _one_by_one(adapter, sample, atoms):
    """Predict with a private copy of the model holding ``sample`` (no functional_call)."""
    model = build_bayesian_model(adapter, copy.deepcopy(adapter.core))
    model.load_trainable_state(sample)
    batch = adapter.collate([adapter.prepare(atoms)])
    pred = model(batch, compute_stress=True, training=False)
    return (
        pred.energy.item(),
        pred.forces.detach().numpy(),
        pred.stress.detach().numpy()[0],
        pred.force_sigma.detach().numpy(),
    )


def test_members_equal_one_by_one_and_std_follows_method(tiny_mace_adapter, cu_cell):
    samples = _samples(tiny_mace_adapter, 3)
    calc = EnsembleCalculator(tiny_mace_adapter, samples, energy_sigma_eV=ENERGY_SIGMA)
    cu_cell.calc = calc
    energy = cu_cell.get_potential_energy()
    singles = [_one_by_one(tiny_mace_adapter, s, cu_cell) for s in samples]
    e = np.array([s[0] for s in singles])
    f = np.array([s[1] for s in singles])
    st = np.array([s[2] for s in singles])
    sig = np.array([s[3] for s in singles])
    np.testing.assert_allclose(calc.results["energy_members"], e, rtol=0, atol=1e-10)
    assert energy == pytest.approx(e.mean(), abs=1e-10)
    # default divisor M - 1, as the original's torch.var (method.md section 4)
    assert calc.results["energy_std"] == pytest.approx(np.sqrt(e.var(ddof=1) + ENERGY_SIGMA**2), rel=1e-10)
    np.testing.assert_allclose(cu_cell.get_forces(), f.mean(0), atol=1e-10)
    expected_fstd = np.sqrt(f.var(0, ddof=1) + (sig**2).mean(0)[:, None])
    np.testing.assert_allclose(calc.results["forces_std"], expected_fstd, rtol=1e-8)
    np.testing.assert_allclose(cu_cell.get_stress(), full_3x3_to_voigt_6_stress(st.mean(0)), atol=1e-10)
    assert e.std() > 1e-6  # the members really differ


def test_divisor_m_option(tiny_mace_adapter, cu_cell):
    samples = _samples(tiny_mace_adapter, 4)
    pop = EnsembleCalculator(tiny_mace_adapter, samples, energy_sigma_eV=ENERGY_SIGMA, variance_ddof=0)
    orig = EnsembleCalculator(tiny_mace_adapter, samples, energy_sigma_eV=ENERGY_SIGMA)
    pop.calculate(cu_cell.copy())
    orig.calculate(cu_cell.copy())
    e = pop.results["energy_members"]
    assert orig.results["energy_std"] ** 2 == pytest.approx(e.var(ddof=1) + ENERGY_SIGMA**2, rel=1e-10)
    assert orig.results["energy_std"] > pop.results["energy_std"]
    assert pop.results["energy_std"] ** 2 == pytest.approx(e.var(ddof=0) + ENERGY_SIGMA**2, rel=1e-10)


def test_neighbour_list_is_built_once_per_structure(tiny_mace_adapter, cu_cell, monkeypatch):
    calls = []
    original = tiny_mace_adapter.prepare
    monkeypatch.setattr(tiny_mace_adapter, "prepare", lambda atoms: calls.append(1) or original(atoms))
    calc = EnsembleCalculator(tiny_mace_adapter, _samples(tiny_mace_adapter, 5), energy_sigma_eV=ENERGY_SIGMA)
    cu_cell.calc = calc
    cu_cell.get_forces()
    assert len(calls) == 1


def test_results_are_recomputed_after_the_weights_change(tiny_mace_adapter, cu_cell):
    calc = EnsembleCalculator(tiny_mace_adapter, _samples(tiny_mace_adapter, 2, seed=1), energy_sigma_eV=ENERGY_SIGMA)
    cu_cell.calc = calc
    before = cu_cell.get_potential_energy()
    calc.set_samples(_samples(tiny_mace_adapter, 2, seed=2))
    after = cu_cell.get_potential_energy()
    assert after != pytest.approx(before, abs=1e-9)


def test_identical_members_have_only_the_noise_std(tiny_mace_adapter, ethanol):
    sample = _samples(tiny_mace_adapter, 1, scale=0.0)[0]
    calc = EnsembleCalculator(tiny_mace_adapter, [sample] * 3, energy_sigma_eV=ENERGY_SIGMA)
    ethanol.calc = calc
    ethanol.get_potential_energy()
    assert calc.results["energy_std"] == pytest.approx(ENERGY_SIGMA, rel=1e-12)
    assert "stress" not in calc.results  # a molecule has no stress
