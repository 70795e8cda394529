"""Chain updates: they fit the data, recover from divergence, and resume bit-identically."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from otfparsl.bayes import (
    BayesianModel,
    Chain,
    SGHMCConfig,
    SigmaHead,
    TransferPrior,
    load_sample,
    minibatch_objective,
)
from otfparsl.errors import ConfigurationError, SamplerDiverged
from otfparsl.units import FORCE_SIGMA_BASE_EV_PER_A

W_TRUE = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
W_PRE = torch.tensor([0.6, -0.1, 0.6], dtype=torch.float64)  # "pretrained", off the truth
CFG = SGHMCConfig(n_steps=500, noise_off_steps=100, noise_ramp_steps=50, step_size=1e-2)
SIGMA_E = 0.05


def _setup(toy, nan_calls=0, seed=3, cfg=CFG):
    model = BayesianModel(toy.Core(W_PRE, nan_calls=nan_calls),
                          SigmaHead(2, (4,), FORCE_SIGMA_BASE_EV_PER_A))
    prior = TransferPrior.from_model(model, 0.5)
    return model, prior, Chain(model, prior, cfg, seed=seed)


def _items(toy, n=8):
    return toy.make_items(n, W_TRUE, n_atoms=3, energy_noise=0.01, force_noise=0.01, seed=1)


def _full_objective(model, prior, items, toy):
    batch = toy.collate(items)
    weights = torch.ones(len(items), dtype=torch.float64)
    objective = minibatch_objective(model, prior, batch, weights, len(items), len(items),
                                    SIGMA_E, 1.0, False)
    return float(objective.detach())


def _force_rmse(model, items, toy):
    batch = toy.collate(items)
    pred = model(batch, False, False)
    return float(((pred.forces.detach() - batch.forces) ** 2).mean().sqrt())


@pytest.mark.parametrize("priority", ["unbiased", "original"])
def test_update_lowers_loss_and_force_error(toy, priority):
    model, prior, chain = _setup(toy, cfg=dataclasses.replace(CFG, priority=priority))
    items = _items(toy)
    before = _full_objective(model, prior, items, toy)
    rmse_before = _force_rmse(model, items, toy)
    stats = chain.update(items, toy.collate, SIGMA_E, 1.0, False)
    after = _full_objective(model, prior, items, toy)
    assert after < 1e-3 * before  # per-datum -log posterior: ~7e4 -> ~-30
    assert _force_rmse(model, items, toy) < 0.1 * rmse_before  # ~0.53 -> ~0.011 eV/Å
    assert stats.n_steps == 500 and stats.n_data == 8 and stats.n_retries == 0
    assert stats.mean_loss_last_100 < before
    assert chain.n_updates == 1
    # the sample is the model's weights, and the sigma head moved towards the force errors
    assert torch.equal(chain.sample()["core.w"], model.core.w.detach())
    assert not torch.equal(chain.sample()["head.mlp.2.bias"], torch.zeros(1, dtype=torch.float64))


def test_divergence_restores_weights_then_retries_with_half_step(toy):
    items = _items(toy)
    model, _, chain = _setup(toy, nan_calls=10**9)
    before = model.trainable_state()
    with pytest.raises(SamplerDiverged, match="restored"):
        chain.update(items, toy.collate, SIGMA_E, 1.0, False)
    after = model.trainable_state()
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert chain.n_updates == 0

    model, _, chain = _setup(toy, nan_calls=50)  # NaN only early in the first attempt
    stats = chain.update(items, toy.collate, SIGMA_E, 1.0, False)
    assert stats.n_retries == 1 and stats.step_size == pytest.approx(CFG.step_size / 2)
    assert all(bool(torch.isfinite(v).all()) for v in chain.sample().values())

    model, _, chain = _setup(toy, nan_calls=50)
    with pytest.raises(SamplerDiverged):
        chain.update(items, toy.collate, SIGMA_E, 1.0, False, max_retries=0)


def test_save_load_continues_bit_identically(toy, tmp_path):
    items = _items(toy)
    model_a, _, chain_a = _setup(toy, seed=11)
    chain_a.update(items[:5], toy.collate, SIGMA_E, 1.0, False)
    chain_a.update(items, toy.collate, SIGMA_E, 1.0, False)

    model_b, _, chain_b = _setup(toy, seed=11)
    chain_b.update(items[:5], toy.collate, SIGMA_E, 1.0, False)
    path = tmp_path / "chains" / "chain_0.pt"
    chain_b.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["chain_0.pt"]  # no temp file left
    model_c, _, _ = _setup(toy, seed=999)  # fresh weights, another seed: all overwritten
    chain_c = Chain.load(path, model_c)
    assert chain_c.n_updates == 1 and chain_c.seed == 11 and chain_c.config == CFG
    assert torch.equal(chain_c.prior.mean["core.w"], W_PRE)
    chain_c.update(items, toy.collate, SIGMA_E, 1.0, False)

    a, c = chain_a.sample(), chain_c.sample()
    assert all(torch.equal(a[n], c[n]) for n in a)
    assert not torch.equal(a["core.w"], W_PRE)
    chain_c.save(path)
    assert all(torch.equal(v, load_sample(path)[n]) for n, v in a.items())


def test_chain_rejects_mismatched_prior_and_bad_file(toy, tmp_path):
    model, _, _ = _setup(toy)
    other = BayesianModel(toy.Core(W_PRE), SigmaHead(2, (), 0.004))
    with pytest.raises(ConfigurationError, match="prior"):
        Chain(model, TransferPrior.from_model(other, 0.5), CFG, seed=0)
    bad = tmp_path / "x.pt"
    torch.save({"weights": {}}, bad)
    with pytest.raises(ConfigurationError, match="not an otfparsl chain file"):
        load_sample(bad)


def test_original_priority_keeps_its_weights_from_the_first_step(toy, monkeypatch):
    """``priority: original`` weights every step as the original's DataLoader does.

    An earlier version set all weights to 1 during the noise-free steps; no version of the
    original code does that (the truth issue): the weights seen at step 0 must be the merged
    importance weights of ``sample_minibatch``, not ones.
    """
    import otfparsl.bayes.chain as chain_module
    from otfparsl.bayes.sghmc import sample_minibatch

    cfg = dataclasses.replace(CFG, priority="original", n_steps=3, noise_off_steps=2, noise_ramp_steps=0, batch_size=3)
    model, prior, chain = _setup(toy, cfg=cfg)
    items = _items(toy, n=8)
    seen = []
    real = chain_module.minibatch_objective

    def spy(model, prior, batch, weights, *args):
        seen.append(weights.clone())
        return real(model, prior, batch, weights, *args)

    monkeypatch.setattr(chain_module, "minibatch_objective", spy)
    generator = torch.Generator().manual_seed(0)
    generator.set_state(chain._data_rng.get_state())
    idx, w = sample_minibatch(len(items), cfg.batch_size, generator, "original")
    chain.update(items, toy.collate, SIGMA_E, 1.0, False)
    unique, inverse = torch.unique(idx, return_inverse=True)
    expected = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, w)
    torch.testing.assert_close(seen[0], expected)
    assert not torch.all(seen[0] == 1.0)  # the newest structure is up-weighted from step 0
