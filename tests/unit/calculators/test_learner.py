"""Learner: the decision, the DFT result on interventions, retries, skips and a clean stop."""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT

from otfparsl.calculators.ensemble import EnsembleCalculator
from otfparsl.calculators.otf import OnTheFlyCalculator
from otfparsl.calibration import Calibrator
from otfparsl.data import LabelledDataset
from otfparsl.errors import SCFNotConverged, TooManyLabelFailures
from otfparsl.learning import DecisionRule, Learner, Oracle, Posterior
from otfparsl.training import build_bayesian_model


def _done(value=None, error=None) -> Future:
    future: Future = Future()
    future.set_exception(error) if error else future.set_result(value)
    return future


class FlakyEMT:
    """A label function: EMT, failing (SCFNotConverged) on the calls listed in ``failures``."""

    def __init__(self, failures=(), error=None):
        self.failures, self.calls, self.attempts = set(failures), 0, []
        self.error = error or SCFNotConverged("SCF did not converge in 1 cycle", output="log")

    def __call__(self, atoms, attempt) -> Future:
        self.calls += 1
        self.attempts.append(attempt)
        if self.calls in self.failures or "all" in self.failures:
            return _done(error=self.error)
        atoms.calc = EMT()
        atoms.get_forces()
        return _done(atoms)


class FixedChains:
    """A ChainUpdater that records each update and keeps the same samples."""

    def __init__(self, sample):
        self.sample, self.updates = sample, []

    def update(self, n_labels, generation, energy_offset_eV):
        self.updates.append(n_labels)
        return _done([])

    def samples(self):
        return [self.sample, self.sample]


def _learner(adapter, tmp_path, label, label_retries=1, max_consecutive_failures=3) -> tuple[Learner, list]:
    sample = build_bayesian_model(adapter).trainable_state()
    ensemble = EnsembleCalculator(adapter, [sample, sample], energy_sigma_eV=0.001)
    events: list[dict] = []
    learner = Learner(
        Posterior(ensemble, FixedChains(sample)),
        DecisionRule(Calibrator(energy_threshold_eV=0.01)),
        Oracle(label, label_retries, max_consecutive_failures, events.append),
        LabelledDataset(tmp_path / "labels.extxyz"),
        events.append,
    )
    return learner, events


def test_first_step_is_labelled_and_uses_dft_values(tiny_mace_adapter, cu_cell, tmp_path):
    learner, events = _learner(tiny_mace_adapter, tmp_path, FlakyEMT())
    cu_cell.calc = OnTheFlyCalculator(learner)
    energy = cu_cell.get_potential_energy()
    reference = cu_cell.copy()
    reference.calc = EMT()
    assert learner.n_labels == 1 and learner.generation == 1
    assert energy == pytest.approx(reference.get_potential_energy() + learner.energy_offset_eV)
    np.testing.assert_allclose(cu_cell.get_forces(), reference.get_forces(), atol=1e-12)
    assert [e["event"] for e in events] == ["label", "update"]


def test_failed_label_is_retried_then_used(tiny_mace_adapter, cu_cell, tmp_path):
    label = FlakyEMT(failures={1})
    learner, events = _learner(tiny_mace_adapter, tmp_path, label, label_retries=1)
    outcome = learner.step(cu_cell)
    assert label.calls == 2 and not outcome.label_failed and learner.n_labels == 1
    assert events[0]["event"] == "label_failed" and events[0]["error"] == "SCFNotConverged"


def test_skip_then_clean_stop_after_consecutive_failures(tiny_mace_adapter, cu_cell, tmp_path):
    label = FlakyEMT(failures={"all"})
    learner, events = _learner(tiny_mace_adapter, tmp_path, label, label_retries=1, max_consecutive_failures=2)
    outcome = learner.step(cu_cell)
    assert outcome.label_failed and outcome.results is outcome.prediction  # MD goes on with the ensemble
    assert learner.n_labels == 0 and label.calls == 2
    with pytest.raises(TooManyLabelFailures, match="2 structures in a row"):
        learner.step(cu_cell)
    assert sum(e["event"] == "label_failed" for e in events) == 4


