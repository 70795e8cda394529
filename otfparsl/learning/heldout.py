"""In-run held-out labels: the run checks its own claim on MD steps the decision did not choose.

The decision rule labels the steps where the ensemble was least sure; the calibration sees only
those (method.md section 8), so a run's own statistics say nothing of the steps it did not label.
A held-out label is a DFT label of an MD step drawn at random in time, among the steps the rule
let the ensemble take:

- **Which steps.** ``n`` checks per walker: the programme's MD steps after the first are cut
  into ``n`` equal stretches and one step is drawn uniformly at random in each, from the run's
  seed and the walker alone. So the checks are reproducible on resume, not predictable from the
  trajectory (nothing in the structure or the uncertainty makes a step more likely to be
  checked), spread over the whole programme (every temperature, early and late), and sample the
  MD's own distribution of states, which is what the promise is about. A fixed number per run,
  rather than a fraction of steps or one per N decided labels, makes the price of the check known
  before the run (``n`` DFT calls per walker, whatever the programme's length) and keeps checking
  a run whose rule has stopped labelling (the failure of method.md section 8). A drawn step that
  the rule labels anyway is no held-out check: the promise is about the steps it does not label.
- **Scored before use.** The ensemble's prediction at that step and the calibrated Student-t
  predictive the rule decided with (scale, dof) are scored against DFT + the run's energy offset:
  error, z, inside the central 95 % interval, above K. The label never joins the training set
  and MD goes on with the ensemble's prediction, so a held-out check changes nothing of the run
  but its DFT bill: the score is of the run as it would have been without it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

#: Separates the held-out draws from every other random stream of a run.
HELDOUT_STREAM = 0x4E1D


@dataclass(frozen=True)
class HeldOutPlan:
    """Which MD steps get a held-out check: one drawn in each of ``n_labels`` equal stretches.

    Parameters
    ----------
    n_labels
        Checks per walker (0: none).
    total_steps
        MD steps of the programme after the first (steps 1 to ``total_steps`` are drawn from).
    seed
        The run's seed (``md.seed``).
    """

    n_labels: int
    total_steps: int
    seed: int

    def steps(self, walker: int) -> frozenset[int]:
        """The MD steps of ``walker`` that are held out (the same set on every call)."""
        return _drawn_steps(self.n_labels, self.total_steps, self.seed, walker)

    def selects(self, walker: int, step: int) -> bool:
        """True when MD step ``step`` of ``walker`` is held out."""
        return step in self.steps(walker)


@functools.lru_cache(maxsize=64)
def _drawn_steps(n_labels: int, total_steps: int, seed: int, walker: int) -> frozenset[int]:
    if n_labels <= 0 or total_steps <= 0:
        return frozenset()
    rng = np.random.default_rng([HELDOUT_STREAM, int(seed), int(walker)])
    edges = np.floor(np.linspace(1, total_steps + 1, n_labels + 1)).astype(int)
    return frozenset(int(rng.integers(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo)


@dataclass(frozen=True)
class HeldOutScore:
    """One held-out check: what the run claimed at an MD step, against DFT.

    ``error_eV`` is the ensemble's energy minus (DFT + the run's offset); ``energy_scale_eV`` and
    ``dof`` the calibrated Student-t the rule decided with at that step; ``z`` = error / scale;
    ``inside_95``: |error| within the predictive's central 95 % interval.
    """

    step: int
    walker: int
    error_eV: float
    energy_std: float
    energy_scale_eV: float
    dof: float
    confidence: float
    z: float
    inside_95: bool
    above_threshold: bool

    @classmethod
    def score(
        cls, step: int, walker: int, predicted_eV: float, reference_eV: float, energy_std: float,
        energy_scale_eV: float, dof: float, confidence: float, threshold_eV: float,
    ) -> HeldOutScore:  # fmt: skip
        """Score a prediction against its reference (DFT + offset), all in eV."""
        error = float(predicted_eV) - float(reference_eV)
        half_width = float(energy_scale_eV) * float(stats.t.ppf(0.975, dof))
        return cls(
            step=int(step), walker=int(walker), error_eV=error, energy_std=float(energy_std),
            energy_scale_eV=float(energy_scale_eV), dof=float(dof), confidence=float(confidence),
            z=error / float(energy_scale_eV), inside_95=bool(abs(error) <= half_width),
            above_threshold=bool(abs(error) > threshold_eV),
        )  # fmt: skip

    def as_dict(self) -> dict:
        """The score as a plain dict (an event's fields)."""
        return asdict(self)


@dataclass
class HeldOutTally:
    """Running counts of the held-out checks (checkpointed with the learner)."""

    n: int = 0
    above: int = 0
    inside_95: int = 0
    z2_sum: float = 0.0

    def add(self, score: HeldOutScore) -> None:
        """Count one score."""
        self.n += 1
        self.above += int(score.above_threshold)
        self.inside_95 += int(score.inside_95)
        self.z2_sum += score.z**2

    @property
    def rms_z(self) -> float | None:
        """rms of the z-scores (1 when the calibrated scale is honest); None before a check."""
        return math.sqrt(self.z2_sum / self.n) if self.n else None

    def as_dict(self) -> dict:
        """The counts as a plain dict."""
        return asdict(self)
