"""DFT-call rates near events: the window mask, the counts and Fisher's exact test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from otfparsl.analysis.events import inside_windows, window_rate_test


def test_window_mask_takes_the_nearest_event_on_either_side():
    times = np.arange(0.0, 100.0, 1.0)
    mask = inside_windows(times, [20.0, 70.0], 5.0)
    assert list(np.flatnonzero(mask)) == [*range(15, 26), *range(65, 76)]
    assert not inside_windows(times, [], 5.0).any()


def test_counts_rates_and_the_exact_test():
    times = np.arange(0.0, 1000.0, 0.5)
    rng = np.random.default_rng(0)
    events = [100.0, 400.0, 800.0]
    inside = inside_windows(times, events, 15.0)
    called = np.where(inside, rng.random(times.size) < 0.2, rng.random(times.size) < 0.02)
    result = window_rate_test(times, called, events, 15.0)
    k_in, n_in = int(called[inside].sum()), int(inside.sum())
    k_out, n_out = int(called[~inside].sum()), int((~inside).sum())
    assert (result["calls_inside"], result["steps_inside"], result["calls_outside"], result["steps_outside"]) == (k_in, n_in, k_out, n_out)
    assert result["rate_ratio"] == pytest.approx((k_in / n_in) / (k_out / n_out))
    expected = stats.fisher_exact([[k_in, n_in - k_in], [k_out, n_out - k_out]], alternative="greater")[1]
    assert result["p_value"] == pytest.approx(expected) and result["p_value"] < 1e-6
    assert result["fraction_of_time_inside"] == pytest.approx(n_in / times.size)


def test_no_calls_near_events_is_not_significant():
    times = np.arange(0.0, 200.0, 1.0)
    called = ~inside_windows(times, [100.0], 10.0) & (times % 7 == 0)
    result = window_rate_test(times, called, [100.0], 10.0)
    assert result["calls_inside"] == 0 and result["p_value"] == pytest.approx(1.0)
