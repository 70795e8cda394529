"""OnTheFlyCalculator: the ensemble plus the DFT decision, for MD (method.md section 6).

A :class:`Learner` is the state shared by every MD walker of a run: the ensemble, the
calibrator, the labelled data set, the energy offset, and two injected callables that return
futures, ``label(atoms)`` (a DFT calculation) and ``update(n_labels)`` (the M chain updates).
Each walker's :class:`OnTheFlyCalculator` asks the learner for the results of its MD step. A step
whose prediction is confident never waits on anything but the ensemble; a walker waiting for DFT
does not hold up the other walkers; chain updates are serialised so that each sees every label.
This module never imports parsl: the futures may come from any executor.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from otfparsl.calculators.ensemble import EnsembleCalculator, summarise_members
from otfparsl.calibration import CalibrationRecord, Calibrator
from otfparsl.data import LabelledDataset
from otfparsl.errors import (
    ConfigurationError,
    LabelingFailed,
    MissingDependencyError,
    OtfparslError,
)

log = logging.getLogger(__name__)

LabelFn = Callable[[Atoms, int], Future]
UpdateFn = Callable[[int, int], Future]
ReloadFn = Callable[[], Sequence[dict]]
EventFn = Callable[[dict], None]


class TooManyLabelFailures(OtfparslError):
    """Consecutive DFT failures reached the configured limit; the run stops cleanly."""


@dataclass
class Timers:
    """Wall time spent in each part of the loop, seconds (summed over walkers)."""

    inference_s: float = 0.0
    label_s: float = 0.0
    update_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """Return the timers as a plain dict."""
        return {"inference_s": self.inference_s, "label_s": self.label_s, "update_s": self.update_s}


@dataclass
class StepOutcome:
    """What happened at one MD step of one walker."""

    results: dict
    prediction: dict
    confidence: float
    intervened: bool
    generation: int
    label_failed: bool = False
    record: dict = field(default_factory=dict)
    energy_scale_eV: float = float("nan")
    dof: float = float("nan")


class Learner:
    """Shared on-the-fly state: ensemble, calibration, data set, offset, label/update futures.

    Parameters
    ----------
    ensemble
        The current posterior samples as an ASE calculator.
    calibrator
        Calibration state and decision rule (method.md section 5).
    dataset
        The labelled data set (``labels.extxyz``).
    label
        ``label(atoms, attempt) -> Future[Atoms]``: the DFT-labelled structure (raw DFT values);
        ``attempt`` counts the retries of this structure (0 first), so the caller can change
        the DFT settings between attempts.
    update
        ``update(n_labels, generation) -> Future``: update all chains on the first ``n_labels``
        labels; afterwards every chain holds its ``generation``-th sample.
    reload
        Read the chains' new samples once an update is done.
    events
        Receives one dict per label and per update (timings included).
    energy_offset_eV
        c of method.md section 6; None until the first label fixes it.
    label_retries
        Extra attempts after a failed label before that structure is skipped.
    max_consecutive_failures
        Stop (raise :class:`TooManyLabelFailures`) after this many skipped structures in a row.
    """

    def __init__(
        self,
        ensemble: EnsembleCalculator,
        calibrator: Calibrator,
        dataset: LabelledDataset,
        label: LabelFn,
        update: UpdateFn,
        reload: ReloadFn,
        events: EventFn = lambda event: None,
        energy_offset_eV: float | None = None,
        label_retries: int = 1,
        max_consecutive_failures: int = 3,
    ) -> None:
        self.ensemble = ensemble
        self.calibrator = calibrator
        self.dataset = dataset
        self._label, self._update, self._reload = label, update, reload
        self._events = events
        self.energy_offset_eV = energy_offset_eV
        self.label_retries = label_retries
        self.max_consecutive_failures = max_consecutive_failures
        self.generation = 0
        self.labels_in_ensemble = len(dataset)
        self.consecutive_failures = 0
        self.timers = Timers()
        self.busy: set[int] = set()  # walkers inside an intervening MD step (not checkpointable)
        self._predict_lock = threading.Lock()
        self._data_lock = threading.Lock()
        self._update_lock = threading.Lock()

    @property
    def n_labels(self) -> int:
        """Number of labelled structures so far."""
        return len(self.dataset)

    def predict(self, atoms: Atoms) -> dict:
        """Return the ensemble's results for ``atoms`` (thread-safe)."""
        start = time.perf_counter()
        with self._predict_lock:
            self.ensemble.adapter.check_atoms(atoms)
            members = self.ensemble.predict_members(atoms)
        results = summarise_members(
            members,
            self.ensemble.energy_sigma_eV,
            self.ensemble.stress_sigma_eV_per_A3,
            self.ensemble.variance_ddof,
        )
        self.timers.inference_s += time.perf_counter() - start
        return results

    def step(self, atoms: Atoms, step: int = 0, walker: int = 0) -> StepOutcome:
        """Predict; label, learn and return the DFT values when the prediction is not confident."""
        prediction = self.predict(atoms)
        finite = _finite(prediction)
        if finite:
            confidence = self.calibrator.confidence(prediction["energy_std"], forces_std=prediction["forces_std"])
        else:  # an overflowing sample: no confidence at all, DFT takes this step
            confidence = 0.0
            self._events({"event": "non_finite_prediction", "step": step, "walker": walker, "generation": self.generation})
            log.warning("non-finite ensemble prediction at step %d: DFT takes the step", step)
        # the calibrated predictive of this step's energy error (Student-t), kept for the audit
        claim = {"energy_scale_eV": float(prediction["energy_std"]) * self.calibrator.scale_factor,
                 "dof": self.calibrator.nu}  # fmt: skip
        first = self.energy_offset_eV is None
        if not self.calibrator.needs_label(first, confidence):
            return StepOutcome(prediction, prediction, confidence, False, self.generation, **claim)
        with self._data_lock:
            self.busy.add(walker)
        labelled = self._label_with_retries(atoms, step, walker)
        if labelled is None:
            return StepOutcome(
                prediction, prediction, confidence, True, self.generation, label_failed=True, **claim
            )
        record = self._learn(labelled, prediction, confidence, step, walker)
        return StepOutcome(
            self._dft_results(labelled), prediction, confidence, True, self.generation, record=record, **claim
        )

    def _label_with_retries(self, atoms: Atoms, step: int, walker: int) -> Atoms | None:
        for attempt in range(self.label_retries + 1):
            start = time.perf_counter()
            try:
                labelled = self._label(atoms.copy(), attempt).result()
            except (ConfigurationError, MissingDependencyError):
                raise
            except Exception as exc:  # noqa: BLE001 - a crashed code or a lost worker is a failed label
                if not isinstance(exc, LabelingFailed):
                    exc = LabelingFailed(f"{type(exc).__name__}: {exc}")
                self.timers.label_s += time.perf_counter() - start
                self._events(_failure_event(exc, step, walker, attempt))
                log.warning("DFT failed at step %d (attempt %d): %s", step, attempt + 1, exc)
                continue
            self.timers.label_s += time.perf_counter() - start
            self.consecutive_failures = 0
            return labelled
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.max_consecutive_failures:
            raise TooManyLabelFailures(
                f"{self.consecutive_failures} structures in a row could not be labelled; "
                "the run stops here. See the label_failed events in events.jsonl and the output in dft/, fix "
                "the labeler section of the run directory's run.yaml (e.g. retries with more SCF "
                "cycles), then `otfparsl resume RUN_DIR`"
            )
        return None

    def _learn(
        self, labelled: Atoms, prediction: dict, confidence: float, step: int, walker: int
    ) -> dict:
        with self._data_lock:
            e_dft = float(labelled.get_potential_energy())
            if self.energy_offset_eV is None:
                self.energy_offset_eV = float(prediction["energy"]) - e_dft
            record = self._calibrate(labelled, prediction, e_dft, step) if _finite(prediction) else _uncalibrated(self.calibrator, step)
            _store_prediction(labelled, prediction, confidence, step, walker, self.generation)
            self.dataset.append(labelled)
            n_labels = len(self.dataset)
        record = {k: _plain(v) for k, v in record.to_dict().items()}
        self._events(
            {
                "event": "label", "step": step, "walker": walker, "n_labels": n_labels,
                "energy_dft": e_dft, "energy_dft_offset": e_dft + self.energy_offset_eV,
                "energy_pred": float(prediction["energy"]),
                "energy_std": float(prediction["energy_std"]), "confidence": confidence,
                "seconds": float(labelled.info.get("label_seconds", float("nan"))), **record,
            }
        )  # fmt: skip
        self._update_chains(n_labels)
        return record

    def _calibrate(self, labelled: Atoms, prediction: dict, e_dft: float, step: int) -> CalibrationRecord:
        return self.calibrator.update(
                step=step,
                predicted_energy=float(prediction["energy"]),
                predicted_std=float(prediction["energy_std"]),
                label_energy=e_dft + self.energy_offset_eV,
                predicted_forces=prediction["forces"],
                forces_std=prediction["forces_std"],
                label_forces=labelled.get_forces(),
            )

    def _update_chains(self, n_labels: int) -> None:
        with self._update_lock:
            if self.labels_in_ensemble >= n_labels:
                return  # an update that ran meanwhile already saw this label
            with self._data_lock:
                n_labels = len(self.dataset)
            start = time.perf_counter()
            stats = self._update(n_labels, self.generation + 1).result()
            samples = self._reload()
            with self._predict_lock:
                self.ensemble.set_samples(samples)
            seconds = time.perf_counter() - start
            self.timers.update_s += seconds
            self.generation += 1
            self.labels_in_ensemble = n_labels
        self._events(
            {"event": "update", "generation": self.generation, "n_labels": n_labels,
             "seconds": seconds, "chains": stats}
        )  # fmt: skip
        for chain in stats:
            if chain.get("n_retries"):
                self._events(
                    {"event": "chain_diverged", "generation": self.generation, "chain": chain.get("chain"),
                     "retries": chain["n_retries"], "step_size": chain.get("step_size")}
                )  # fmt: skip

    def release(self, walker: int) -> None:
        """Mark the MD step of ``walker`` as finished (its state can be checkpointed again)."""
        with self._data_lock:
            self.busy.discard(walker)

    @contextlib.contextmanager
    def consistent(self) -> Iterator[dict | None]:
        """Hold the data lock; yield :meth:`state_dict`, or None while a walker is in a DFT step.

        While the context is open no label can join the data set, so what the caller saves next
        to the yielded state (calibration, file sizes) belongs to the same moment.
        """
        with self._data_lock:
            yield None if self.busy else self.state_dict()

    def state_dict(self) -> dict:
        """The learner's own state for a checkpoint (calibrator and files are saved apart)."""
        return {
            "energy_offset_eV": self.energy_offset_eV, "generation": self.generation,
            "labels_in_ensemble": self.labels_in_ensemble, "n_labels": len(self.dataset),
            "consecutive_failures": self.consecutive_failures, "timers": self.timers.as_dict(),
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (after the data set and chains are restored)."""
        if state["n_labels"] != len(self.dataset):
            raise ConfigurationError(
                f"the checkpoint expects {state['n_labels']} labels but labels.extxyz holds "
                f"{len(self.dataset)}; the run directory is inconsistent. Restart from scratch."
            )
        self.energy_offset_eV = state["energy_offset_eV"]
        self.generation = int(state["generation"])
        self.labels_in_ensemble = int(state["labels_in_ensemble"])
        self.consecutive_failures = int(state["consecutive_failures"])
        self.timers = Timers(**state["timers"])

    def _dft_results(self, labelled: Atoms) -> dict:
        results = labelled.calc.results
        out = {
            "energy": float(results["energy"]) + self.energy_offset_eV,
            "forces": np.asarray(results["forces"], dtype=float),
        }
        out["free_energy"] = out["energy"]
        if "stress" in results and np.all(labelled.pbc):
            stress = np.asarray(results["stress"], dtype=float)
            out["stress"] = stress if stress.shape == (6,) else full_3x3_to_voigt_6_stress(stress)
        return out


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
        return {"step_count": self.step_count, "results": dict(self.results), "last": _snapshot_outcome(self.last)}

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


def _finite(prediction: dict) -> bool:
    keys = ("energy", "energy_std", "forces", "forces_std")
    return all(bool(np.all(np.isfinite(prediction[k]))) for k in keys if k in prediction)


def _uncalibrated(calibrator: Calibrator, step: int) -> CalibrationRecord:
    """The record of a label whose prediction was not finite: it does not enter the statistics."""
    return CalibrationRecord(
        intervention=calibrator.n_interventions, step=int(step), counted=False, z=float("nan"),
        error_eV=float("nan"), exceeds_threshold=True,
    )  # fmt: skip


def _snapshot_outcome(outcome: StepOutcome | None) -> dict | None:
    if outcome is None:
        return None
    return {
        "results": outcome.results, "prediction": outcome.prediction,
        "confidence": outcome.confidence, "intervened": outcome.intervened,
        "generation": outcome.generation, "label_failed": outcome.label_failed,
        "record": outcome.record, "energy_scale_eV": outcome.energy_scale_eV, "dof": outcome.dof,
    }  # fmt: skip


def _store_prediction(
    labelled: Atoms, prediction: dict, confidence: float, step: int, walker: int, generation: int
) -> None:
    labelled.info.update(
        pred_energy=float(prediction["energy"]),
        pred_energy_std=float(prediction["energy_std"]),
        confidence=float(confidence),
        step=int(step),
        walker=int(walker),
        generation=int(generation),
    )
    labelled.arrays["pred_forces"] = np.asarray(prediction["forces"], dtype=float)
    labelled.arrays["pred_forces_std"] = np.asarray(prediction["forces_std"], dtype=float)


def _failure_event(exc: Exception, step: int, walker: int, attempt: int) -> dict:
    return {
        "event": "label_failed", "step": step, "walker": walker, "attempt": attempt,
        "error": type(exc).__name__, "message": str(exc),
        "output": getattr(exc, "output", "")[-2000:],
    }  # fmt: skip


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
