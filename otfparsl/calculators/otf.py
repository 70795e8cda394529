"""OnTheFlyCalculator: the ensemble plus the DFT decision, as the ASE calculator of one MD walker.

Each walker's calculator asks the run's shared :class:`~otfparsl.learning.Learner` for the
results of its MD step; the learner runs the method's loop (predict, decide, label, learn,
return; method.md section 6). This module never imports parsl.
"""

from __future__ import annotations

from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from otfparsl.learning import Learner, StepOutcome


class OnTheFlyCalculator(Calculator):
    """ASE calculator of one MD walker: ensemble mean when confident, DFT otherwise.

    Parameters
    ----------
    learner
        The shared state (one per run, possibly several walkers).
    walker
        Index of this walker (for the logs).

    Notes
    -----
    ``results`` always hold ``energy``, ``forces`` (and ``stress`` for periodic cells) of the
    value the MD step used. ``energy_std``, ``forces_std``, ``confidence``, ``intervened`` and
    ``generation`` describe the decision; on an intervention the stds are those of the
    prediction made before the label.
    """

    implemented_properties = (
        "energy", "free_energy", "forces", "stress", "energy_std", "forces_std", "stress_std",
    )  # fmt: skip

    def __init__(self, learner: Learner, walker: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.learner = learner
        self.walker = walker
        self.step_count = 0
        self.last: StepOutcome | None = None

    def calculate(
        self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        outcome = self.learner.step(self.atoms, step=self.step_count, walker=self.walker)
        self.step_count += 1
        results = dict(outcome.results)
        for key in ("energy_std", "forces_std", "stress_std"):
            if key in outcome.prediction:
                results.setdefault(key, outcome.prediction[key])
        self.results = results
        self.last = outcome

    def snapshot(self) -> dict:
        """State needed to continue exactly: step count, cached results, last outcome."""
        last = self.last.as_dict() if self.last is not None else None
        return {"step_count": self.step_count, "results": dict(self.results), "last": last}

    def restore(self, atoms: Atoms, state: dict) -> None:
        """Restore :meth:`snapshot` for ``atoms`` (already at the snapshot's positions).

        The cached results make the integrator's next force call a cache hit, exactly as in
        the uninterrupted run, instead of a new (and counted) on-the-fly step.
        """
        self.step_count = int(state["step_count"])
        self.atoms = atoms.copy()
        self.results = dict(state["results"])
        last = state.get("last")
        self.last = StepOutcome(**last) if last is not None else None
