"""On-the-fly calibration of the ensemble's uncertainty and the DFT decision (method.md section 5).

The ensemble reports a predictive standard deviation ``sigma_bar`` for the total energy of a
structure. Its actual error ``e = E_pred - E_true`` is modelled as

    e | lambda ~ N(0, sigma_bar**2 / lambda),      lambda ~ Gamma(shape=a, rate=b).

After ``n`` counted interventions with squared z-scores summing to ``S`` the posterior is
``lambda ~ Gamma(a + n/2, b + S/2)`` and the predictive error is Student-t with ``nu = 2a + n``
degrees of freedom and scale ``s = sigma_bar * sqrt((b + S/2) / (a + n/2))``. The confidence
that the error is within the threshold ``K`` is

    C = P(|e| <= K) = 2 F_t(K / s; nu) - 1,

and DFT is called on the first step or when ``C`` is below the confidence level (0.95).

Extensions (off by default):

- ``ema_decay = d``: for systems whose miscalibration drifts, the sufficient statistics are
  discounted at every counted intervention, ``S <- d S + z**2`` and ``n <- d n + 1``. Then
  ``S / n`` is the exponential moving average of ``z**2`` (weights ``d**k`` normalised) and the
  effective number of observations saturates at ``1 / (1 - d)``, so old evidence is forgotten and
  the posterior can follow a change of the miscalibration factor. The undiscounted totals are
  kept as well (``S_total``, ``n_total``) for reporting.
- ``force_threshold_eV_per_A = K_F``: the same Gamma/Student-t machinery on every force
  component, with its own statistics (``force_S``, ``force_n``; every component of every
  labelled structure is one observation). The force confidence is that of the least certain
  component (largest ``forces_std``); the overall confidence is the smaller of the energy and
  force confidences, so skipping DFT needs both to be confident.
"""

from otfparsl.calibration.calibrator import CalibrationRecord, Calibrator
from otfparsl.calibration.predictive import min_ratio_for_skip, student_t_confidence

__all__ = ["CalibrationRecord", "Calibrator", "min_ratio_for_skip", "student_t_confidence"]
