"""A chain that produces NaN/inf during a real run: restored, repeated with a smaller step, logged.

A step size far above the family's (1e-4) makes the tiny-MACE chains blow up on the EMT copper
run; the first divergence appears at update 1. With the flat sampler's noise stream (the default
since stop 15) a later update needed more halvings than the reference sampler's, hence up to 6.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk

from otfparsl.errors import SamplerDiverged
from otfparsl.run.directory import read_events
from otfparsl.settings import RunSettings
from otfparsl.workflow.driver import run
from otfparsl.workflow.submit import ThreadSubmitter

sys.path.insert(0, str(Path(__file__).parent))
from killable_run import settings as killable_settings  # noqa: E402

pytestmark = pytest.mark.slow


def _settings(model: str, divergence_retries: int) -> RunSettings:
    data = killable_settings(model).model_dump()
    data["bayes"].update(step_size=0.16, divergence_retries=divergence_retries)
    data["labeler"] = {"kind": "ase", "options": {"name": "emt"}}
    data["md"]["segments"] = [{**data["md"]["segments"][0], "duration_fs": 4.0}]  # 2 MD steps
    return RunSettings.from_dict(data)


def _run(settings: RunSettings, run_dir: Path):
    with ThreadSubmitter(chain_workers=1) as submitter:
        return run(settings, submitter=submitter, run_dir=run_dir, structure=bulk("Cu", "fcc", a=3.61, cubic=True))


def _finite_chains(run_dir: Path) -> list[int]:
    updates = []
    for path in sorted((run_dir / "chains").glob("chain_?.pt")):
        state = torch.load(path, weights_only=True)
        assert all(bool(torch.isfinite(w).all()) for w in state["weights"].values())
        updates.append(int(state["n_updates"]))
    return updates


def test_a_diverging_chain_is_restored_and_repeated_with_a_smaller_step(cu_foundation_model, tmp_path):
    result = _run(_settings(cu_foundation_model, divergence_retries=6), tmp_path / "run")
    events = read_events(tmp_path / "run" / "events.jsonl")
    diverged = [e for e in events if e["event"] == "chain_diverged"]
    assert diverged and diverged[0]["generation"] == 1
    assert all(e["step_size"] == pytest.approx(0.16 / 2 ** e["retries"]) for e in diverged)
    n_updates = sum(e["event"] == "update" for e in events)
    assert _finite_chains(tmp_path / "run") == [n_updates] * 3  # every chain took every update
    assert result.n_steps == 3 and np.isfinite([e["energy"] for e in events if e["event"] == "step"]).all()


def test_a_chain_that_keeps_diverging_stops_the_run_with_its_weights_intact(cu_foundation_model, tmp_path):
    with pytest.raises(SamplerDiverged, match="Lower the step size"):
        _run(_settings(cu_foundation_model, divergence_retries=0), tmp_path / "run")
    updates = _finite_chains(tmp_path / "run")
    assert max(updates) <= 1 and min(updates) == 0  # the diverged chain kept its previous sample
