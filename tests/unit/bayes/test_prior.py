"""The transfer prior owns a copy of the pretrained weights (the original's detach() defect)."""

from __future__ import annotations

import math

import torch

from otfparsl.bayes import BayesianModel, SigmaHead, TransferPrior


def _model(toy):
    return BayesianModel(toy.Core(torch.tensor([0.3, -0.7, 1.1])), SigmaHead(2, (4,), 0.004))


def _prior_grad(model, prior):
    model.zero_grad()
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    prior.log_prob(named).backward()
    return {n: p.grad.clone() for n, p in named.items()}


def test_prior_gradient_nonzero_after_parameters_move(toy):
    model = _model(toy)
    sigma_tl = 0.5
    prior = TransferPrior.from_model(model, sigma_tl)
    # a prior built like the original code: detach() views that share storage
    views = TransferPrior.from_model(model, sigma_tl)
    views.mean = {n: p.detach() for n, p in model.named_parameters()}

    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    shift = {n: 0.1 * (1 + torch.arange(p.numel(), dtype=p.dtype)).reshape(p.shape)
             for n, p in model.named_parameters()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_(shift[n])

    grad = _prior_grad(model, prior)
    for n in grad:  # d log p / d theta = -(theta - theta_pre) / sigma^2, head mean 0 included
        assert torch.allclose(grad[n], -shift[n] / sigma_tl**2)
        assert torch.equal(prior.mean[n], pretrained[n])
    view_grad = _prior_grad(model, views)
    assert all(bool((g == 0).all()) for g in view_grad.values())  # the test discriminates


def test_log_prob_value_includes_normalisation(toy):
    model = _model(toy)
    prior = TransferPrior.from_model(model, 0.2)
    named = {n: p for n, p in model.named_parameters()}
    k = prior.n_parameters()
    assert k == 3 + (2 * 4 + 4) + (4 + 1)
    expected = -0.5 * k * math.log(2 * math.pi * 0.2**2)
    assert math.isclose(float(prior.log_prob(named)), expected, rel_tol=1e-12)
    with torch.no_grad():
        model.core.w.add_(0.2)  # three weights one sigma away: log p drops by 3 * 1/2
    assert math.isclose(float(prior.log_prob(named)), expected - 1.5, rel_tol=1e-12)
