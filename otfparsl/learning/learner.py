"""The on-the-fly loop of one MD step: predict, decide, label, learn, return (method.md 6).

One :class:`Learner` is shared by every MD walker of a run. A step whose prediction is
confident waits on nothing but the ensemble; a walker waiting for DFT does not hold up the
other walkers; chain updates are serialised by the :class:`~otfparsl.learning.posterior.Posterior`
so each sees every label.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from ase import Atoms

from otfparsl.data import LabelledDataset
from otfparsl.errors import ConfigurationError, NonFinitePrediction
from otfparsl.jsonable import plain
from otfparsl.learning.heldout import HeldOutPlan, HeldOutScore, HeldOutTally
from otfparsl.learning.oracle import Oracle
from otfparsl.learning.posterior import Posterior, divergence_events
from otfparsl.learning.rule import Decision, DecisionRule

log = logging.getLogger(__name__)

EventFn = Callable[[dict], None]


@dataclass
class StepOutcome:
    """What happened at one MD step of one walker.

    ``results`` are the values the MD step used (DFT + offset on an intervention, else the
    ensemble's); ``prediction`` is what the ensemble predicted before any label.
    """

    results: dict
    prediction: dict
    confidence: float
    intervened: bool
    generation: int
    label_failed: bool = False
    heldout: bool = False  # a held-out DFT check was made at this step (MD used the prediction)
    record: dict = field(default_factory=dict)
    energy_scale_eV: float = float("nan")
    dof: float = float("nan")

    def as_dict(self) -> dict:
        """The outcome as a dict of its fields (no copies; checkpoint snapshots)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class LearnerState:
    """The learner's own state in a checkpoint (calibration and files are saved apart)."""

    energy_offset_eV: float | None
    generation: int
    labels_in_ensemble: int
    n_labels: int
    consecutive_failures: int
    timers: dict[str, float]
    heldout: dict = field(default_factory=lambda: HeldOutTally().as_dict())

    def as_dict(self) -> dict:
        """Return the state as a plain dict."""
        return asdict(self)


class Learner:
    """The method's loop over its parts, shared by every MD walker of a run.

    Parameters
    ----------
    posterior
        The ensemble and its chain updates.
    rule
        Calibration, offset and the DFT decision.
    oracle
        DFT labels with retries and the failure budget.
    dataset
        The labelled data set (``labels.extxyz``).
    events
        Receives one dict per label, update and anomaly.
    heldout
        Which MD steps get a held-out DFT check (:mod:`otfparsl.learning.heldout`), and the
        data set their labels go to (never the training set); None: no checks.
    """

    def __init__(
        self, posterior: Posterior, rule: DecisionRule, oracle: Oracle, dataset: LabelledDataset,
        events: EventFn = lambda event: None, heldout: tuple[HeldOutPlan, LabelledDataset] | None = None,
    ) -> None:  # fmt: skip
        self.posterior, self.rule, self.oracle, self.dataset = posterior, rule, oracle, dataset
        self._events = events
        self.heldout_plan, self.heldout_set = heldout if heldout is not None else (None, None)
        self.heldout = HeldOutTally()
        self.busy: set[int] = set()  # walkers inside an intervening MD step (not checkpointable)
        self._data_lock = threading.Lock()

    def step(self, atoms: Atoms, step: int = 0, walker: int = 0) -> StepOutcome:
        """Run the method on one MD step: predict, decide, label, learn, return."""
        prediction = self.posterior.predict(atoms)
        decision = self.rule.decide(prediction)
        if not decision.finite:
            self._non_finite(step, walker)
        if not decision.needs_dft:
            checked = self._check_heldout(atoms, prediction, decision, step, walker)
            return self._outcome(prediction, prediction, decision, intervened=False, heldout=checked)
        with self._data_lock:
            self.busy.add(walker)  # released by the checkpointer once the step is recorded
        labelled = self.oracle.label(atoms, step, walker)
        if labelled is None and not decision.finite:
            raise NonFinitePrediction(_non_finite_message(step, walker))
        if labelled is None:  # skipped: MD goes on with the ensemble
            return self._outcome(prediction, prediction, decision, intervened=True, label_failed=True)
        record, n_labels = self._learn(labelled, prediction, decision, step, walker)
        self._update_chains(n_labels)
        return self._outcome(self.rule.dft_results(labelled), prediction, decision, intervened=True, record=record)

    def _learn(
        self, labelled: Atoms, prediction: dict, decision: Decision, step: int, walker: int
    ) -> tuple[dict, int]:
        """Calibrate on the label and add it to the data set (one consistent moment)."""
        with self._data_lock:
            record = plain(self.rule.observe(labelled, prediction, step).to_dict())
            _store_prediction(labelled, prediction, decision.confidence, step, walker, self.generation)
            self.dataset.append(labelled)
            e_dft = float(labelled.get_potential_energy())
            self._events(
                {
                    "event": "label", "step": step, "walker": walker, "n_labels": len(self.dataset),
                    "energy_dft": e_dft, "energy_dft_offset": e_dft + self.rule.energy_offset_eV,
                    "energy_pred": float(prediction["energy"]),
                    "energy_std": float(prediction["energy_std"]), "confidence": decision.confidence,
                    "seconds": float(labelled.info.get("label_seconds", float("nan"))), **record,
                }
            )  # fmt: skip
            return record, len(self.dataset)

    def _check_heldout(self, atoms: Atoms, prediction: dict, decision: Decision, step: int, walker: int) -> bool:
        """Label a held-out step and score what the run claimed there (MD keeps the prediction).

        Returns True when DFT was called (the step is then checkpointed like an intervention).
        """
        if self.heldout_plan is None or not self.rule.has_reference or not self.heldout_plan.selects(walker, step):
            return False
        with self._data_lock:
            self.busy.add(walker)  # released by the checkpointer once the step is recorded
        labelled = self.oracle.label(atoms, step, walker)
        if labelled is None:  # skipped like any failed label; nothing is scored
            return True
        e_dft = float(labelled.get_potential_energy())
        score = HeldOutScore.score(
            step, walker, float(prediction["energy"]), e_dft + self.rule.energy_offset_eV,
            float(prediction["energy_std"]), decision.energy_scale_eV, decision.dof, decision.confidence,
            self.rule.calibrator.energy_threshold_eV,
        )  # fmt: skip
        with self._data_lock:
            self.heldout.add(score)
            _store_prediction(labelled, prediction, decision.confidence, step, walker, self.generation)
            labelled.info.update(error_eV=score.error_eV, energy_scale_eV=score.energy_scale_eV, dof=score.dof)
            self.heldout_set.append(labelled)
            self._events(
                {
                    "event": "heldout", **score.as_dict(), "energy_dft": e_dft,
                    "generation": self.generation, "seconds": float(labelled.info.get("label_seconds", float("nan"))),
                    "tally": self.heldout.as_dict(),
                }
            )  # fmt: skip
        return True

    def _update_chains(self, n_labels: int) -> None:
        update = self.posterior.update(n_labels, self.rule.energy_offset_eV, self._count_labels)
        if update is not None:
            for event in (update, *divergence_events(update)):
                self._events(event)

    def _outcome(self, results: dict, prediction: dict, decision: Decision, **flags) -> StepOutcome:
        return StepOutcome(
            results, prediction, decision.confidence, generation=self.generation,
            energy_scale_eV=decision.energy_scale_eV, dof=decision.dof, **flags,
        )  # fmt: skip

    def _non_finite(self, step: int, walker: int) -> None:
        self._events({"event": "non_finite_prediction", "step": step, "walker": walker, "generation": self.generation})
        log.warning("non-finite ensemble prediction at step %d: DFT takes the step", step)

    def _count_labels(self) -> int:
        with self._data_lock:
            return len(self.dataset)

    # ---------------------------------------------------------------- views of the parts
    @property
    def n_labels(self) -> int:
        """Number of labelled structures so far."""
        return len(self.dataset)

    @property
    def generation(self) -> int:
        """Number of chain updates applied so far."""
        return self.posterior.generation

    @property
    def energy_offset_eV(self) -> float | None:
        """c of method.md section 6 (None before the first label)."""
        return self.rule.energy_offset_eV

    @property
    def timers(self) -> dict[str, float]:
        """Wall time spent in each part of the loop, s (summed over walkers)."""
        return {"inference_s": self.posterior.predict_s, "label_s": self.oracle.seconds,
                "update_s": self.posterior.update_s}  # fmt: skip

    # ---------------------------------------------------------------- checkpoints
    def release(self, walker: int) -> None:
        """Mark the MD step of ``walker`` as finished (its state can be checkpointed again)."""
        with self._data_lock:
            self.busy.discard(walker)

    @contextlib.contextmanager
    def consistent(self) -> Iterator[LearnerState | None]:
        """Hold the data lock; yield :meth:`state`, or None while a walker is in a DFT step.

        While the context is open no label can join the data set, so what the caller saves next
        to the yielded state (calibration, file sizes) belongs to the same moment.
        """
        with self._data_lock:
            yield None if self.busy else self.state()

    def state(self) -> LearnerState:
        """The learner's state for a checkpoint."""
        return LearnerState(
            energy_offset_eV=self.rule.energy_offset_eV, generation=self.posterior.generation,
            labels_in_ensemble=self.posterior.labels_seen, n_labels=len(self.dataset),
            consecutive_failures=self.oracle.consecutive_failures, timers=self.timers,
            heldout=self.heldout.as_dict(),
        )  # fmt: skip

    def restore(self, state: LearnerState) -> None:
        """Restore a :meth:`state` (after the data set and chains are restored)."""
        if state.n_labels != len(self.dataset):
            raise ConfigurationError(
                f"the checkpoint expects {state.n_labels} labels but labels.extxyz holds "
                f"{len(self.dataset)}; the run directory is inconsistent. Restart from scratch."
            )
        self.rule.energy_offset_eV = state.energy_offset_eV
        self.posterior.generation, self.posterior.labels_seen = state.generation, state.labels_in_ensemble
        self.oracle.consecutive_failures = state.consecutive_failures
        self.heldout = HeldOutTally(**state.heldout)
        self.posterior.predict_s = state.timers["inference_s"]
        self.oracle.seconds = state.timers["label_s"]
        self.posterior.update_s = state.timers["update_s"]


def _non_finite_message(step: int, walker: int) -> str:
    return (
        f"the ensemble's prediction at MD step {step} (walker {walker}) is not finite and DFT could "
        "not label that step, so MD cannot go on (a non-finite force never drives MD); the last "
        "checkpoint, before that step, is kept. See the label_failed event in events.jsonl and the "
        "code's output in dft/, fix the labeler section of RUN_DIR/run.yaml (e.g. labeler.retries) "
        "and run `otfparsl resume RUN_DIR`; if chain_diverged events precede it, start over with a "
        "smaller bayes.step_size"
    )


def _store_prediction(
    labelled: Atoms, prediction: dict, confidence: float, step: int, walker: int, generation: int
) -> None:
    """Keep what the ensemble predicted next to the label (``labels.extxyz`` info/arrays)."""
    labelled.info.update(
        pred_energy=float(prediction["energy"]), pred_energy_std=float(prediction["energy_std"]),
        confidence=float(confidence), step=int(step), walker=int(walker), generation=int(generation),
    )  # fmt: skip
    labelled.arrays["pred_forces"] = np.asarray(prediction["forces"], dtype=float)
    labelled.arrays["pred_forces_std"] = np.asarray(prediction["forces_std"], dtype=float)
