"""Kill a run with SIGKILL at six points (during DFT, during a chain update, between
checkpoints), resume it each time, and compare it with the same run left alone.

The run (tests/integration/killable_run.py) is tiny MACE + EMT copper with 3 chains; each session
is a fresh Python process, as after a crash. The resumed run must end bit-identical to the
uninterrupted one: same MD steps and decisions, same labels, same chain weights, same
calibration, same trajectory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from otfparsl import jsonable

HERE = Path(__file__).parent
TIMING_KEYS = {"wall_s", "seconds", "chains", "label_seconds", "label_reused"}

# Chosen from the uninterrupted run's events (labels at MD steps 0, 14, 15 and 16 with the flat
# SGHMC sampler; updates 1-4; checkpoints every 7 steps and after each label). Steps 9 and 30
# fall between checkpoints.
KILL_POINTS = [
    "dft:label_00000",  # the very first DFT call: no checkpoint exists yet
    "update:1:1",  # chain 0 has finished update 1, chain 1 is computing it
    "step:9",  # between checkpoints (7 and 14)
    "dft:label_00002",  # the third DFT call, at step 15
    "update:3:2",  # chains 0 and 1 finished update 3, chain 2 is computing it
    "step:30",  # between checkpoints in the second segment
]


def _session(run_dir: Path, model: str, kill: str = "", walkers: int = 1, cwd: Path | None = None, heldout: int = 0) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1])])}
    env["OTFPARSL_TEST_WALKERS"] = str(walkers)
    env["OTFPARSL_TEST_HELDOUT"] = str(heldout)
    proc = subprocess.run(
        [sys.executable, str(HERE / "killable_run.py"), str(run_dir), model, kill],
        env=env, capture_output=True, text=True, timeout=300, cwd=cwd,
    )  # fmt: skip
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"session failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode


def _events(run_dir: Path) -> list[dict]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in events if e["event"] != "resume"]


def _frames(path: Path) -> list[dict]:
    out = []
    for atoms in ase.io.read(path, ":"):
        info = {k: v for k, v in atoms.info.items() if k not in TIMING_KEYS}
        out.append({"positions": atoms.positions, "momenta": atoms.get_momenta(), "info": info,
                    "energy": atoms.get_potential_energy(), "forces": atoms.get_forces()})  # fmt: skip
    return out


def _assert_same_frames(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("positions", "momenta", "forces"):
            assert np.array_equal(x[key], y[key]), key
        assert x["energy"] == y["energy"] and x["info"].keys() == y["info"].keys()
        for key in x["info"]:
            assert np.array_equal(x["info"][key], y["info"][key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cu_foundation_model) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert _session(run_dir, cu_foundation_model) == 0
    labels = [e["step"] for e in _events(run_dir) if e["event"] == "label"]
    assert labels == [0, 14, 15, 16], "the kill points were chosen for labels at steps 0, 14-16"
    return run_dir


@pytest.mark.slow
def test_killed_six_times_and_resumed_equals_the_uninterrupted_run(reference, cu_foundation_model, tmp_path):
    run_dir = tmp_path / "run"
    for kill in KILL_POINTS:
        assert _session(run_dir, cu_foundation_model, kill) == -signal.SIGKILL, f"{kill} was not reached"
    assert _session(run_dir, cu_foundation_model) == 0

    resumes = [e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines()) if e["event"] == "resume"]
    # the first two kills came before the first checkpoint (end of step 0): those sessions
    # started over; a resume event of a session killed before its next checkpoint is cut away
    assert [r["step"] for r in resumes] == [[7], [14], [28]]
    assert _events(run_dir) == _events(reference)
    _assert_same_frames(_frames(run_dir / "labels.extxyz"), _frames(reference / "labels.extxyz"))
    _assert_same_frames(_frames(run_dir / "trajectory.extxyz"), _frames(reference / "trajectory.extxyz"))
    for k in range(3):
        mine = torch.load(run_dir / "chains" / f"chain_{k}.pt", weights_only=True)
        theirs = torch.load(reference / "chains" / f"chain_{k}.pt", weights_only=True)
        assert mine["n_updates"] == theirs["n_updates"] == 4
        assert all(torch.equal(mine["weights"][n], theirs["weights"][n]) for n in theirs["weights"])
        assert torch.equal(mine["data_rng_state"], theirs["data_rng_state"])
    assert json.loads((run_dir / "calibration.json").read_text()) == json.loads((reference / "calibration.json").read_text())
    final = jsonable.loads((run_dir / "checkpoint.json").read_text())
    expected = jsonable.loads((reference / "checkpoint.json").read_text())
    assert final["done"] and np.array_equal(final["walkers"][0]["md"]["atoms"]["positions"], expected["walkers"][0]["md"]["atoms"]["positions"])
    # nothing paid for was computed twice: the DFT label killed midway was redone, the others reused
    assert sorted(p.name for p in (run_dir / "dft").iterdir()) == sorted(p.name for p in (reference / "dft").iterdir())
    assert (run_dir / "dft" / "label_00002" / "partial_output.txt").is_file()


@pytest.mark.slow
def test_resumed_from_elsewhere_after_a_move_and_a_copy_equals_the_uninterrupted_run(cu_foundation_model, tmp_path):
    """The run directory is given relative to where the run started; it is then moved, resumed
    from another working directory by its absolute path, killed again, copied (as to another
    machine) and finished from a third directory: no trajectory frame twice, nothing lost. The
    run makes 6 in-run held-out checks: their draws and scores resume exactly too."""
    import shutil

    reference = tmp_path / "reference"
    assert _session(reference, cu_foundation_model, heldout=6) == 0
    checks = [e for e in _events(reference) if e["event"] == "heldout"]
    assert len(checks) >= 4 and any(9 < e["step"] < 30 for e in checks)  # some fall between the kills
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    for folder in (first, second, third):
        folder.mkdir()
    assert _session(Path("runs/x"), cu_foundation_model, "step:9", cwd=first, heldout=6) == -signal.SIGKILL
    moved = second / "moved"
    (first / "runs" / "x").rename(moved)
    assert _session(moved, cu_foundation_model, "step:30", cwd=third, heldout=6) == -signal.SIGKILL
    copied = third / "copied"
    shutil.copytree(moved, copied)
    shutil.rmtree(moved)
    assert _session(Path("copied"), cu_foundation_model, cwd=third, heldout=6) == 0
    assert _events(copied) == _events(reference)
    _assert_same_frames(_frames(copied / "trajectory.extxyz"), _frames(reference / "trajectory.extxyz"))
    _assert_same_frames(_frames(copied / "heldout.extxyz"), _frames(reference / "heldout.extxyz"))
    summary = json.loads((copied / "summary.json").read_text())["heldout_in_run"]
    assert summary["frames"] == len(checks) and summary["above_threshold"] == sum(e["above_threshold"] for e in checks)
    assert list((first / "runs").iterdir()) == [] and sorted(p.name for p in third.iterdir()) == ["copied"]


@pytest.mark.slow
def test_resume_cli_on_a_finished_run_reports_it(reference, monkeypatch):
    from typer.testing import CliRunner

    from otfparsl.cli import app

    monkeypatch.syspath_prepend(str(HERE))  # the run's labeller class lives in killable_run.py
    before = (reference / "events.jsonl").read_bytes()
    summary = json.loads((reference / "summary.json").read_text())
    audited = {"frames": 20, "above_threshold": 0, "verdict": "consistent with the promise"}
    (reference / "summary.json").write_text(json.dumps({**summary, "heldout_audit": audited}))
    result = CliRunner().invoke(app, ["resume", str(reference)])
    assert result.exit_code == 0, result.output
    assert "dft_calls" in result.output and (reference / "events.jsonl").read_bytes() == before
    assert json.loads((reference / "summary.json").read_text())["heldout_audit"] == audited  # not erased
    assert "0 of 20 held-out frames above K" in result.output
    (reference / "summary.json").write_text(json.dumps(summary))
    missing = CliRunner().invoke(app, ["resume", str(reference.parent / "nothing")])
    assert missing.exit_code == 2 and "holds no run" in missing.output


@pytest.mark.slow
def test_two_walkers_killed_and_resumed_lose_nothing_and_count_nothing_twice(cu_foundation_model, tmp_path):
    run_dir = tmp_path / "run"
    for kill in ("step:9", "step:22", "step:33"):
        assert _session(run_dir, cu_foundation_model, kill, walkers=2) == -signal.SIGKILL, kill
    assert _session(run_dir, cu_foundation_model, walkers=2) == 0

    events = [e for e in _events(run_dir)]
    for walker in (0, 1):
        steps = [e["step"] for e in events if e["event"] == "step" and e["walker"] == walker]
        assert steps == list(range(41)), f"walker {walker}: steps missing or repeated"
    labels = [e for e in events if e["event"] == "label"]
    written = ase.io.read(run_dir / "labels.extxyz", ":")
    assert len(written) == len(labels) == labels[-1]["n_labels"]
    keys = {(a.info["walker"], a.info["step"]) for a in written}
    assert len(keys) == len(written)  # no structure labelled twice
    calibration = json.loads((run_dir / "calibration.json").read_text())
    assert calibration["n_interventions"] == len(labels)  # every label counted exactly once
    updates = [e["generation"] for e in events if e["event"] == "update"]
    assert updates == list(range(1, len(updates) + 1))
    for k in range(3):
        assert torch.load(run_dir / "chains" / f"chain_{k}.pt", weights_only=True)["n_updates"] == len(updates)
