"""Accuracy and calibration metrics of energy predictions against reference labels.

Plain numpy/scipy functions used by the audit (``otfparsl audit``) and the report. The
uncertainty metrics are those of the paper's Appendix A (mean log-likelihood, AUC-ROC of the
predicted std for errors above a threshold) plus the calibration checks a user needs to trust
a threshold: the fraction of errors above K with its binomial interval, the rms z-score and the
coverage of the predicted 95 % interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

#: Confidence levels of the reliability diagram (observed vs nominal coverage).
RELIABILITY_LEVELS = tuple(round(x, 2) for x in np.linspace(0.1, 0.95, 18))


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Return the Clopper-Pearson (exact) interval of a binomial proportion ``k / n``.

    Returns ``(0.0, 1.0)`` when ``n == 0`` (nothing is known).
    """
    if n == 0:
        return 0.0, 1.0
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def auc_roc(score: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Return the area under the ROC curve of ``score`` for detecting ``positive``.

    The Mann-Whitney form: the probability that a random positive has a higher score than a
    random negative (ties count one half). None when there are no positives or no negatives,
    where the AUC is undefined.
    """
    s = np.asarray(score, dtype=float)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = stats.rankdata(s)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def student_t_interval(scale: np.ndarray, dof: np.ndarray, level: float) -> np.ndarray:
    """Half-width of the central ``level`` interval of ``scale * t(dof)``."""
    return np.asarray(scale) * stats.t.ppf((1.0 + level) / 2.0, np.asarray(dof))


def error_metrics(errors: np.ndarray, threshold: float) -> dict[str, Any]:
    """RMSE, MAE, max |error| and the fraction above ``threshold`` with its 95 % interval.

    Parameters
    ----------
    errors
        Predicted minus reference energies, shape (n,), eV.
    threshold
        K, eV.
    """
    e = np.asarray(errors, dtype=float)
    above = int(np.sum(np.abs(e) > threshold))
    low, high = binomial_interval(above, e.size)
    return {
        "n_frames": int(e.size),
        "energy_rmse_eV": float(np.sqrt(np.mean(e**2))) if e.size else None,
        "energy_mae_eV": float(np.mean(np.abs(e))) if e.size else None,
        "energy_max_abs_error_eV": float(np.max(np.abs(e))) if e.size else None,
        "energy_mean_error_eV": float(np.mean(e)) if e.size else None,
        "n_above_threshold": above,
        "fraction_above_threshold": above / e.size if e.size else None,
        "fraction_above_threshold_ci95": [low, high],
    }


def uncertainty_metrics(
    errors: np.ndarray, std: np.ndarray, scale: np.ndarray, dof: np.ndarray, threshold: float
) -> dict[str, Any]:
    """How well the predicted uncertainty describes the actual errors.

    Parameters
    ----------
    errors
        Predicted minus reference energies, shape (n,), eV.
    std
        The ensemble's energy_std (member spread and sigma_E), shape (n,), eV.
    scale, dof
        The calibrated Student-t predictive of the error (method.md section 5): scale
        ``s = std * sqrt((b + S/2)/(a + n/2))`` (eV) and degrees of freedom ``2a + n``.
    threshold
        K, eV.

    Returns
    -------
    dict
        ``rms_z_calibrated`` (rms of e / s), ``rms_z_ensemble`` (rms of e / std),
        ``coverage_95`` (fraction of |e| inside the predicted central 95 % interval) and
        ``n_inside_95`` (their number),
        ``mll_student_t`` (mean log density of e under the calibrated Student-t, log(1/eV)),
        ``mll_gaussian`` (under N(0, std^2)), ``auc_roc_std`` (AUC of std for |e| > K; None
        when all or no frames are above K), ``mean_confidence`` (mean predicted
        P(|e| <= K)), and ``reliability`` (observed coverage at each nominal level).
    """
    e, std, scale, dof = (np.asarray(x, dtype=float) for x in (errors, std, scale, dof))
    if e.size == 0:
        return {}
    coverage = {
        f"{level:.2f}": float(np.mean(np.abs(e) <= student_t_interval(scale, dof, level)))
        for level in RELIABILITY_LEVELS
    }
    confidence = 2.0 * stats.t.cdf(threshold / scale, dof) - 1.0
    inside_95 = np.abs(e) <= student_t_interval(scale, dof, 0.95)
    return {
        "rms_z_calibrated": float(np.sqrt(np.mean((e / scale) ** 2))),
        "rms_z_ensemble": float(np.sqrt(np.mean((e / std) ** 2))),
        "coverage_95": float(np.mean(inside_95)),
        "n_inside_95": int(np.sum(inside_95)),
        "mll_student_t": float(np.mean(stats.t.logpdf(e, dof, scale=scale))),
        "mll_gaussian": float(np.mean(stats.norm.logpdf(e, scale=std))),
        "auc_roc_std": auc_roc(std, np.abs(e) > threshold),
        "mean_confidence": float(np.mean(confidence)),
        "median_std_eV": float(np.median(std)),
        "median_scale_eV": float(np.median(scale)),
        "reliability": coverage,
    }


#: What an audit can say of the run's promise (P(|error| > K) below 1 - confidence at every step).
VERDICTS = {
    "kept": "promise kept",
    "not_shown": "consistent with the promise, not proof of it",
    "exceeded": "more frames above K than promised, not yet proof of a broken promise",
    "broken": "promise NOT kept",
}


@dataclass(frozen=True)
class AuditVerdict:
    """What held-out frames show of a run's claim, with the statistics it rests on.

    ``status`` is a key of :data:`VERDICTS`: ``kept`` and ``broken`` when the exact 95 %
    interval of the rate of frames above K lies wholly below or above the promised rate,
    ``not_shown`` and ``exceeded`` when the interval still contains it (too few frames to tell),
    split by the observed rate. ``calibration`` is ``overconfident`` (or ``underconfident``) when
    the 95 % interval of the fraction of errors inside the run's own 95 % predictive intervals
    lies wholly below (or above) 0.95, else ``consistent``; None without uncertainty metrics.
    """

    status: str
    n_frames: int
    n_above: int
    promise: float
    rate_ci95: tuple[float, float]
    frames_to_show: int
    calibration: str | None
    n_inside_95: int | None

    @property
    def headline(self) -> str:
        return VERDICTS[self.status]

    def sentence(self) -> str:
        """The verdict in words: its headline, then the numbers behind it."""
        return f"{self.headline}: {self.detail()}"

    def detail(self) -> str:
        """The numbers behind the verdict, in words (without its headline)."""
        low, high = self.rate_ci95
        seen = f"{self.n_above} of {self.n_frames} held-out frames {'was' if self.n_above == 1 else 'were'} above K"
        interval = f"the exact 95 % interval of the rate is {low:.2f}-{high:.2f}"
        text = {
            "kept": f"{seen}, and {interval}, at most {self.promise:.0%}",
            "broken": f"{seen}, and {interval}, above {self.promise:.0%}",
            "exceeded": (f"{seen} (more than {self.promise:.0%}), but {interval}, which still contains "
                         f"{self.promise:.0%}: label more frames to tell how often"),
            "not_shown": (f"{seen}, but {interval}, which reaches above {self.promise:.0%}: "
                          f"at least {self.frames_to_show} frames with none above K would show the promise"),
        }[self.status]  # fmt: skip
        if self.status == "not_shown" and self.n_above:
            text += f"; with {self.n_above} above K, at least {frames_to_show(self.promise, self.n_above)}"
        out = f"{text}."
        if self.calibration in ("overconfident", "underconfident"):
            low_c, high_c = binomial_interval(self.n_inside_95 or 0, self.n_frames)
            out += (f" The run's 95 % predictive intervals held {self.n_inside_95} of {self.n_frames} errors "
                    f"(95 % interval {low_c:.2f}-{high_c:.2f}): its calibration was {self.calibration} on these frames.")  # fmt: skip
        return out


def frames_to_show(promise: float, above: int = 0, level: float = 0.95) -> int:
    """The fewest frames, ``above`` of them above K, whose exact ``level`` interval lies at or
    below ``promise``.

    The Clopper-Pearson upper end falls as n grows. The search starts where it can first be
    met: ``1 - ((1 - level) / 2) ** (1 / n)`` for none above K (where it is met at once), and
    at least ``above / promise`` frames.
    """
    n = max(math.ceil(math.log((1.0 - level) / 2.0) / math.log(1.0 - promise)), math.ceil(above / promise))
    while binomial_interval(above, n, level)[1] > promise:
        n += 1
    return n


def audit_verdict(recorded: dict[str, Any], confidence_level: float) -> AuditVerdict:
    """Judge the run's claim from the audit's ``recorded`` metrics (:func:`error_metrics` and
    :func:`uncertainty_metrics` of the held-out frames).

    Parameters
    ----------
    recorded
        The audit's metrics of what the run claimed at the held-out frames.
    confidence_level
        The run's ``calibration.confidence``: it promised P(|error| > K) < 1 - confidence_level.
    """
    n, above = int(recorded["n_frames"]), int(recorded["n_above_threshold"])
    promise = 1.0 - confidence_level
    low, high = binomial_interval(above, n)
    if high <= promise:
        status = "kept"
    elif low > promise:
        status = "broken"
    else:
        status = "exceeded" if above > promise * n else "not_shown"
    inside, calibration = None, None
    if recorded.get("coverage_95") is not None and n:
        inside = int(recorded.get("n_inside_95", round(recorded["coverage_95"] * n)))
        low_c, high_c = binomial_interval(inside, n)
        calibration = "overconfident" if high_c < 0.95 else "underconfident" if low_c > 0.95 else "consistent"
    return AuditVerdict(status, n, above, promise, (low, high), frames_to_show(promise), calibration, inside)


def heldout_figures(scores: Sequence[dict[str, Any]], threshold: float, confidence_level: float) -> dict[str, Any]:
    """The in-run held-out checks' figures: what ``otfparsl audit`` reports, on the run's own checks.

    Parameters
    ----------
    scores
        The ``heldout`` events of ``events.jsonl`` (``error_eV``, ``energy_std``,
        ``energy_scale_eV``, ``dof``, ``confidence`` each).
    threshold
        K, eV.
    confidence_level
        The run's ``calibration.confidence``.

    Returns
    -------
    dict
        ``frames``, ``above_threshold``, ``fraction_above_threshold`` with its exact 95 %
        interval, ``rms_z_calibrated``, ``coverage_95``, ``n_inside_95``, ``energy_rmse_eV``,
        ``spearman_std_abs_error`` and the :func:`audit_verdict` (``status``, ``headline``,
        ``detail`` and the whole sentence, ``verdict``); ``frames`` 0 and no other figure before the first check.
    """
    if not scores:
        return {"frames": 0, "verdict": "no held-out check yet"}
    errors = np.array([s["error_eV"] for s in scores], dtype=float)
    std = np.array([s["energy_std"] for s in scores], dtype=float)
    recorded = {
        **error_metrics(errors, threshold),
        **uncertainty_metrics(errors, std, np.array([s["energy_scale_eV"] for s in scores], dtype=float),
                              np.array([s["dof"] for s in scores], dtype=float), threshold),
    }  # fmt: skip
    verdict = audit_verdict(recorded, confidence_level)
    varied = errors.size > 2 and np.ptp(std) > 0 and np.ptp(np.abs(errors)) > 0  # else rho is undefined
    rho = stats.spearmanr(std, np.abs(errors)).statistic if varied else float("nan")
    return {
        "frames": recorded["n_frames"], "above_threshold": recorded["n_above_threshold"],
        "fraction_above_threshold": recorded["fraction_above_threshold"],
        "fraction_above_threshold_ci95": recorded["fraction_above_threshold_ci95"],
        "rms_z_calibrated": recorded["rms_z_calibrated"], "coverage_95": recorded["coverage_95"],
        "n_inside_95": recorded["n_inside_95"], "energy_rmse_eV": recorded["energy_rmse_eV"],
        "spearman_std_abs_error": None if not np.isfinite(rho) else float(rho),
        "status": verdict.status, "headline": verdict.headline, "detail": verdict.detail(),
        "verdict": verdict.sentence(),
    }  # fmt: skip
