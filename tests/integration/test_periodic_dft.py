"""A crystal under NPT labelled by a real periodic DFT code: workflows/crystal_npt end to end.

CHGNet 0.3.0 on a 2-atom silicon cell, PySCF periodic PBE labels (energy, forces, stress), two
NPT segments (1 bar, then 20 kbar). What must come out: stress labels in ``labels.extxyz``
that are PySCF's own stress, chain updates that learn the stress (the fine-tuned ensemble's
stress on the labelled cells is closer to DFT than the pretrained model's), the barostat
driven by the DFT stress at every intervention, and a cell that shrinks when the pressure
rises.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import units
from ase.stress import full_3x3_to_voigt_6_stress

from otfparsl.run.directory import read_events
from otfparsl.settings import RunSettings
from otfparsl.workflow.driver import run
from otfparsl.workflow.submit import ThreadSubmitter

WORKFLOW = Path(__file__).parents[2] / "workflows" / "crystal_npt" / "run.yaml"

pytestmark = [pytest.mark.dft, pytest.mark.slow]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    pytest.importorskip("pyscf")
    pytest.importorskip("chgnet")
    settings = RunSettings.from_yaml(WORKFLOW)
    run_dir = tmp_path_factory.mktemp("crystal_npt") / "run"
    with ThreadSubmitter(chain_workers=2) as submitter:
        result = run(settings, submitter=submitter, run_dir=run_dir)
    labels = ase.io.read(run_dir / "labels.extxyz", ":")
    frames = ase.io.read(run_dir / "trajectory.extxyz", ":")
    return settings, result, read_events(run_dir / "events.jsonl"), labels, frames


def test_every_label_carries_a_finite_dft_stress(finished_run):
    _, result, events, labels, _ = finished_run
    assert len(labels) == result.dft_calls == sum(e["event"] == "label" for e in events) >= 2
    for frame in labels:
        assert frame.pbc.all()
        assert np.isfinite(frame.get_potential_energy()) and np.all(np.isfinite(frame.get_forces()))
        stress = frame.get_stress(voigt=True)
        assert stress.shape == (6,) and np.all(np.isfinite(stress))
    # the labels differ in their stress: the cell and the atoms moved between them
    spread = np.ptp([frame.get_stress() for frame in labels], axis=0)
    assert spread.max() > 1e-4  # eV/Å^3, about 0.02 GPa


def test_label_stress_is_the_dft_codes_own_stress(finished_run, tmp_path):
    from otfparsl.labelers import make_labeler

    settings, _, _, labels, _ = finished_run
    labeler = make_labeler(settings.labeler.kind, **settings.labeler.attempt_options(0))
    last = labels[-1]
    again = labeler.label(last, tmp_path / "again")
    np.testing.assert_allclose(last.get_stress(), again.get_stress(), atol=1e-7)  # eV/Å^3
    np.testing.assert_allclose(last.get_forces(), again.get_forces(), atol=1e-5)  # eV/Å
    assert last.get_potential_energy() == pytest.approx(again.get_potential_energy(), abs=1e-6)


def test_chain_updates_learn_the_dft_stress(finished_run):
    from otfparsl.calculators.ensemble import EnsembleCalculator
    from otfparsl.from_settings import model_spec
    from otfparsl.models import cached_adapter
    from otfparsl.models.base import attach_labels
    from otfparsl.testing import predict

    settings, result, events, labels, _ = finished_run
    # the data set of the updates carries every stress label (periodic -> stress likelihood)
    adapter = cached_adapter(model_spec(settings.model))
    prepared = [attach_labels(adapter.prepare(frame), frame) for frame in labels]
    batch = adapter.collate(prepared)
    assert batch.stress_mask is not None and bool(batch.stress_mask.all())
    updates = [e for e in events if e["event"] == "update"]
    assert updates and updates[-1]["n_labels"] == len(labels)
    # ... and the updates learnt it: the pretrained model is off by GPa on these cells
    dft = np.array([frame.get_stress() for frame in labels])
    full = predict(adapter, labels, compute_stress=True).stress.detach().double().numpy()
    pretrained = np.array([full_3x3_to_voigt_6_stress(s) for s in full.reshape(len(labels), 3, 3)])
    calc = EnsembleCalculator.from_run(result.run_dir)
    tuned = []
    for frame in labels:
        atoms = frame.copy()
        atoms.calc = calc
        tuned.append(atoms.get_stress())
    err_pretrained = np.abs(pretrained - dft).mean() / units.GPa
    err_tuned = np.abs(np.array(tuned) - dft).mean() / units.GPa
    assert err_pretrained > 1.0, (
        f"pretrained stress error {err_pretrained:.2f} GPa: test not informative"
    )
    assert err_tuned < 0.5 * err_pretrained, (err_tuned, err_pretrained)


def test_npt_runs_on_the_dft_stress_and_the_cell_follows_the_pressure(finished_run):
    settings, _, _, labels, frames = finished_run
    by_step = {int(frame.info["step"]): frame for frame in frames}
    label_steps = [int(frame.info["step"]) for frame in labels]
    for step, label in zip(label_steps, labels, strict=True):
        if step in by_step:  # the MD step of an intervention uses the DFT stress itself
            assert by_step[step].info["intervened"]
            np.testing.assert_allclose(by_step[step].get_stress(), label.get_stress(), atol=1e-10)
    for frame in frames:
        assert np.isfinite(frame.get_potential_energy()) and np.all(np.isfinite(frame.get_forces()))
    first = [frame.get_volume() for frame in frames if frame.info["segment"] == 0]
    second = [frame.get_volume() for frame in frames if frame.info["segment"] == 1]
    v0, v_switch, v_end = first[0], first[-1], second[-1]
    assert settings.md.segments[1].pressure_bar > settings.md.segments[0].pressure_bar
    assert abs(v_switch - v0) / v0 > 1e-5  # the barostat acts at 1 bar
    assert (v_switch - v_end) / v_switch > 0.005  # 20 kbar: the cell shrinks by more than 0.5 %
