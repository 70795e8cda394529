"""The truth test: a run's claim is checked against the reference on frames it never labelled.

The "foundation" is a tiny MACE fitted to EMT copper; the run's reference ("DFT") is EMT plus
a weak Lennard-Jones term (``otfparsl.testing.PerturbedEMT``), which the foundation does not
know. An honest run stays within its promise on held-out frames; the same run with chains that do not
spread (one noise-free SGHMC step: all chains equal, the std is sigma_E alone, so the decision
never fires after the first label) does not, and the audit says so. Neither can pass vacuously: the pretrained model is above K on most
held-out frames. The honest run labels 34 of its 121 steps (34 chain updates, about 5 minutes on
2 cores): its two tests are ``long``; the frozen run (seconds) carries the default run's checks
of the audit's files, reuse, report and CLI.
"""

from __future__ import annotations

import json

import ase.io
import pytest
from ase.build import bulk
from typer.testing import CliRunner

from otfparsl.analysis.metrics import VERDICTS
from otfparsl.audit import audit_run, read_audit
from otfparsl.settings import RunSettings
from otfparsl.workflow.driver import run
from otfparsl.workflow.submit import ThreadSubmitter
from otfparsl.workflow.tasks import label_structure

K = 0.006
REFERENCE = {"name": "otfparsl.testing:PerturbedEMT", "kwargs": {"epsilon_eV": 0.05}}
N_FRAMES = 20


