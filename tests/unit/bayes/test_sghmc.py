"""Schedules, priority minibatches and the AMSGrad-SGHMC sampler (method.md section 3)."""

from __future__ import annotations

import math

import pytest
import torch

from otfparsl.bayes import (
    AMSGradSGHMC,
    BayesianModel,
    SGHMCConfig,
    SigmaHead,
    TransferPrior,
    cosine_step_size,
    minibatch_objective,
    noise_temperature,
    sample_minibatch,
)
from otfparsl.bayes.flat import FlatSGHMC
from otfparsl.errors import ConfigurationError
from otfparsl.units import FORCE_SIGMA_BASE_EV_PER_A


def test_schedule_boundaries():
    cfg = SGHMCConfig()
    g0 = cfg.step_size
    assert cosine_step_size(0, 2000, g0) == pytest.approx(g0 + 1e-8, rel=1e-14)
    assert cosine_step_size(1000, 2000, g0) == pytest.approx(0.5 * g0 + 1e-8, rel=1e-12)
    assert cosine_step_size(1999, 2000, g0) == pytest.approx(
        0.5 * g0 * (1 + math.cos(math.pi * 1999 / 2000)) + 1e-8, rel=1e-12
    )
    assert 1e-8 < cosine_step_size(1999, 2000, g0) < 1e-8 + 1e-8
    temps = {i: noise_temperature(i, cfg) for i in (0, 397, 398, 399, 448, 497, 498, 1999)}
    assert temps == {0: 0.0, 397: 0.0, 398: 0.0, 399: 0.01, 448: 0.5, 497: 0.99, 498: 1.0,
                     1999: 1.0}


def test_config_validation_messages():
    with pytest.raises(ConfigurationError, match="priority"):
        SGHMCConfig(priority="newest")
    with pytest.raises(ConfigurationError, match="batch_size"):
        SGHMCConfig(batch_size=1)
    SGHMCConfig(batch_size=1, priority="uniform")


