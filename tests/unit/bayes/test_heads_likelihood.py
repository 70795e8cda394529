"""The sigma head starts at base_sigma; the likelihood equals a hand-written Gaussian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from otfparsl.bayes import Batch, BayesianModel, Prediction, SigmaHead, log_likelihood
from otfparsl.errors import ConfigurationError
from otfparsl.units import FORCE_SIGMA_BASE_EV_PER_A, STRESS_SIGMA_EV_PER_A3


def test_zero_initialised_head_gives_base_sigma_and_learns():
    head = SigmaHead(256, (64, 16), FORCE_SIGMA_BASE_EV_PER_A).double()
    assert all(bool((p == 0).all()) for p in head.parameters())
    features = torch.randn(7, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = head(features)
    assert torch.allclose(sigma, torch.full((7,), FORCE_SIGMA_BASE_EV_PER_A, dtype=torch.float64))
    assert FORCE_SIGMA_BASE_EV_PER_A == pytest.approx(0.1 / 23.0609, rel=1e-4)
    # the output bias must receive a gradient, otherwise sigma could never be learned
    sigma.sum().backward()
    assert head.mlp[-1].bias.grad is not None and float(head.mlp[-1].bias.grad.abs()) > 0
    # sigma = base * exp(h): shifting the output bias by log 2 doubles every sigma
    with torch.no_grad():
        head.mlp[-1].bias.fill_(np.log(2.0))
    assert torch.allclose(head(features), 2 * sigma.detach())


def test_head_rejects_wrong_feature_width():
    head = SigmaHead(4, (), 0.01)
    with pytest.raises(ConfigurationError, match="n_atoms, 4"):
        head(torch.zeros(3, 5))


def _example():
    g = torch.Generator().manual_seed(3)
    dt = torch.float64
    n_atoms = [2, 3]
    s = len(n_atoms)
    pred = Prediction(
        energy=torch.randn(s, generator=g, dtype=dt),
        forces=torch.randn(5, 3, generator=g, dtype=dt),
        stress=1e-3 * torch.randn(s, 3, 3, generator=g, dtype=dt),
        features=torch.zeros(5, 1, dtype=dt),
        force_sigma=0.05 + 0.1 * torch.rand(5, generator=g, dtype=dt),
    )
    batch = Batch(
        inputs=None,
        structure_index=torch.tensor([0, 0, 1, 1, 1]),
        n_structures=s,
        energy=torch.randn(s, generator=g, dtype=dt),
        forces=torch.randn(5, 3, generator=g, dtype=dt),
        stress=1e-3 * torch.randn(s, 3, 3, generator=g, dtype=dt),
        stress_mask=torch.tensor([True, False]),
    )
    return pred, batch


def test_log_likelihood_matches_scipy_with_stress_only_where_masked():
    pred, batch = _example()
    sigma_e = 0.02
    ll = log_likelihood(pred, batch, sigma_e, STRESS_SIGMA_EV_PER_A3).numpy()
    f, fp, fs = batch.forces.numpy(), pred.forces.numpy(), pred.force_sigma.numpy()
    expected = []
    for k, atoms in enumerate([[0, 1], [2, 3, 4]]):
        total = norm.logpdf(batch.energy[k].item(), pred.energy[k].item(), sigma_e)
        for i in atoms:
            total += norm.logpdf(f[i], fp[i], fs[i]).sum()
        if batch.stress_mask[k]:
            total += norm.logpdf(
                batch.stress[k].numpy(), pred.stress[k].numpy(), STRESS_SIGMA_EV_PER_A3
            ).sum()
        expected.append(total)
    np.testing.assert_allclose(ll, expected, rtol=1e-12)
    # the unmasked structure's (different) stress does not matter; the masked one's does
    pred.stress[1] += 1.0
    np.testing.assert_allclose(log_likelihood(pred, batch, sigma_e, STRESS_SIGMA_EV_PER_A3), ll)
    z = (batch.stress[0] - pred.stress[0]) / STRESS_SIGMA_EV_PER_A3
    pred.stress[0] = batch.stress[0]
    gain = log_likelihood(pred, batch, sigma_e, STRESS_SIGMA_EV_PER_A3)[0] - ll[0]
    assert float(gain) > 1.0
    assert float(gain) == pytest.approx(0.5 * float((z**2).sum()), rel=1e-10)


def test_likelihood_needs_stress_prediction_when_labels_have_stress():
    pred, batch = _example()
    pred.stress = None
    with pytest.raises(ConfigurationError, match="compute_stress=True"):
        log_likelihood(pred, batch, 0.02, STRESS_SIGMA_EV_PER_A3)


def test_bayesian_model_sets_sigma_and_round_trips_state(toy):
    w0 = torch.tensor([0.5, -1.0], dtype=torch.float64)
    model = BayesianModel(toy.Core(w0), SigmaHead(2, (3,), FORCE_SIGMA_BASE_EV_PER_A))
    items = toy.make_items(2, w0, n_atoms=3, energy_noise=0.0, force_noise=0.0, seed=0)
    pred = model(toy.collate(items), False, True)
    assert torch.allclose(pred.force_sigma, torch.full((6,), FORCE_SIGMA_BASE_EV_PER_A,
                                                       dtype=torch.float64))
    state = model.trainable_state()
    assert set(state) == {"core.w", "head.mlp.0.weight", "head.mlp.0.bias",
                          "head.mlp.2.weight", "head.mlp.2.bias"}  # buffer "shift" excluded
    with torch.no_grad():
        model.core.w.add_(1.0)
    assert torch.equal(state["core.w"], w0)  # a clone, not a view
    model.load_trainable_state(state)
    assert torch.equal(model.core.w.detach(), w0)
