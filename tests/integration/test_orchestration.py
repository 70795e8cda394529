"""The on-the-fly loop under Parsl (thread pool and real HTEX workers) and with several walkers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ase.build import bulk

from otfparsl.run.directory import read_events
from otfparsl.settings import RunSettings
from otfparsl.workflow.driver import run
from otfparsl.workflow.site import open_site
from otfparsl.workflow.submit import ThreadSubmitter

SITES = Path(__file__).resolve().parents[2] / "sites"


def _settings(model_path: str, n_md_steps: int, walkers: int = 1, labeler: dict | None = None) -> RunSettings:
    return RunSettings.from_dict(
        {
            "name": "cu",
            "structure": "unused.xyz",
            "model": {"family": "mace", "source": model_path, "dtype": "float64", "chain_device": "cpu"},
            "bayes": {"n_chains": 2, "n_steps": 20, "noise_off_steps": 4, "noise_ramp_steps": 1, "step_size": 1e-4},
            "calibration": {"energy_threshold_eV": 0.006},
            "labeler": labeler or {"kind": "ase", "options": {"name": "emt"}},
            "md": {
                "segments": [{"temperature_K": 300, "duration_fs": 2.0 * n_md_steps, "timestep_fs": 2.0}],
                "walkers": walkers,
            },
        }
    )


def _check_run(run_dir: Path, n_md_steps: int) -> list[dict]:
    events = read_events(run_dir / "events.jsonl")
    steps = [e for e in events if e["event"] == "step"]
    labels = [e for e in events if e["event"] == "label"]
    updates = [e for e in events if e["event"] == "update"]
    assert len(steps) == n_md_steps + 1
    assert labels and labels[0]["step"] == 0
    assert len(updates) == len(labels)
    return updates


@pytest.mark.slow
@pytest.mark.parametrize("site_file", ["local_threads.py", "local_htex.py"])
def test_whole_loop_through_a_parsl_site(tmp_path, cu_foundation_model, site_file):
    run_dir = tmp_path / "run"
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    with open_site(SITES / site_file, tmp_path, {}) as site:
        run(_settings(cu_foundation_model, 20), submitter=site, run_dir=run_dir, structure=atoms)
    updates = _check_run(run_dir, 20)
    pids = {chain["pid"] for update in updates for chain in update["chains"]}
    if site_file == "local_htex.py":
        assert os.getpid() not in pids  # chains ran in HTEX worker processes
    else:
        assert pids == {os.getpid()}


@pytest.mark.slow
def test_walker_waiting_for_dft_does_not_stop_the_others(tmp_path, cu_foundation_model):
    labeler = {"kind": "ase", "options": {"name": "slow_reference:SlowEMT", "kwargs": {"delay_s": 3.0}}}  # longer than a chain update
    settings = _settings(cu_foundation_model, 120, walkers=2, labeler=labeler)
    with ThreadSubmitter(chain_workers=2, dft_workers=2) as submitter:
        result = run(settings, submitter=submitter, run_dir=tmp_path / "run", structure=bulk("Cu", "fcc", a=3.61, cubic=True))
    events = read_events(tmp_path / "run" / "events.jsonl")
    steps = [e for e in events if e["event"] == "step"]
    labels = [e for e in events if e["event"] == "label"]
    updates = [e for e in events if e["event"] == "update"]
    for walker in (0, 1):
        assert [s["step"] for s in steps if s["walker"] == walker] == list(range(121))
    assert result.n_steps == 242
    # While a walker waited for its DFT label, the other walker kept stepping.
    overlaps = 0
    for label in labels:
        start, end = label["wall_s"] - label["seconds"], label["wall_s"]
        overlaps += sum(
            1 for s in steps if s["walker"] != label["walker"] and start < s["wall_s"] < end and not s["intervened"]
        )
    assert overlaps > 0
    # Chain updates are serialised, and the last one saw every label.
    assert [u["generation"] for u in updates] == list(range(1, len(updates) + 1))
    assert [u["n_labels"] for u in updates] == sorted(u["n_labels"] for u in updates)
    assert updates[-1]["n_labels"] == len(labels)
