"""Audit metrics: exact binomial interval, AUC, coverage and rms z on synthetic errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from otfparsl.analysis.metrics import (
    VERDICTS,
    auc_roc,
    audit_verdict,
    binomial_interval,
    error_metrics,
    frames_to_show,
    uncertainty_metrics,
)

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


@pytest.mark.parametrize("above", [0, 1, 3])
def test_frames_to_show_a_promise_is_where_clopper_pearson_gets_there(above):
    n = frames_to_show(0.05, above)
    assert n == 72 or above  # 20 frames, none above K, cannot show a 5 % promise
    assert binomial_interval(above, n)[1] <= 0.05 < binomial_interval(above, n - 1)[1]


@pytest.mark.parametrize(
    ("n", "above", "inside", "status", "calibration"),
    [
        (72, 0, 70, "kept", "consistent"),  # the interval lies below 5 %: shown
        (20, 1, 19, "not_shown", "consistent"),  # 5 % observed, interval up to 0.25: not shown
        (3, 0, 1, "not_shown", "overconfident"),  # none above K, but 1 of 3 inside the 95 % intervals
        (3, 1, 2, "exceeded", "consistent"),  # above 5 % observed, interval still holds 5 %
        (20, 18, 2, "broken", "overconfident"),  # the interval lies above 5 %: shown broken
        (100, 0, 100, "kept", "underconfident"),
    ],
)
def test_audit_verdict_says_only_what_the_frames_show(n, above, inside, status, calibration):
    recorded = {"n_frames": n, "n_above_threshold": above, "coverage_95": inside / n, "n_inside_95": inside}
    verdict = audit_verdict(recorded, confidence_level=0.95)
    assert (verdict.status, verdict.calibration) == (status, calibration)
    low, high = binomial_interval(above, n)
    text = verdict.sentence()
    assert text.startswith(VERDICTS[status]) and f"{above} of {n}" in text and f"{low:.2f}-{high:.2f}" in text
    assert ("72 frames" in text) == (status == "not_shown")
    more = f"with {above} above K, at least {frames_to_show(0.05, above)}"  # what these frames would need
    assert (more in text) == (status == "not_shown" and above > 0)
    assert (f"calibration was {calibration}" in text) == (calibration != "consistent")


def test_audit_verdict_of_an_audit_without_uncertainty_or_inside_count():
    assert audit_verdict({"n_frames": 5, "n_above_threshold": 5}, 0.95).calibration is None
    old = audit_verdict({"n_frames": 3, "n_above_threshold": 0, "coverage_95": 1 / 3}, 0.95)  # audit.json of before
    assert old.n_inside_95 == 1 and old.calibration == "overconfident"
