"""Tiny MACE adapter: physics contracts (float64, tight tolerances), loading, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from otfparsl.errors import ConfigurationError, ModelError
from otfparsl.models import ModelAdapter, load_adapter
from otfparsl.models.base import ModelSpec
from otfparsl.testing import (
    check_batched_equals_single,
    check_forces_are_gradient,
    check_rotation_invariance_of_features,
    check_stress_is_strain_derivative,
    predict,
)


def test_is_a_model_adapter_with_invariant_features(tiny_mace_adapter):
    ad = tiny_mace_adapter
    assert isinstance(ad, ModelAdapter)
    # two interactions x 16 scalar channels (the l=0 part of node_feats)
    assert ad.n_features == 32
    assert ad.defaults.sigma_tl == 0.5


@pytest.mark.parametrize("name", ["ethanol", "cu_cell"])
def test_forces_are_minus_energy_gradient(tiny_mace_adapter, request, name):
    atoms = request.getfixturevalue(name)
    err = check_forces_are_gradient(tiny_mace_adapter, atoms, delta=1e-4, tol=1e-7)
    assert err < 1e-7


@pytest.mark.parametrize("name", ["cu_cell", "al_cell"])
def test_stress_is_strain_derivative(tiny_mace_adapter, request, name):
    atoms = request.getfixturevalue(name)
    check_stress_is_strain_derivative(tiny_mace_adapter, atoms, delta=1e-4, tol=1e-8)
    stress = predict(tiny_mace_adapter, [atoms], compute_stress=True).stress[0]
    assert float(stress.abs().max()) > 1e-5  # a non-trivial check


def test_batched_equals_single(tiny_mace_adapter, ethanol, cu_cell, al_cell, water):
    check_batched_equals_single(tiny_mace_adapter, [ethanol, cu_cell, water], tol=1e-10)
    check_batched_equals_single(tiny_mace_adapter, [cu_cell, al_cell], tol=1e-10)


@pytest.mark.parametrize("name", ["ethanol", "al_cell"])
def test_features_rotation_invariant(tiny_mace_adapter, request, name):
    atoms = request.getfixturevalue(name)
    check_rotation_invariance_of_features(tiny_mace_adapter, atoms, seed=3, tol=1e-9)


def _force_loss(adapter, batch, training=True):
    pred = adapter.core(batch.inputs, compute_stress=False, training=training)
    return (pred.forces ** 2).sum()


def test_training_force_loss_gradient_matches_finite_difference(tiny_mace_adapter, ethanol,
                                                                cu_cell):
    ad = tiny_mace_adapter
    batch = ad.collate([ad.prepare(ethanol), ad.prepare(cu_cell)])
    params = list(ad.core.parameters())
    loss = _force_loss(ad, batch)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert all(g is not None for g in grads)
    assert sum(int((g != 0).any()) for g in grads) >= 0.9 * len(params)
    # directional derivative vs finite differences in weight space
    gen = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=False))
    h, values = 1e-6, []
    with torch.no_grad():
        originals = [p.detach().clone() for p in params]
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, p0, d in zip(params, originals, direction, strict=False):
                p.copy_(p0 + sign * h * d)
        values.append(float(_force_loss(ad, batch, training=False)))
    with torch.no_grad():
        for p, p0 in zip(params, originals, strict=False):
            p.copy_(p0)
    numeric = (values[0] - values[1]) / (2 * h)
    assert abs(analytic - numeric) < 1e-5 * max(1.0, abs(numeric))


def test_inference_outputs_are_detached(tiny_mace_adapter, ethanol):
    pred = predict(tiny_mace_adapter, [ethanol])
    assert pred.energy.grad_fn is None and pred.forces.grad_fn is None


def test_stress_loss_with_molecule_in_batch_has_finite_gradients(tiny_mace_adapter, ethanol,
                                                                 cu_cell):
    ad = tiny_mace_adapter
    batch = ad.collate([ad.prepare(ethanol), ad.prepare(cu_cell)])
    pred = ad.core(batch.inputs, compute_stress=True, training=True)
    assert torch.equal(pred.stress[0], torch.zeros(3, 3, dtype=torch.float64))
    grads = torch.autograd.grad((pred.stress ** 2).sum(), list(ad.core.parameters()),
                                allow_unused=True)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    assert any(g is not None and (g != 0).any() for g in grads)


def test_buffers_are_not_parameters(tiny_mace_adapter):
    names = [n for n, _ in tiny_mace_adapter.core.named_parameters()]
    buffers = [n for n, _ in tiny_mace_adapter.core.named_buffers()]
    assert any("atomic_energies" in n for n in buffers)
    assert any("scale_shift" in n for n in buffers)
    assert not any("atomic_energies" in n or "scale_shift" in n for n in names)


def test_weights_deterministic_in_seed(tiny_mace_spec, tiny_mace_adapter, ethanol):
    from dataclasses import replace

    again = load_adapter(tiny_mace_spec)
    other = load_adapter(replace(tiny_mace_spec, seed=1))
    e0 = float(predict(tiny_mace_adapter, [ethanol]).energy[0])
    assert float(predict(again, [ethanol]).energy[0]) == e0
    assert abs(float(predict(other, [ethanol]).energy[0]) - e0) > 1e-6


def test_model_file_roundtrip(tiny_mace_adapter, tmp_path, ethanol, cu_cell):
    path = tmp_path / "tiny.model"
    torch.save(tiny_mace_adapter.core.model, path)
    loaded = load_adapter(ModelSpec(family="mace", source=str(path), dtype="float64"))
    a = predict(tiny_mace_adapter, [ethanol, cu_cell])
    b = predict(loaded, [ethanol, cu_cell])
    assert torch.allclose(a.energy, b.energy, rtol=0, atol=1e-12)
    assert torch.allclose(a.forces, b.forces, rtol=0, atol=1e-12)
    assert torch.allclose(a.features, b.features, rtol=0, atol=1e-12)


def test_unknown_element_raises_model_error_naming_it(tiny_mace_adapter):
    atoms = Atoms("FeO", positions=[[0, 0, 0], [0, 0, 1.6]])
    with pytest.raises(ModelError, match="Fe"):
        tiny_mace_adapter.prepare(atoms)


def test_bad_source_and_dtype_raise_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="tiny"):
        load_adapter(ModelSpec(family="mace", source=str(tmp_path / "missing.model")))
    with pytest.raises(ConfigurationError, match="float64"):
        load_adapter(ModelSpec(family="mace", source="tiny", dtype="float16"))
    with pytest.raises(ConfigurationError, match="r_max"):
        load_adapter(ModelSpec(family="mace", source="tiny", options=(("rmax", 5.0),)))


def test_energy_is_extensive_for_separated_copies(tiny_mace_adapter, water):
    far = water.copy()
    far.translate([20.0, 0.0, 0.0])
    pair = water + far
    e_one = float(predict(tiny_mace_adapter, [water]).energy[0])
    e_two = float(predict(tiny_mace_adapter, [pair]).energy[0])
    assert np.isclose(e_two, 2 * e_one, rtol=0, atol=1e-10)
