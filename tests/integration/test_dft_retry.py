"""DFT failures in a real run: the YAML retry policy, skipping a structure, a clean stop, resume.

PySCF (Hartree-Fock/STO-3G on water) is made to fail by allowing too few SCF cycles; the retry
overrides of the run YAML give it more cycles and a level shift.
"""

from __future__ import annotations

import json

import pytest
import yaml
from ase.build import molecule

from otfparsl.errors import TooManyLabelFailures
from otfparsl.run.directory import read_events
from otfparsl.settings import RunSettings
from otfparsl.workflow.driver import resume, run
from otfparsl.workflow.submit import ThreadSubmitter

pytestmark = pytest.mark.dft


def _settings(labeler: dict, n_steps: int = 2) -> RunSettings:
    return RunSettings.from_dict(
        {
            "name": "water",
            "structure": "unused.xyz",
            "model": {"family": "mace", "source": "tiny", "dtype": "float64", "chain_device": "cpu"},
            "bayes": {"n_chains": 2, "n_steps": 6, "noise_off_steps": 2, "noise_ramp_steps": 1},
            "labeler": {"kind": "pyscf", **labeler},
            "md": {"segments": [{"temperature_K": 300, "duration_fs": n_steps * 0.5, "timestep_fs": 0.5}]},
        }
    )


def _run(settings: RunSettings, run_dir):
    with ThreadSubmitter(chain_workers=1) as submitter:
        return run(settings, submitter=submitter, run_dir=run_dir, structure=molecule("H2O"))


def test_retry_overrides_from_the_yaml_rescue_a_failing_scf(tmp_path):
    base = {"xc": "hf", "basis": "sto-3g", "max_cycle": 1, "verbose": 4}
    retries = [{"max_cycle": 2}, {"max_cycle": 100, "level_shift": 0.2}]
    result = _run(_settings({"options": base, "retries": retries}), tmp_path / "run")

    events = read_events(tmp_path / "run" / "events.jsonl")
    failed = [e for e in events if e["event"] == "label_failed"]
    assert [(e["step"], e["attempt"], e["error"]) for e in failed[:2]] == [(0, 0, "SCFNotConverged"), (0, 1, "SCFNotConverged")]
    assert "cycle=" in failed[0]["output"]  # PySCF's own log, kept in the event
    first_label = next(e for e in events if e["event"] == "label")
    assert first_label["step"] == 0 and result.dft_calls >= 1
    dft = tmp_path / "run" / "dft"
    assert "not converged" in (dft / "label_00000" / "pyscf.log").read_text().lower()  # kept on disk
    assert not (dft / "label_00000" / "label.json").exists()
    saved = json.loads((dft / "label_00002" / "label.json").read_text())
    assert saved["info"]["labeler"] == "pyscf"


def test_failures_skip_then_stop_cleanly_and_the_run_resumes_after_the_fix(tmp_path):
    run_dir = tmp_path / "run"
    failing = {"options": {"xc": "hf", "basis": "sto-3g", "max_cycle": 1}, "retries": 0, "max_consecutive_failures": 2}
    with pytest.raises(TooManyLabelFailures, match="2 structures in a row"):
        _run(_settings(failing, n_steps=4), run_dir)
    events = read_events(run_dir / "events.jsonl")
    assert [e["step"] for e in events if e["event"] == "label_failed"] == [0, 1]
    steps = [e for e in events if e["event"] == "step"]
    assert steps[0]["intervened"] and steps[0]["n_labels"] == 0  # step 0 went on with the ensemble

    # the user fixes the DFT settings in the run directory and resumes
    saved = yaml.safe_load((run_dir / "run.yaml").read_text())
    saved["labeler"]["options"]["max_cycle"] = 100
    (run_dir / "run.yaml").write_text(yaml.safe_dump(saved))
    with ThreadSubmitter(chain_workers=1) as submitter:
        result = resume(run_dir, submitter=submitter)
    assert result.dft_calls >= 1 and result.n_steps == 5
    events = read_events(run_dir / "events.jsonl")
    assert any(e["event"] == "resume" for e in events)
    labels = [e for e in events if e["event"] == "label"]
    assert labels[0]["step"] == 1  # the structure that stopped the run is labelled first
