"""Audit metrics: exact binomial interval, AUC, coverage and rms z on synthetic errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from otfparsl.analysis.metrics import auc_roc, binomial_interval, error_metrics, uncertainty_metrics

K = 0.02


def test_binomial_interval_is_clopper_pearson():
    low, high = binomial_interval(1, 20)
    # Clopper-Pearson by its definition: Beta quantiles
    assert low == pytest.approx(stats.beta.ppf(0.025, 1, 20), rel=1e-9)
    assert high == pytest.approx(stats.beta.ppf(0.975, 2, 19), rel=1e-9)
    assert binomial_interval(0, 2) == (0.0, pytest.approx(0.8419, abs=1e-4))  # "0 of 2" proves little
    assert binomial_interval(0, 0) == (0.0, 1.0)


def test_auc_equals_pairwise_count():
    rng = np.random.default_rng(0)
    score = rng.normal(size=30).round(1)  # ties on purpose
    positive = rng.random(30) < 0.4
    pairs = [
        1.0 if sp > sn else 0.5 if sp == sn else 0.0
        for sp, sn in itertools.product(score[positive], score[~positive])
    ]
    assert auc_roc(score, positive) == pytest.approx(np.mean(pairs), rel=1e-12)
    assert auc_roc(score, np.zeros(30, bool)) is None
    assert auc_roc([1.0, 2.0], [False, True]) == 1.0


def test_error_metrics():
    e = np.array([0.01, -0.03, 0.0, 0.025])
    m = error_metrics(e, K)
    assert m["n_above_threshold"] == 2 and m["fraction_above_threshold"] == 0.5
    assert m["energy_rmse_eV"] == pytest.approx(np.sqrt(np.mean(e**2)))
    assert m["energy_max_abs_error_eV"] == pytest.approx(0.03)


def test_honest_student_t_predictive_scores_as_honest():
    rng = np.random.default_rng(1)
    n, dof = 4000, 30.0
    std = rng.uniform(0.002, 0.01, n)
    scale = 1.5 * std
    errors = scale * rng.standard_t(dof, n)
    m = uncertainty_metrics(errors, std, scale, np.full(n, dof), K)
    assert m["coverage_95"] == pytest.approx(0.95, abs=0.01)
    assert m["rms_z_calibrated"] == pytest.approx(np.sqrt(dof / (dof - 2)), rel=0.05)
    assert m["rms_z_ensemble"] == pytest.approx(1.5 * np.sqrt(dof / (dof - 2)), rel=0.05)
    for level, observed in m["reliability"].items():
        assert observed == pytest.approx(float(level), abs=0.03)
    assert m["auc_roc_std"] > 0.8  # a larger std really means a larger error here
    # an overconfident claim (scale 5x too small) is caught
    bad = uncertainty_metrics(errors, std, scale / 5, np.full(n, dof), K)
    assert bad["coverage_95"] < 0.5 and bad["rms_z_calibrated"] > 4
    assert bad["mll_student_t"] < m["mll_student_t"]
