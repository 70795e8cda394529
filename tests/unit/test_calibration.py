"""Tests of the Gamma-prior / Student-t calibration and the DFT decision (method.md section 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from otfparsl.calibration import Calibrator, min_ratio_for_skip, student_t_confidence
from otfparsl.errors import ConfigurationError

K = 0.0217  # 0.5 kcal/mol in eV


def _quad_confidence(threshold: float, scale: float, nu: float) -> float:
    """P(|e| <= K) by integrating the scaled Student-t density numerically."""

    def pdf(e: float) -> float:
        return stats.t.pdf(e / scale, df=nu) / scale

    value, _ = integrate.quad(pdf, -threshold, threshold, epsabs=1e-13, epsrel=1e-12)
    return value


@pytest.mark.parametrize(
    ("a", "b", "S", "n", "std"),
    [(1.5, 10.0, 0.0, 0, 0.003), (3.0, 10.0, 40.0, 20, 0.01), (1.5, 10.0, 500.0, 100, 0.002)],
)
def test_confidence_matches_formula_and_quadrature(a, b, S, n, std):
    cal = Calibrator(energy_threshold_eV=K, a=a, b=b, S=S, n=n)
    scale = std * math.sqrt((b + S / 2) / (a + n / 2))
    nu = 2 * a + n
    expected = 2 * stats.t.cdf(K / scale, df=nu) - 1
    got = cal.confidence(std)
    assert got == pytest.approx(expected, rel=1e-12)
    assert got == pytest.approx(_quad_confidence(K, scale, nu), abs=1e-9)
    assert 0.0 < got < 1.0


def test_sanity_values_of_method():
    assert min_ratio_for_skip(1.5, 10.0, 0, 1.0) == pytest.approx(8.22, abs=0.005)
    assert min_ratio_for_skip(1.5, 10.0, 50, 1.0) == pytest.approx(2.31, abs=0.005)
    for mean_z2 in (1.0, 4.0):
        limit = 1.96 * math.sqrt(mean_z2)
        assert min_ratio_for_skip(1.5, 10.0, math.inf, mean_z2) == pytest.approx(limit, rel=1e-3)
        assert min_ratio_for_skip(1.5, 10.0, 10**7, mean_z2) == pytest.approx(limit, rel=1e-3)


@pytest.mark.parametrize(("n", "mean_z2"), [(0, 1.0), (50, 1.0), (200, 2.5)])
def test_min_ratio_is_the_decision_boundary(n, mean_z2):
    ratio = min_ratio_for_skip(1.5, 10.0, n, mean_z2)
    cal = Calibrator(energy_threshold_eV=K, S=n * mean_z2, n=n)
    std_at_boundary = K / ratio
    assert cal.confidence(std_at_boundary) == pytest.approx(0.95, abs=1e-9)
    assert not cal.needs_label(False, cal.confidence(std_at_boundary * 0.99))
    assert cal.needs_label(False, cal.confidence(std_at_boundary * 1.01))
    assert cal.needs_label(True, cal.confidence(std_at_boundary * 0.5))


def test_interventions_count_by_md_step_as_the_original():
    """method.md section 5: the original counts every intervention after its first two force calls."""
    cal = Calibrator(energy_threshold_eV=K)
    rec0 = cal.update(0, 0.0, 0.01, 0.0)  # the first label: error 0 by construction of the offset
    rec1 = cal.update(1, 0.0, 0.01, 0.05)
    rec2 = cal.update(2, 0.0, 0.01, -0.03)
    assert (cal.S, cal.n, cal.n_interventions) == (0.0, 0.0, 3)
    assert not (rec0.counted or rec1.counted or rec2.counted)
    assert rec1.z == pytest.approx(5.0) and rec1.error_eV == pytest.approx(-0.05)
    assert rec1.exceeds_threshold and rec2.exceeds_threshold and rec2.step == 2
    rec3 = cal.update(3, 1.0, 0.01, 1.02)
    assert rec3.counted and not rec3.exceeds_threshold
    assert (cal.S, cal.n, cal.n_interventions) == (pytest.approx(4.0), 1, 4)


def test_second_intervention_counts_wherever_it_falls():
    """The demo's case: labels at steps 0 and 630; the second (z = 7.1) must widen the scale.

    Excluding "the first two interventions" (the earlier rule) would leave the prior's scale.
    """
    cal = Calibrator(energy_threshold_eV=K)
    prior_scale = cal.scale_factor
    cal.update(0, -1.0, 0.00217, -1.0)
    rec = cal.update(630, 0.0, 0.00217, 7.1 * 0.00217)
    assert rec.counted and rec.z == pytest.approx(7.1)
    assert (cal.n, cal.S) == (1, pytest.approx(7.1**2))
    assert cal.scale_factor > 1.6 * prior_scale
    # and the same ensemble std is no longer trusted: DFT is called
    assert cal.energy_confidence(0.00217) < 0.95


def test_recovers_known_miscalibration_factor():
    rng = np.random.default_rng(7)
    c = 3.0
    cal = Calibrator(energy_threshold_eV=K)
    sigmas = rng.uniform(0.002, 0.006, size=2000)
    for sigma in sigmas:
        pred = rng.normal()
        cal.update(100, pred, sigma, pred - c * sigma * rng.normal())
    assert cal.precision_posterior_mean == pytest.approx(1 / c**2, rel=0.08)
    # The calibrated decision is now right: with the true error c * sigma * N(0, 1), the
    # ensemble skips DFT exactly when P(|e| <= K) >= 0.95 under the true error model.
    for sigma in np.linspace(0.001, 0.008, 15):
        truth = 2 * stats.norm.cdf(K / (c * sigma)) - 1
        if abs(truth - 0.95) > 0.01:
            assert cal.needs_label(False, cal.confidence(sigma)) == (truth < 0.95)
    # Taking sigma at face value (Gaussian, lambda = 1) would skip DFT here although the true
    # error exceeds K too often; the calibrated decision calls DFT.
    sigma = K / (1.96 * c) * 1.5
    assert 2 * stats.norm.cdf(K / sigma) - 1 > 0.95
    assert 2 * stats.norm.cdf(K / (c * sigma)) - 1 < 0.95
    assert cal.needs_label(False, cal.confidence(sigma))


def test_json_roundtrip_and_atomic_save(tmp_path):
    cal = Calibrator(energy_threshold_eV=K, a=3.0, ema_decay=0.9, force_threshold_eV_per_A=0.1)
    rng = np.random.default_rng(1)
    for _ in range(5):
        f = rng.normal(size=(3, 3))
        cal.update(100, 0.1, 0.01, 0.12, f, np.full((3, 3), 0.05), f + 0.02)
    again = Calibrator.from_json(cal.to_json())
    assert again == cal
    path = tmp_path / "sub" / "calibration.json"
    cal.save(path)
    loaded = Calibrator.load(path)
    assert loaded.to_dict() == cal.to_dict()
    assert loaded.confidence(0.004, np.full((3, 3), 0.02)) == cal.confidence(
        0.004, np.full((3, 3), 0.02)
    )
    assert [p.name for p in path.parent.iterdir()] == ["calibration.json"]
    with pytest.raises(ConfigurationError, match="unknown keys"):
        Calibrator.from_dict({**cal.to_dict(), "typo": 1})


def test_ema_tracks_change_of_miscalibration_faster():
    rng = np.random.default_rng(3)
    plain = Calibrator(energy_threshold_eV=K)
    ema = Calibrator(energy_threshold_eV=K, ema_decay=0.95)
    sigma = 0.003
    for c in [1.0] * 300 + [4.0] * 60:
        err = c * sigma * rng.normal()
        plain.update(100, 0.0, sigma, -err)
        ema.update(100, 0.0, sigma, -err)
    target = 1 / 16
    assert abs(ema.precision_posterior_mean - target) < 0.5 * target
    assert plain.precision_posterior_mean > 3 * target
    # the EMA statistics are a normalised weighted mean with bounded effective count
    assert ema.n == pytest.approx((1 - 0.95**360) / (1 - 0.95))
    assert plain.n == plain.n_total == 360
    assert ema.n_total == 360


def test_force_threshold_requires_both_confident():
    cal = Calibrator(energy_threshold_eV=K, force_threshold_eV_per_A=0.05)
    small = np.full((2, 3), 0.001)
    large = small.copy()
    large[1, 2] = 0.05
    assert cal.confidence(0.001, small) > 0.95
    assert cal.confidence(0.001, large) < 0.95  # energy confident, one force component not
    assert cal.confidence(0.02, small) < 0.95  # forces confident, energy not
    s = 0.05 * math.sqrt(10 / 1.5)
    expected = 2 * stats.t.cdf(0.05 / s, df=3.0) - 1
    assert cal.force_confidence(large) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ConfigurationError, match="forces_std is required"):
        cal.confidence(0.001)


def test_force_statistics_recover_miscalibration():
    rng = np.random.default_rng(11)
    cal = Calibrator(energy_threshold_eV=K, force_threshold_eV_per_A=0.05, skip_first_steps=1)
    std = np.full((4, 3), 0.01)
    for _ in range(100):
        pred = rng.normal(size=(4, 3))
        label = pred + 2.0 * std * rng.normal(size=(4, 3))
        rec = cal.update(100, 0.0, 0.01, 0.0, pred, std, label)
    assert cal.force_n == 1200
    assert cal.force_scale_factor == pytest.approx(2.0, rel=0.06)
    assert rec.force_z2_mean is not None and rec.force_exceeds_threshold is not None


def test_student_t_confidence_vectorised():
    got = student_t_confidence(1.0, np.array([0.1, 1.0, 10.0]), 5.0)
    assert np.all(np.diff(got) < 0) and got[0] > 0.999


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"confidence_level": 95}, "Did you mean 0.95"),
        ({"energy_threshold_eV": 0.0}, "energy_threshold_eV"),
        ({"a": -1.0}, "a must be"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"skip_first_steps": 0}, "skip_first_steps"),
    ],
)
def test_invalid_settings_rejected(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        Calibrator(**{"energy_threshold_eV": K, **kwargs})


def test_zero_std_rejected():
    with pytest.raises(ConfigurationError, match="energy_std_eV"):
        Calibrator(energy_threshold_eV=K).confidence(0.0)


def test_min_counted_calls_dft_until_the_claim_rests_on_measured_errors():
    """With min_counted = 2 no step is skipped on the prior alone (off by default: the original)."""
    assert not Calibrator(energy_threshold_eV=K).needs_label(False, 0.999)  # the original: prior suffices
    cal = Calibrator(energy_threshold_eV=K, min_counted=2)
    cal.update(0, -1.0, 0.00217, -1.0)  # the first label: not counted
    cal.update(1, -1.0, 0.00217, -1.0)  # step 1 < skip_first_steps: not counted
    assert cal.n_total == 0 and cal.needs_label(False, 0.999)
    cal.update(3, 0.0, 0.00217, 0.5 * 0.00217)
    assert cal.n_total == 1 and cal.needs_label(False, 0.999)
    cal.update(4, 0.0, 0.00217, -0.5 * 0.00217)
    assert cal.n_total == 2 and not cal.needs_label(False, 0.999) and cal.needs_label(False, 0.5)
    assert Calibrator.from_dict(cal.to_dict()).min_counted == 2
    with pytest.raises(ConfigurationError, match="min_counted"):
        Calibrator(energy_threshold_eV=K, min_counted=-1)