def _settings(model_path: str, n_steps: int, noise_off_steps: int) -> RunSettings:
    return RunSettings.from_dict(
        {
            "name": "cu", "structure": "unused.xyz",
            "model": {"family": "mace", "source": model_path, "dtype": "float64", "chain_device": "cpu"},
            "bayes": {"n_chains": 4, "n_steps": n_steps, "noise_off_steps": noise_off_steps,
                      "noise_ramp_steps": n_steps // 20, "step_size": 1e-4, "seed": 3},
            "calibration": {"energy_threshold_eV": K},
            "heldout": {"labels": 20, "max_fraction": 0.2},  # 20 checks in 120 steps
            "labeler": {"kind": "ase", "options": REFERENCE},
            "md": {"segments": [{"ensemble": "langevin", "temperature_K": 300, "duration_fs": 240, "timestep_fs": 2.0}],
                   "seed": 5, "trajectory_interval": 2},
        }
    )  # fmt: skip


def _label_with(submitter, calls: list):
    def label(atoms, workdir):
        calls.append(workdir)
        return submitter.submit("dft", label_structure, atoms, "ase", REFERENCE, workdir)

    return label


def _run_and_audit(tmp_path, model_path: str, n_steps: int, noise_off_steps: int):
    run_dir = tmp_path / "run"
    calls: list = []
    with ThreadSubmitter(chain_workers=2) as submitter:
        run(_settings(model_path, n_steps, noise_off_steps), submitter=submitter, run_dir=run_dir,
            structure=bulk("Cu", "fcc", a=3.61, cubic=True))  # fmt: skip
        n_labels = len(ase.io.read(run_dir / "labels.extxyz", ":"))
        audit = audit_run(run_dir, _label_with(submitter, calls), n_frames=N_FRAMES, seed=0)
    return run_dir, audit, n_labels, calls


@pytest.fixture(scope="module")
def honest(tmp_path_factory, cu_foundation_model):
    return _run_and_audit(tmp_path_factory.mktemp("honest"), cu_foundation_model, n_steps=60, noise_off_steps=12)


@pytest.fixture(scope="module")
def frozen(tmp_path_factory, cu_foundation_model):
    # one noise-free step from the same start on the same full batch: every chain is the same
    return _run_and_audit(tmp_path_factory.mktemp("frozen"), cu_foundation_model, n_steps=1, noise_off_steps=1)


@pytest.mark.slow
@pytest.mark.long  # the honest run labels 34 of its 121 steps: 34 chain updates, 5 minutes
@pytest.mark.timeout(1500)
def test_honest_run_stays_within_its_promise_on_held_out_frames(honest):
    _, audit, _, calls = honest
    recorded, pretrained = audit["predictions"]["recorded"], audit["predictions"]["pretrained"]
    assert recorded["n_frames"] == N_FRAMES == len(calls)
    assert recorded["n_above_threshold"] <= 1  # the promise: at most 5 % above K
    assert recorded["coverage_95"] >= 0.9
    assert pretrained["n_above_threshold"] >= N_FRAMES // 2  # there was something to learn
    assert audit["predictions"]["final"]["energy_rmse_eV"] < pretrained["energy_rmse_eV"] / 3


@pytest.mark.slow
def test_audit_catches_chains_that_do_not_move(frozen):
    run_dir, audit, n_labels, _ = frozen
    recorded = audit["predictions"]["recorded"]
    assert n_labels == 1  # the spread is sigma_E alone: K / std = 10 > 8.22, DFT never fires again
    assert recorded["fraction_above_threshold"] > 0.5  # the run's claim was false ...
    assert recorded["fraction_above_threshold_ci95"][0] > 0.05  # ... and the audit proves it
    assert recorded["rms_z_calibrated"] > 3 and recorded["mean_confidence"] > 0.95
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interventions_checked"] == 0 and summary["fraction_above_threshold"] is None
    assert summary["calibration_basis"].startswith("prior only")  # and the run's own summary said so
    assert summary["heldout_audit"]["above_threshold"] == recorded["n_above_threshold"]
    assert summary["heldout_audit"]["verdict"].startswith("promise NOT kept")  # shown: the interval lies above 5 %
    # ... and the run's own held-out checks said it while it ran, on 20 steps it drew itself
    in_run = summary["heldout_in_run"]
    assert in_run["frames"] == 20 and in_run["status"] == "broken" and in_run["rms_z_calibrated"] > 3
    assert _overlap(in_run["fraction_above_threshold_ci95"], recorded["fraction_above_threshold_ci95"])
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    assert max(e["heldout_above"] for e in steps) == in_run["above_threshold"]  # the progress line's count


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(1500)
def test_the_honest_runs_own_held_out_checks_agree_with_its_audit(honest):
    run_dir, audit, _, _ = honest
    in_run = json.loads((run_dir / "summary.json").read_text())["heldout_in_run"]
    recorded = audit["predictions"]["recorded"]
    # 20 drawn steps, less those the rule labelled anyway (it labels often while it learns)
    assert 10 <= in_run["frames"] <= 20 and in_run["above_threshold"] <= 1
    assert _overlap(in_run["fraction_above_threshold_ci95"], recorded["fraction_above_threshold_ci95"])
    assert len(ase.io.read(run_dir / "heldout.extxyz", ":")) == in_run["frames"]


@pytest.mark.slow
def test_audit_labels_stay_out_of_training_and_are_reused(frozen):
    run_dir, audit, n_labels, _ = frozen
    assert len(ase.io.read(run_dir / "labels.extxyz", ":")) == n_labels
    held_out = ase.io.read(run_dir / "audit" / "labels.extxyz", ":")
    labelled_steps = {a.info["step"] for a in ase.io.read(run_dir / "labels.extxyz", ":")}
    assert len(held_out) == N_FRAMES and not labelled_steps & {a.info["step"] for a in held_out}
    calls: list = []
    with ThreadSubmitter() as submitter:  # an interrupted or repeated audit pays for no label twice
        again = audit_run(run_dir, _label_with(submitter, calls), n_frames=N_FRAMES, seed=0)
    assert calls == [] and again["predictions"] == audit["predictions"]
    assert read_audit(run_dir)["frames"] == audit["frames"]


@pytest.mark.slow
def test_report_and_cli_show_the_audit(frozen):
    from otfparsl.analysis.report import write_report
    from otfparsl.cli import app

    run_dir, _, _, _ = frozen
    index = write_report(run_dir)
    page = index.read_text()
    assert "<h2>Held-out audit</h2>" in page and 'href="audit_reliability.png"' in page
    # the audit's verdict and the in-run checks' verdict, both on the page
    assert page.count(VERDICTS["broken"]) >= 2
    for name in ("audit_reliability.png", "audit_error_vs_std.png", "audit_errors_time.png"):
        assert (run_dir / "report" / name).stat().st_size > 1000
    result = CliRunner().invoke(app, ["audit", str(run_dir), "--frames", str(N_FRAMES)])
    assert result.exit_code == 0, result.output
    words = " ".join(result.output.split())  # rich wraps lines at the terminal's width
    assert f"held-out frames vs DFT (K = {K:.4g} eV)" in words and VERDICTS["broken"] in words
