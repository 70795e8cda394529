"""MACE-MP-0 medium exercised offline: its exact architecture (4.69 M parameters) with random
weights, saved as a .model file and loaded through the code path of ``mace-mp-0:medium``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mace")

from ase.build import bulk, molecule  # noqa: E402

from otfparsl.errors import ConfigurationError, ModelError  # noqa: E402
from otfparsl.models import load_adapter  # noqa: E402
from otfparsl.models.base import ModelSpec  # noqa: E402
from otfparsl.testing import (  # noqa: E402
    MACE_MP_0_MEDIUM_PARAMETERS,
    check_batched_equals_single,
    check_forces_are_gradient,
    check_rotation_invariance_of_features,
    check_stress_is_strain_derivative,
    predict,
)


@pytest.fixture
def si_sheared():
    """2-atom diamond Si, sheared by 3 % and rattled (seed 1)."""
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.set_cell(atoms.cell.array @ (torch.eye(3).numpy() + [[0, 0.03, 0], [0, 0, 0], [0, 0, 0]]),
                   scale_atoms=True)
    atoms.rattle(0.05, seed=1)
    return atoms


def test_file_is_mace_mp0_medium_architecture(mace_mp0_medium, mace_mp0_medium_file):
    model = torch.load(mace_mp0_medium_file, map_location="cpu", weights_only=False)
    assert type(model).__name__ == "ScaleShiftMACE"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert sum(p.numel() for p in model.parameters()) == MACE_MP_0_MEDIUM_PARAMETERS
    assert [type(b).__name__ for b in model.interactions] == [
        "RealAgnosticResidualInteractionBlock"] * 2
    assert float(model.r_max) == 6.0 and model.atomic_numbers.tolist() == list(range(1, 90))
    assert str(model.products[0].linear.irreps_out) == "128x0e+128x1o"
    # the adapter samples exactly these weights
    adapter = mace_mp0_medium
    assert sum(p.numel() for p in adapter.core.parameters()) == MACE_MP_0_MEDIUM_PARAMETERS


def test_sigma_head_sees_the_256_invariant_channels(mace_mp0_medium):
    from otfparsl.bayes import SigmaHead
    from otfparsl.units import FORCE_SIGMA_BASE_EV_PER_A

    adapter = mace_mp0_medium
    # method.md section 1: the 128 scalars of the first interaction and the 128 of the last
    # (node_feats = [128x0e + 128x1o | 128x0e] -> channels 0..127 and 512..639)
    assert adapter.n_features == 256
    assert adapter.core.feature_index.tolist() == list(range(128)) + list(range(512, 640))
    head = SigmaHead(adapter.n_features, adapter.defaults.head_hidden, FORCE_SIGMA_BASE_EV_PER_A)
    assert [m.in_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [256, 64, 16]
    water = molecule("H2O")
    features = predict(adapter, [water]).features
    assert features.shape == (3, 256)
    sigma = head(features.to(torch.float32))
    assert torch.allclose(sigma, torch.full((3,), FORCE_SIGMA_BASE_EV_PER_A))
    # O and H see different environments, the two H the same one
    assert float((features[0] - features[1]).abs().max()) > 1e-2
    assert float((features[1] - features[2]).abs().max()) < 1e-12
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    sigma = head(features.to(torch.float32))
    assert float((sigma[0] / sigma[1] - 1).abs()) > 1e-3
    assert torch.allclose(sigma[1], sigma[2], rtol=1e-6)


def test_mace_mp0_source_loads_the_downloaded_file_the_same_way(
        mace_mp0_medium, mace_mp0_medium_file, monkeypatch):
    from mace.calculators import foundations_models

    asked = []

    def fake_download(model=None):
        asked.append(model)
        return str(mace_mp0_medium_file)

    monkeypatch.setattr(foundations_models, "download_mace_mp_checkpoint", fake_download)
    adapter = load_adapter(ModelSpec(family="mace", source="mace-mp-0:medium", dtype="float64"))
    assert asked == ["medium"]
    water = molecule("H2O")
    a, b = predict(adapter, [water]), predict(mace_mp0_medium, [water])
    assert torch.equal(a.energy, b.energy) and torch.equal(a.forces, b.forces)
    assert torch.equal(a.features, b.features)
    with pytest.raises(ConfigurationError, match="medium"):
        load_adapter(ModelSpec(family="mace", source="mace-mp-0:huge"))


def test_a_file_without_a_mace_model_raises_model_error(tmp_path):
    path = tmp_path / "not_a_model.model"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ModelError, match="not hold a MACE model"):
        load_adapter(ModelSpec(family="mace", source=str(path)))


@pytest.mark.slow
def test_contracts_at_mace_mp0_medium_size(mace_mp0_medium, si_sheared):
    adapter = mace_mp0_medium
    water = molecule("H2O")
    check_forces_are_gradient(adapter, water, delta=1e-4, tol=1e-8)
    pred = predict(adapter, [si_sheared], compute_stress=True)
    assert float(pred.stress.abs().max()) > 1e-4  # not vacuous against tol below
    check_stress_is_strain_derivative(adapter, si_sheared, delta=1e-4, tol=1e-9)
    check_batched_equals_single(adapter, [si_sheared, water], tol=1e-10)
    check_rotation_invariance_of_features(adapter, water, seed=3, tol=1e-9)


@pytest.mark.slow
def test_one_chain_update_at_mace_mp0_medium_size(mace_mp0_medium_file):
    """10 SGHMC steps (noise off 2, ramp 2) of all 4.69 M weights on two EMT-labelled Cu3Al
    cells, float32 (MACE's published gamma_0 and sigma_TL)."""
    from ase.calculators.emt import EMT

    from otfparsl.bayes import BayesianModel, Chain, SGHMCConfig, SigmaHead, TransferPrior
    from otfparsl.models import attach_labels
    from otfparsl.units import FORCE_SIGMA_BASE_EV_PER_A, STRESS_SIGMA_EV_PER_A3

    adapter = load_adapter(ModelSpec(family="mace", source=str(mace_mp0_medium_file),
                                     dtype="float32"))
    structures = []
    for k in range(2):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms[0].symbol = "Al"
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.get_stress()
        structures.append(atoms)
    head = SigmaHead(adapter.n_features, adapter.defaults.head_hidden, FORCE_SIGMA_BASE_EV_PER_A)
    model = BayesianModel(adapter.core, head)
    prepared = [adapter.prepare(a) for a in structures]
    e_pre = float(model(adapter.collate(prepared[:1]), True, False).energy[0])
    offset = e_pre - structures[0].get_potential_energy()  # method.md section 6
    data = [attach_labels(p, a, offset) for p, a in zip(prepared, structures, strict=True)]
    prior = TransferPrior.from_model(model, adapter.defaults.sigma_tl)
    pretrained = model.trainable_state()
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def force_rmse() -> float:
        batch = adapter.collate(data)
        return float((model(batch, True, False).forces - batch.forces).pow(2).mean().sqrt())

    before = force_rmse()
    cfg = SGHMCConfig(n_steps=10, noise_off_steps=2, noise_ramp_steps=2,
                      step_size=adapter.defaults.step_size)
    stats = Chain(model, prior, cfg, seed=0).update(
        data, adapter.collate, 0.01, STRESS_SIGMA_EV_PER_A3, True)
    after = force_rmse()
    assert stats.n_steps == 10 and stats.n_retries == 0
    assert after < before  # random weights: ~0.677 eV/Å, fitting EMT forces starts slowly
    state = model.trainable_state()
    core = [n for n in state if n.startswith("core.")]
    assert sum(state[n].numel() for n in core) == MACE_MP_0_MEDIUM_PARAMETERS
    assert all(not torch.equal(state[n], pretrained[n]) for n in core)  # every tensor sampled
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())  # E0s, scale/shift


def test_mace_mp0_without_network_is_one_clear_error(monkeypatch):
    import urllib.error

    from mace.calculators import foundations_models

    from otfparsl.errors import ModelError

    def no_network(model=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(foundations_models, "download_mace_mp_checkpoint", no_network)
    with pytest.raises(ModelError, match=r"could not be downloaded.*model.source to the path"):
        load_adapter(ModelSpec(family="mace", source="mace-mp-0:medium"))
