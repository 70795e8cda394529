"""The on-the-fly method's loop and its parts, one job each (method.md section 6). No Parsl.

- :class:`~otfparsl.learning.posterior.Posterior`: the ensemble of posterior samples; predicts,
  and updates the M chains on new labels (serialised; it owns the generation).
- :class:`~otfparsl.learning.rule.DecisionRule`: calibration, energy offset, the DFT decision.
- :class:`~otfparsl.learning.oracle.Oracle`: DFT labels with retries and the failure budget.
- :class:`~otfparsl.learning.learner.Learner`: the loop of one MD step over those parts,
  shared by every MD walker: predict, decide, label, learn, return.

Labelling and chain updates are injected as objects returning futures, so the loop runs on
thread pools, on Parsl executors, or synchronously in tests.
"""

from otfparsl.learning.learner import Learner, LearnerState, StepOutcome
from otfparsl.learning.oracle import Oracle
from otfparsl.learning.posterior import ChainUpdater, Posterior
from otfparsl.learning.rule import Decision, DecisionRule

__all__ = [
    "ChainUpdater",
    "Decision",
    "DecisionRule",
    "Learner",
    "LearnerState",
    "Oracle",
    "Posterior",
    "StepOutcome",
]
