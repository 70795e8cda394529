"""In-run held-out checks: which steps, how they are scored, and that they change nothing of the run."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from otfparsl.learning.heldout import HeldOutPlan, HeldOutScore, HeldOutTally


def test_one_step_is_drawn_in_each_stretch_reproducibly_and_per_walker():
    plan = HeldOutPlan(n_labels=20, total_steps=600, seed=1)
    steps = sorted(plan.steps(0))
    assert len(steps) == 20
    for k, step in enumerate(steps):  # stretches of 30 steps: 1-30, 31-60, ...
        assert 1 + 30 * k <= step <= 30 * (k + 1)
    assert HeldOutPlan(20, 600, 1).steps(0) == plan.steps(0)  # a resumed run draws the same
    assert plan.steps(1) != plan.steps(0) and HeldOutPlan(20, 600, 2).steps(0) != plan.steps(0)
    assert plan.selects(0, steps[3]) and not plan.selects(0, 0)  # step 0 is always labelled anyway


def test_the_draw_is_uniform_within_each_stretch():
    draws = np.concatenate([sorted(HeldOutPlan(4, 400, seed).steps(0)) for seed in range(2000)]).reshape(-1, 4)
    first = draws[:, 0]  # uniform on 1..100
    assert stats.kstest((first - 0.5) / 100.0, "uniform").pvalue > 1e-3
    assert first.min() == 1 and first.max() == 100


def test_more_checks_than_steps_labels_each_step_at_most_once_and_none_is_none():
    assert HeldOutPlan(50, 10, 0).steps(0) == frozenset(range(1, 11))
    assert HeldOutPlan(0, 10, 0).steps(0) == frozenset() and HeldOutPlan(5, 0, 0).steps(0) == frozenset()


def test_a_score_is_the_claim_against_dft():
    score = HeldOutScore.score(step=5, walker=0, predicted_eV=-10.03, reference_eV=-10.0, energy_std=0.01,
                               energy_scale_eV=0.02, dof=8.0, confidence=0.97, threshold_eV=0.0434)  # fmt: skip
    assert score.error_eV == pytest.approx(-0.03) and score.z == pytest.approx(-1.5)
    assert score.inside_95 == (0.03 <= 0.02 * stats.t.ppf(0.975, 8.0)) and not score.above_threshold
    tally = HeldOutTally()
    tally.add(score)
    tally.add(HeldOutScore.score(6, 0, -9.9, -10.0, 0.01, 0.02, 8.0, 0.9, 0.0434))
    assert (tally.n, tally.above, tally.inside_95) == (2, 1, 1)
    assert tally.rms_z == pytest.approx(np.sqrt((1.5**2 + 5.0**2) / 2))
