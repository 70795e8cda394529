"""The Student-t predictive of the energy error (method.md section 5): confidence and skip bound."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats


def student_t_confidence(threshold: float, scale: Any, nu: float) -> np.ndarray:
    """Return ``P(|e| <= threshold)`` for ``e ~ scale * t(nu)``.

    Parameters
    ----------
    threshold
        Error threshold K (same unit as ``scale``).
    scale
        Student-t scale(s) s, any shape.
    nu
        Degrees of freedom.

    Returns
    -------
    numpy.ndarray
        ``2 F_t(K / s; nu) - 1``, same shape as ``scale``.
    """
    ratio = threshold / np.asarray(scale, dtype=float)
    return 2.0 * stats.t.cdf(ratio, df=nu) - 1.0


def min_ratio_for_skip(a: float, b: float, n: float, mean_z2: float, level: float = 0.95) -> float:
    """Return the smallest ``K / sigma_bar`` for which DFT may be skipped.

    Parameters
    ----------
    a, b
        Shape and rate of the Gamma prior on the precision factor lambda.
    n
        Number of counted interventions (``math.inf`` gives the Gaussian limit).
    mean_z2
        Mean squared z-score ``S / n`` (ignored when ``n == 0``).
    level
        Confidence level in (0, 1).

    Returns
    -------
    float
        ``t_{(1+level)/2}(2a + n) * sqrt((b + n mean_z2 / 2) / (a + n / 2))``; for ``n -> inf``
        this tends to ``z_{(1+level)/2} * sqrt(mean_z2)`` (1.96 sqrt(mean_z2) at 0.95).

    Notes
    -----
    Sanity values (method.md section 5): a = 1.5, b = 10, n = 0 gives 8.22; n = 50 with
    mean_z2 = 1 gives 2.31.
    """
    quantile = (1.0 + level) / 2.0
    if math.isinf(n):
        return float(stats.norm.ppf(quantile) * math.sqrt(mean_z2))
    scale = math.sqrt((b + n * mean_z2 / 2.0) / (a + n / 2.0))
    return float(stats.t.ppf(quantile, df=2.0 * a + n) * scale)
