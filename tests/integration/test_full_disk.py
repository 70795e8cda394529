"""A run whose disk fills up in the middle stops with one line and resumes losing nothing; the
files of a run and of its report follow the umask.

Each session is a fresh ``otfparsl`` process (tests/integration/full_disk_run.py: tiny MACE + EMT
copper, 25 MD steps, a checkpoint every 5 steps). The full disk is the kernel's own: the process's
file-size limit (RLIMIT_FSIZE, no privileges needed) is set at MD step 13, between the
checkpoints of steps 10 and 15, so that the trajectory frame of step 13 is cut half-way and every
later write past the limit fails with EFBIG, as a full disk fails with ENOSPC.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
import pytest

from otfparsl.run.checkpoint import read_checkpoint
from otfparsl.run.directory import RunDirectory

HERE = Path(__file__).parent
TIMING_KEYS = {"wall_s", "seconds", "chains", "label_seconds", "label_reused"}
FULL_AT_STEP = 13  # checkpoints at steps 0 (the label), 5, 10, 15, 20 and 24 (the end)


def _start(work: Path, model: str, command: str, full_at_step: int | None = None, umask: str = "022"):
    """Start a session; its output goes to files in ``work`` (two sessions run side by side)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1])])}
    env.update(OTFPARSL_TEST_UMASK=umask, COLUMNS="200")
    args = [sys.executable, str(HERE / "full_disk_run.py"), str(work), model, command]
    args += [str(full_at_step)] if full_at_step else []
    with open(work / f"{command}.out", "w") as out, open(work / f"{command}.err", "w") as err:
        return subprocess.Popen(args, env=env, stdout=out, stderr=err, text=True), work / command


def _finish(started: tuple[subprocess.Popen, Path]) -> subprocess.CompletedProcess:
    proc, stem = started
    proc.wait(timeout=300)
    out, err = (stem.with_suffix(s).read_text() for s in (".out", ".err"))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _events(run_dir: Path) -> list[dict]:
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in events if e["event"] != "resume"]


def _frames(path: Path) -> list[tuple]:
    """Step, positions, momenta and forces of every frame."""
    return [(a.info["step"], a.positions, a.get_momenta(), a.get_forces()) for a in ase.io.read(path, ":")]


@dataclass(frozen=True)
class Sessions:
    """The run left alone (umask 022); the run whose disk filled at step 13, what it left and
    its resumption (umask 077)."""

    reference: Path
    full: subprocess.CompletedProcess
    left_checkpoint: dict
    left_trajectory: bytes
    resumed: subprocess.CompletedProcess
    run_dir: Path


@pytest.fixture(scope="module")
def sessions(tmp_path_factory, cu_foundation_model) -> Sessions:
    """The reference and the full-disk run side by side (one torch thread each), then the resume."""
    reference, work = tmp_path_factory.mktemp("reference"), tmp_path_factory.mktemp("full")
    started = [_start(reference, cu_foundation_model, "run"),
               _start(work, cu_foundation_model, "run", full_at_step=FULL_AT_STEP, umask="077")]  # fmt: skip
    alone, full = map(_finish, started)
    assert alone.returncode == 0, alone.stderr[-3000:]
    rd = RunDirectory(work / "run")
    left_checkpoint, left_trajectory = read_checkpoint(rd), rd.trajectory.read_bytes()
    resumed = _finish(_start(work, cu_foundation_model, "resume", umask="077"))
    return Sessions(reference / "run", full, left_checkpoint, left_trajectory, resumed, rd.path)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_and_resume_loses_nothing(sessions):
    full, resumed, run_dir, reference = sessions.full, sessions.resumed, sessions.run_dir, sessions.reference
    assert full.returncode == 2, full.stderr[-3000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert errors[0].startswith(f"error: DiskFull: cannot write {run_dir / 'trajectory.extxyz'}: ")
    assert "file-size limit" in errors[0] and "free" in errors[0] and "otfparsl resume" in errors[0]

    checkpoint = sessions.left_checkpoint  # the one before the full disk, intact
    assert not checkpoint["done"] and [w["step"] for w in checkpoint["walkers"]] == [10]
    whole = (reference / "trajectory.extxyz").read_bytes()
    frames_to_13 = sum(len(t) for t in _frame_texts(whole)[:FULL_AT_STEP])
    assert whole[: len(sessions.left_trajectory)] == sessions.left_trajectory  # what was written is the reference's
    assert frames_to_13 < len(sessions.left_trajectory) < frames_to_13 + len(_frame_texts(whole)[FULL_AT_STEP])  # cut

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _events(run_dir) == _events(reference)
    resumes = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in resumes if e["event"] == "resume"] == [[10]]
    mine, theirs = _frames(run_dir / "trajectory.extxyz"), _frames(reference / "trajectory.extxyz")
    assert [f[0] for f in mine] == [f[0] for f in theirs] == list(range(25))  # every frame once
    for a, b in zip(mine, theirs, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a[1:], b[1:], strict=True))
    labels = [ase.io.read(run / "labels.extxyz", ":") for run in (run_dir, reference)]
    assert [_without_timings(a.info) for a in labels[0]] == [_without_timings(a.info) for a in labels[1]]
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(*labels, strict=True))
    assert read_checkpoint(RunDirectory(run_dir))["done"]


def _without_timings(info: dict) -> dict:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in info.items() if k not in TIMING_KEYS}


def _frame_texts(data: bytes) -> list[bytes]:
    lines, out, k = data.splitlines(keepends=True), [], 0
    while k < len(lines):
        n = int(lines[k]) + 2
        out.append(b"".join(lines[k : k + n]))
        k += n
    return out


def _modes(run_dir: Path) -> dict[str, int]:
    """Mode of every file of a run directory (and its report) but Parsl's and DFT's own."""
    out = {}
    for path in run_dir.rglob("*"):
        if path.is_file() and path.parts[len(run_dir.parts)] not in ("dft", "runinfo") and path.name != ".lock":
            out[str(path.relative_to(run_dir))] = stat.S_IMODE(path.stat().st_mode)
    return out


@pytest.mark.slow
def test_the_files_of_a_run_and_its_report_follow_the_umask(sessions):
    assert sessions.resumed.returncode == 0, sessions.resumed.stderr[-3000:]
    expected = {"run.yaml", "summary.json", "labels.extxyz", "checkpoint.json", "calibration.json", "events.jsonl",
                "trajectory.extxyz", "chains/chain_0.pt", "report/index.html", "report/traces.png"}  # fmt: skip
    for run, mode in ((sessions.reference, 0o644), (sessions.run_dir, 0o600)):
        modes = _modes(run)
        assert expected <= modes.keys(), sorted(modes)
        assert {name: oct(m) for name, m in modes.items() if m != mode} == {}, run