def _mc_estimates(n_data, priority, values, n_draws=10000, seed=0):
    """N * (1/B) sum_b w_b l_b for many independent minibatches."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n_draws, dtype=torch.float64)
    newest = 0
    for k in range(n_draws):
        idx, w = sample_minibatch(n_data, 5, g, priority)
        out[k] = n_data * (w * values[idx]).sum() / len(idx)
        newest += int((idx == n_data - 1).sum())
    return out, newest / n_draws


@pytest.mark.parametrize("n_data", [9, 37])
def test_default_minibatch_estimator_is_unbiased_and_original_is_not(n_data):
    values = 1.0 + torch.rand(n_data, generator=torch.Generator().manual_seed(n_data),
                              dtype=torch.float64)
    exact = float(values.sum())
    est, newest_per_batch = _mc_estimates(n_data, "unbiased", values)
    stderr = float(est.std()) / math.sqrt(len(est))
    assert abs(float(est.mean()) - exact) < 4 * stderr
    assert newest_per_batch == pytest.approx(1.0, abs=0.04)  # once per minibatch on average
    est_u, _ = _mc_estimates(n_data, "uniform", values)
    assert abs(float(est_u.mean()) - exact) < 4 * float(est_u.std()) / math.sqrt(len(est_u))
    est_o, _ = _mc_estimates(n_data, "original", values)
    stderr_o = float(est_o.std()) / math.sqrt(len(est_o))
    assert float(est_o.mean()) - exact > 10 * stderr_o  # over-weighted: biased upwards


def test_original_rule_overweights_newest_as_documented():
    n_data = 10
    newest = torch.zeros(n_data, dtype=torch.float64)
    newest[-1] = 1.0
    est, _ = _mc_estimates(n_data, "original", newest)
    assert 1.9 < float(est.mean()) < 2.3  # x2.09 for N = 10 (x1.3-2.7 over N)
    est, _ = _mc_estimates(n_data, "unbiased", newest)
    assert float(est.mean()) == pytest.approx(1.0, abs=0.05)


def test_small_dataset_is_the_whole_batch():
    for priority in ("unbiased", "original", "uniform"):
        idx, w = sample_minibatch(4, 5, torch.Generator().manual_seed(0), priority)
        assert idx.tolist() == [0, 1, 2, 3] and w.tolist() == [1.0] * 4


def test_sampler_step_follows_the_update_equations():
    cfg = SGHMCConfig()
    theta0 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    p = torch.nn.Parameter(theta0.clone())
    sampler = AMSGradSGHMC([p], cfg, torch.Generator().manual_seed(5))
    ref_rng = torch.Generator().manual_seed(5)
    grads = [torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64),
             torch.tensor([0.1, 3.0, -0.5], dtype=torch.float64)]
    theta, v, m, r = theta0.clone(), torch.zeros(3, dtype=torch.float64), None, 0.0
    a, b, n, gamma, tau = cfg.friction, cfg.beta, 7, 2e-3, 0.6
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        sampler.step(gamma, tau, n)
        v = b * v + (1 - b) * g**2
        m = v.clone() if m is None else torch.maximum(m, v)
        d = 1 / (torch.sqrt(m / (1 - b**t)) + cfg.eps)
        xi = torch.randn(3, generator=ref_rng, dtype=torch.float64) * tau * torch.sqrt(
            2 / (gamma * d * n))
        r = (1 - a) * r - a * g + a * xi
        theta = theta + gamma * d * r
        assert torch.allclose(p.detach(), theta, rtol=1e-13, atol=1e-15)
        assert p.grad is None


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["reference", "flat"])
def test_sghmc_reproduces_conjugate_gaussian_posterior(toy, sampler):
    """Bayesian linear regression on energies: SGHMC moments match the analytic posterior.

    Constant step size 1e-2 (the cosine cycle only rescales it), batch size 10 of N = 30 with
    the default importance-weighted priority minibatch, 20 000 steps, first 2 000 discarded.
    Expected: minibatch gradient noise heats the chain by a few per cent at this step size
    (std ratio ~1.00-1.07 over seeds); a wrong noise scale (e.g. missing factor 2) gives 0.71.
    """
    n_data, sigma_e, sigma_tl, gamma, n_steps = 30, 0.5, 0.5, 1e-2, 20000
    w_true = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
    w_pre = torch.tensor([0.8, -0.3, 0.5], dtype=torch.float64)
    items = toy.make_items(n_data, w_true, n_atoms=0, energy_noise=sigma_e, force_noise=0.0,
                           seed=0)  # no atoms: the likelihood is energies only
    model = BayesianModel(toy.Core(w_pre), SigmaHead(2, (), FORCE_SIGMA_BASE_EV_PER_A))
    prior = TransferPrior.from_model(model, sigma_tl)
    cfg = SGHMCConfig(batch_size=10, step_size=gamma)
    params = list(model.parameters())
    noise = torch.Generator().manual_seed(1)
    if sampler == "flat":  # prior gradient added analytically by the sampler
        flat = FlatSGHMC(params, [prior.mean[n] for n, _ in model.named_parameters()], sigma_tl,
                         cfg, noise)
    else:
        reference = AMSGradSGHMC(params, cfg, noise)
    data_rng = torch.Generator().manual_seed(101)
    samples = []
    for i in range(n_steps):
        idx, w = sample_minibatch(n_data, cfg.batch_size, data_rng, cfg.priority)
        unique, inverse = torch.unique(idx, return_inverse=True)
        weights = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, w)
        batch = toy.collate([items[k] for k in unique.tolist()])
        args = (batch, weights, len(idx), n_data, sigma_e, 1.0, False)
        if sampler == "flat":
            flat.step(minibatch_objective(model, None, *args), gamma, 1.0, n_data)
        else:
            minibatch_objective(model, prior, *args).backward()
            reference.step(gamma, 1.0, n_data)
        if i >= n_steps // 10:
            samples.append(torch.cat([p.detach().flatten() for p in params]))
    s = torch.stack(samples)

    x = torch.stack([it.x for it in items])
    y = torch.tensor([it.energy for it in items], dtype=torch.float64)
    cov = torch.linalg.inv(x.T @ x / sigma_e**2 + torch.eye(3) / sigma_tl**2)
    mean = cov @ (x.T @ y / sigma_e**2 + w_pre / sigma_tl**2)
    std = cov.diag().sqrt()
    w_mean, w_std = s[:, :3].mean(0), s[:, :3].std(0)
    assert torch.all((w_mean - mean).abs() < 0.1 * mean.abs())
    assert torch.all((w_mean - mean).abs() < 0.25 * std)
    assert torch.all((w_std / std - 1).abs() < 0.10), (w_std / std).tolist()
    # the head has no data here: its 3 weights sample the prior N(0, sigma_tl^2), which mixes
    # more slowly (tiny gradients); looser bounds
    h_mean, h_std = s[:, 3:].mean(0), s[:, 3:].std(0)
    assert torch.all(h_mean.abs() < 0.35 * sigma_tl)
    assert torch.all((h_std / sigma_tl - 1).abs() < 0.15), (h_std / sigma_tl).tolist()