def test_retries_are_numbered_so_the_dft_settings_can_change(tiny_mace_adapter, cu_cell, tmp_path):
    label = FlakyEMT(failures={1, 2})
    learner, _ = _learner(tiny_mace_adapter, tmp_path, label, label_retries=2)
    outcome = learner.step(cu_cell)
    assert label.attempts == [0, 1, 2] and not outcome.label_failed


def test_a_crashed_code_or_lost_worker_counts_as_a_failed_label(tiny_mace_adapter, cu_cell, tmp_path):
    label = FlakyEMT(failures={1}, error=RuntimeError("worker lost: node 12 died"))
    learner, events = _learner(tiny_mace_adapter, tmp_path, label, label_retries=1)
    outcome = learner.step(cu_cell)
    assert not outcome.label_failed and learner.n_labels == 1
    assert events[0]["error"] == "LabelingFailed" and "node 12 died" in events[0]["message"]


def test_a_configuration_error_of_the_labeller_stops_the_run(tiny_mace_adapter, cu_cell, tmp_path):
    from otfparsl.errors import ConfigurationError

    label = FlakyEMT(failures={"all"}, error=ConfigurationError("unknown option 'xcc'"))
    learner, _ = _learner(tiny_mace_adapter, tmp_path, label, label_retries=3)
    with pytest.raises(ConfigurationError, match="xcc"):
        learner.step(cu_cell)
    assert label.calls == 1  # not retried: retrying cannot fix a wrong setting


def test_a_non_finite_prediction_that_dft_cannot_label_stops_the_run(tiny_mace_adapter, cu_cell, tmp_path):
    from otfparsl.errors import NonFinitePrediction

    learner, events = _learner(tiny_mace_adapter, tmp_path, FlakyEMT(failures={"all"}), label_retries=1)
    broken = {name: torch.full_like(value, float("nan")) for name, value in learner.posterior.ensemble.samples[0].items()}
    learner.posterior.ensemble.set_samples([broken, broken])
    with pytest.raises(NonFinitePrediction, match="MD step 7 .walker 0. is not finite.*otfparsl resume"):
        learner.step(cu_cell, step=7)
    assert [e["event"] for e in events] == ["non_finite_prediction", "label_failed", "label_failed"]
    assert learner.n_labels == 0  # nothing learnt from it, and no MD step was given NaN forces


def test_a_held_out_step_is_scored_against_dft_and_changes_nothing_of_the_run(tiny_mace_adapter, cu_cell, tmp_path):
    from otfparsl.learning.heldout import HeldOutPlan

    sample = build_bayesian_model(tiny_mace_adapter).trainable_state()
    events: list[dict] = []
    label = FlakyEMT()
    chains = FixedChains(sample)
    plan = HeldOutPlan(n_labels=1, total_steps=1, seed=0)  # step 1 is the one check
    learner = Learner(
        Posterior(EnsembleCalculator(tiny_mace_adapter, [sample, sample], energy_sigma_eV=0.001), chains),
        DecisionRule(Calibrator(energy_threshold_eV=5.0)),  # confident after the first label
        Oracle(label, 1, 3, events.append), LabelledDataset(tmp_path / "labels.extxyz"), events.append,
        heldout=(plan, LabelledDataset(tmp_path / "heldout.extxyz")),
    )  # fmt: skip
    learner.step(cu_cell, step=0)
    cu_cell.rattle(0.05, seed=1)
    outcome = learner.step(cu_cell, step=1)
    assert outcome.heldout and not outcome.intervened and outcome.results is outcome.prediction
    assert label.calls == 2 and learner.n_labels == 1 and chains.updates == [1]  # not trained on
    (event,) = [e for e in events if e["event"] == "heldout"]
    reference = cu_cell.copy()
    reference.calc = EMT()
    expected = outcome.prediction["energy"] - (reference.get_potential_energy() + learner.energy_offset_eV)
    assert event["error_eV"] == pytest.approx(expected) and event["step"] == 1
    assert event["z"] == pytest.approx(expected / outcome.energy_scale_eV) and event["tally"]["n"] == 1
    assert len(learner.heldout_set) == 1 and learner.state().heldout["n"] == 1
    assert not learner.step(cu_cell, step=2).heldout and label.calls == 2
