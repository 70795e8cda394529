"""CHGNet adapter (offline default foundation model): conventions, physics contracts, errors."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

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


@pytest.fixture(scope="module")
def chgnet32():
    """CHGNet 0.3.0 in its native float32."""
    return load_adapter(ModelSpec(family="chgnet", source="0.3.0", dtype="float32"))


@pytest.fixture(scope="module")
def chgnet64():
    """CHGNet 0.3.0 cast to float64, for tight finite-difference checks."""
    return load_adapter(ModelSpec(family="chgnet", source="0.3.0", dtype="float64"))


@pytest.fixture
def si() -> Atoms:
    return bulk("Si", "diamond", a=5.43)


@pytest.fixture
def si_rattled() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(stdev=0.05, seed=4)
    return atoms


def test_loads_offline_without_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during CHGNet load")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    adapter = load_adapter(ModelSpec(family="chgnet", source="0.3.0", dtype="float32"))
    assert isinstance(adapter, ModelAdapter)
    assert adapter.n_features == 64
    # sampled weights: the graph network only (composition model and magmom head excluded)
    names = [n for n, _ in adapter.core.named_parameters()]
    assert not any("composition_model" in n or "site_wise" in n for n in names)
    assert sum(p.numel() for p in adapter.core.parameters()) > 400_000


def test_si_diamond_energy_and_symmetric_forces(chgnet32, si, si_rattled):
    pred = predict(chgnet32, [si, si_rattled])
    per_atom = pred.energy / 2
    assert -5.6 < float(per_atom[0]) < -5.0  # CHGNet 0.3.0: about -5.31 eV/atom
    assert float(per_atom[1]) > float(per_atom[0])  # rattling costs energy
    assert float(pred.forces[:2].abs().max()) < 1e-4  # zero by symmetry
    assert float(pred.forces[2:].abs().max()) > 0.05
    assert float(pred.forces[2:].sum(0).abs().max()) < 1e-4  # translation invariance


def test_matches_chgnet_own_calculator(chgnet32, al_cell):
    from chgnet.model.dynamics import CHGNetCalculator

    atoms = al_cell.copy()
    atoms.calc = CHGNetCalculator(model=chgnet_model_for_calculator(), use_device="cpu")
    pred = predict(chgnet32, [al_cell], compute_stress=True)
    assert np.isclose(float(pred.energy[0]), atoms.get_potential_energy(), atol=1e-4)
    assert np.allclose(pred.forces.numpy(), atoms.get_forces(), atol=1e-5)
    assert np.allclose(pred.stress[0].numpy(), atoms.get_stress(voigt=False), atol=1e-6)


def chgnet_model_for_calculator():
    from otfparsl.models.chgnet import _load_chgnet

    return _load_chgnet("0.3.0")


@pytest.mark.parametrize("name", ["water", "si_rattled"])
def test_forces_are_minus_energy_gradient(chgnet64, request, name):
    atoms = request.getfixturevalue(name)
    check_forces_are_gradient(chgnet64, atoms, delta=1e-4, tol=1e-5)


def test_stress_is_strain_derivative_ase_sign(chgnet64, si_rattled, si):
    sheared = si_rattled.copy()
    sheared.set_cell(si_rattled.cell.array @ (np.eye(3) + [[0, 0.03, 0], [0, 0, 0], [0, 0, 0]]),
                     scale_atoms=True)
    check_stress_is_strain_derivative(chgnet64, sheared, delta=1e-4, tol=1e-6)
    compressed = si.copy()
    compressed.set_cell(si.cell * 0.97, scale_atoms=True)
    stress = predict(chgnet64, [compressed], compute_stress=True).stress[0]
    # ASE sign: a compressed crystal pushes outwards -> negative diagonal stress
    assert float(torch.diagonal(stress).max()) < -1e-3


def test_batched_equals_single(chgnet32, chgnet64, ethanol, si_rattled, si, water):
    check_batched_equals_single(chgnet32, [ethanol, si_rattled, water], tol=2e-4)
    check_batched_equals_single(chgnet64, [si_rattled, si], tol=1e-10)


@pytest.mark.parametrize("name", ["ethanol", "si_rattled"])
def test_features_rotation_invariant(chgnet64, request, name):
    atoms = request.getfixturevalue(name)
    check_rotation_invariance_of_features(chgnet64, atoms, seed=5, tol=1e-8)


def test_molecule_energy_rises_and_force_restores_when_ch_stretched(chgnet32, ethanol):
    carbon, hydrogen = 0, 6  # the methyl C and one of its H in ase's CH3CH2OH
    assert ethanol.get_distance(carbon, hydrogen) < 1.15
    stretched = ethanol.copy()
    bond = stretched.positions[hydrogen] - stretched.positions[carbon]
    stretched.positions[hydrogen] += 0.15 * bond / np.linalg.norm(bond)
    pred = predict(chgnet32, [ethanol, stretched])
    assert torch.isfinite(pred.energy).all()
    assert float(pred.energy[1] - pred.energy[0]) > 0.05
    f_h = pred.forces[len(ethanol) + hydrogen].numpy()
    assert float(f_h @ bond) < 0  # pulled back towards the carbon


def test_training_force_loss_gradient(chgnet64, si_rattled, ethanol):
    ad = chgnet64
    batch = ad.collate([ad.prepare(si_rattled), ad.prepare(ethanol)])
    params = list(ad.core.parameters())
    loss = (ad.core(batch.inputs, compute_stress=False, training=True).forces ** 2).sum()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    nonzero = sum(int(g is not None and bool((g != 0).any())) for g in grads)
    assert nonzero >= 0.8 * len(params)
    gen = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=False) if g is not None)
    originals = [p.detach().clone() for p in params]
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, p0, d in zip(params, originals, direction, strict=False):
                p.copy_(p0 + sign * 1e-6 * d)
        values.append(float((ad.core(batch.inputs, training=False).forces ** 2).sum()))
    with torch.no_grad():
        for p, p0 in zip(params, originals, strict=False):
            p.copy_(p0)
    numeric = (values[0] - values[1]) / 2e-6
    assert abs(analytic - numeric) < 1e-4 * max(1.0, abs(numeric))


def test_unsupported_structures_raise_model_error(chgnet32):
    with pytest.raises(ModelError, match="95"):
        chgnet32.prepare(Atoms("AmO", positions=[[0, 0, 0], [0, 0, 2.0]]))
    slab = bulk("Cu", "fcc", a=3.61, cubic=True)
    slab.pbc = (True, True, False)
    with pytest.raises(ModelError, match="pbc"):
        chgnet32.prepare(slab)
    with pytest.raises(ModelError, match="neighbour"):
        chgnet32.prepare(Atoms("H2", positions=[[0, 0, 0], [0, 0, 7.0]]))


def test_molecule_box_leaves_images_beyond_cutoff(chgnet32, ethanol):
    box = chgnet32.boxed(ethanol)
    extent = ethanol.positions.max(0) - ethanol.positions.min(0)
    gap = np.diag(box.cell.array) - extent
    assert (gap > chgnet32.r_cut).all()
    assert np.allclose(box.get_all_distances(), ethanol.get_all_distances())


def test_bad_source_raises_configuration_error():
    with pytest.raises(ConfigurationError, match="0.3.0"):
        load_adapter(ModelSpec(family="chgnet", source="9.9.9", dtype="float32"))
