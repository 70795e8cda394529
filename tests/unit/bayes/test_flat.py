"""The flat sampler: the reference sampler's trajectory at τ = 0, its equations with noise."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from otfparsl.bayes import BayesianModel, Chain, SGHMCConfig, SigmaHead, TransferPrior
from otfparsl.bayes.flat import FlatSGHMC, flatten_parameters
from otfparsl.errors import ConfigurationError
from otfparsl.units import FORCE_SIGMA_BASE_EV_PER_A

W_TRUE = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
W_PRE = torch.tensor([0.6, -0.1, 0.6], dtype=torch.float64)
SIGMA_E = 0.05
# no injected noise in any of the 400 steps: both samplers are deterministic
NOISELESS = SGHMCConfig(n_steps=400, noise_off_steps=400, noise_ramp_steps=0, step_size=1e-2)


def _toy_chain(toy, cfg, seed=3):
    model = BayesianModel(toy.Core(W_PRE), SigmaHead(2, (4,), FORCE_SIGMA_BASE_EV_PER_A))
    return Chain(model, TransferPrior.from_model(model, 0.5), cfg, seed=seed)


def _max_rel_diff(a: dict, b: dict) -> float:
    return max(float(((a[n] - b[n]).abs() / b[n].abs().clamp_min(1e-300)).max()) for n in a)


def test_flat_equals_reference_without_noise_on_toy_model(toy):
    items = toy.make_items(8, W_TRUE, n_atoms=3, energy_noise=0.01, force_noise=0.01, seed=1)
    ref = _toy_chain(toy, dataclasses.replace(NOISELESS, sampler="reference"))
    flat = _toy_chain(toy, NOISELESS)
    assert flat.config.sampler == "flat"
    for n_items in (5, 8):  # two updates: the full batch, then priority minibatches
        stats_ref = ref.update(items[:n_items], toy.collate, SIGMA_E, 1.0, False)
        stats_flat = flat.update(items[:n_items], toy.collate, SIGMA_E, 1.0, False)
        assert stats_flat.final_loss == pytest.approx(stats_ref.final_loss, rel=1e-12)
    a, b = flat.sample(), ref.sample()
    assert _max_rel_diff(a, b) < 1e-12
    assert not torch.equal(a["core.w"], W_PRE)  # the chain moved


def test_flat_step_follows_the_update_equations_with_noise():
    """Two steps with τ > 0 against the equations of method.md section 3, prior included."""
    cfg = SGHMCConfig()
    theta_pre = torch.tensor([0.5, -1.0, 2.0, 0.1, 0.0], dtype=torch.float64)
    a_param = torch.nn.Parameter(theta_pre[:3].clone())
    b_param = torch.nn.Parameter(theta_pre[3:].clone().reshape(2, 1))
    sigma_tl, n, gamma, tau = 0.5, 7, 2e-3, 0.6
    sampler = FlatSGHMC([a_param, b_param], [theta_pre[:3], theta_pre[3:].reshape(2, 1)],
                        sigma_tl, cfg, torch.Generator().manual_seed(5))
    ref_rng = torch.Generator().manual_seed(5)
    targets = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0], dtype=torch.float64)
    theta, v, m, r = theta_pre.clone(), torch.zeros(5, dtype=torch.float64), None, 0.0
    al, be = cfg.friction, cfg.beta
    for t in (1, 2):
        current = torch.cat([a_param.detach(), b_param.detach().flatten()])
        data_loss = 0.5 * ((torch.cat([a_param, b_param.flatten()]) - targets) ** 2).sum()
        loss = sampler.step(data_loss, gamma, tau, n)
        prior_term = (((current - theta_pre) ** 2).sum() / (2 * sigma_tl**2)
                      + 5 * 0.5 * math.log(2 * math.pi * sigma_tl**2)) / n
        assert float(loss) == pytest.approx(float(data_loss) + float(prior_term), rel=1e-14)
        g = (current - targets) + (current - theta_pre) / (n * sigma_tl**2)
        v = be * v + (1 - be) * g**2
        m = v.clone() if m is None else torch.maximum(m, v)
        d = 1 / (torch.sqrt(m / (1 - be**t)) + cfg.eps)
        xi = torch.randn(5, generator=ref_rng, dtype=torch.float64) * tau * torch.sqrt(
            2 / (gamma * d * n))
        r = (1 - al) * r - al * g + al * xi
        theta = theta + gamma * d * r
        got = torch.cat([a_param.detach(), b_param.detach().flatten()])
        torch.testing.assert_close(got, theta, rtol=1e-13, atol=1e-15)
    assert sampler.theta.data_ptr() == a_param.data_ptr()  # the parameters are its views


def test_prior_gradient_pulls_back_to_the_pretrained_weights():
    """With no data term the flat sampler's analytic prior gradient alone moves the weights."""
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    pre = torch.zeros(2, dtype=torch.float64)
    sampler = FlatSGHMC([p], [pre], 0.5, SGHMCConfig(), torch.Generator().manual_seed(0))
    for _ in range(50):
        sampler.step((0.0 * p).sum(), 1e-2, 0.0, 1)
    assert torch.all(p.detach().abs() < torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert torch.all(p.detach().sign() == torch.tensor([1.0, -1.0], dtype=torch.float64))


def test_flatten_rejects_mixed_dtypes_and_keeps_values():
    a = torch.nn.Parameter(torch.ones(2, 2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.arange(3, dtype=torch.float64))
    flat = flatten_parameters([a, b])
    assert flat.tolist() == [1.0] * 4 + [0.0, 1.0, 2.0]
    flat[4] = 7.0
    assert float(b[0]) == 7.0
    with pytest.raises(ConfigurationError, match="one dtype"):
        flatten_parameters([a, torch.nn.Parameter(torch.ones(1, dtype=torch.float32))])


def test_chain_files_without_sampler_field_continue_with_the_reference_sampler(toy, tmp_path):
    """A chain file from before ``SGHMCConfig.sampler`` resumes with its own numerics."""
    items = toy.make_items(6, W_TRUE, n_atoms=3, energy_noise=0.01, force_noise=0.01, seed=1)
    cfg = SGHMCConfig(n_steps=60, noise_off_steps=10, noise_ramp_steps=5, step_size=1e-2,
                      sampler="reference")
    chain = _toy_chain(toy, cfg)
    path = tmp_path / "chain_0.pt"
    chain.save(path)
    state = torch.load(path, weights_only=True)
    del state["config"]["sampler"]  # as written by the earlier version
    torch.save(state, path)
    chain.update(items, toy.collate, SIGMA_E, 1.0, False)
    model = BayesianModel(toy.Core(W_PRE * 0), SigmaHead(2, (4,), FORCE_SIGMA_BASE_EV_PER_A))
    loaded = Chain.load(path, model)
    assert loaded.config == cfg
    loaded.update(items, toy.collate, SIGMA_E, 1.0, False)
    a, b = loaded.sample(), chain.sample()
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.slow
def test_flat_equals_reference_without_noise_on_tiny_mace():
    """The flat sampler on a tiny MACE (float64, forces and stress) follows the reference."""
    pytest.importorskip("mace")
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from otfparsl.models import ModelSpec, attach_labels, load_adapter
    from otfparsl.training import build_bayesian_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        adapter = load_adapter(ModelSpec(family="mace", source="tiny", dtype="float64"))
        data = []
        for k in range(7):
            atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
            atoms.rattle(0.05, seed=k)
            atoms.calc = EMT()
            atoms.get_stress()
            data.append(attach_labels(adapter.prepare(atoms), atoms, 0.0))
        cfg = SGHMCConfig(n_steps=100, noise_off_steps=100, noise_ramp_steps=0,
                          step_size=adapter.defaults.step_size)
        samples = []
        for sampler in ("reference", "flat"):
            model = build_bayesian_model(adapter, _fresh_core(adapter))
            prior = TransferPrior.from_model(model, adapter.defaults.sigma_tl)
            chain = Chain(model, prior, dataclasses.replace(cfg, sampler=sampler), seed=0)
            chain.update(data, adapter.collate, 0.01, 1e-3, True)
            samples.append(chain.sample())
    finally:
        torch.set_num_threads(threads)
    ref, flat = samples
    pre = build_bayesian_model(adapter, _fresh_core(adapter)).trainable_state()
    moved = max(float((ref[n] - pre[n]).abs().max()) for n in ref)
    diff = max(float((flat[n] - ref[n]).abs().max()) for n in ref)
    assert moved > 1e-3 and diff < 1e-12, (moved, diff)  # measured: 0.027 and 4.4e-16 (60 steps)


def _fresh_core(adapter):
    """A private copy of the adapter's core (the chains' models must not share weights)."""
    import copy

    return copy.deepcopy(adapter.core)
