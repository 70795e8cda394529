"""Durable run files: fsync of files and folders, modes that follow the umask, a full disk in
one line, and readers that survive a last line or frame cut by a crash."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from otfparsl.errors import ConfigurationError, DiskFull
from otfparsl.fileio import atomic_write, atomic_write_text, current_umask, fsync_dir
from otfparsl.run import chains, checkpoint
from otfparsl.run.directory import EventLog, RunDirectory, read_event_file, read_events

REPO = Path(__file__).parents[3]


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_mode_of_the_umask(tmp_path, mask):
    target = tmp_path / "summary.json"
    with _umask(mask):
        assert current_umask() == mask
        atomic_write_text(target, "{}")
        atomic_write(tmp_path / "figure.png", lambda handle: handle.write(b"\x89PNG"))
    assert _mode(target) == _mode(tmp_path / "figure.png") == 0o666 & ~mask
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _record_fsyncs(monkeypatch, fail_dirs_with: int | None = None) -> list[str]:
    """Record 'dir'/'file' per os.fsync; optionally fail it on folders with ``fail_dirs_with``."""
    real, seen = os.fsync, []

    def fsync(fd: int) -> None:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        seen.append("dir" if is_dir else "file")
        if is_dir and fail_dirs_with is not None:
            raise OSError(fail_dirs_with, os.strerror(fail_dirs_with))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_atomic_write_fsyncs_the_file_then_its_folder(tmp_path, monkeypatch):
    seen = _record_fsyncs(monkeypatch)
    atomic_write_text(tmp_path / "run.yaml", "name: x\n")
    assert seen == ["file", "dir"]


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOTSUP])
def test_a_folder_that_cannot_be_fsynced_is_tolerated(tmp_path, monkeypatch, code):
    _record_fsyncs(monkeypatch, fail_dirs_with=code)
    atomic_write_text(tmp_path / "run.yaml", "name: x\n")
    assert (tmp_path / "run.yaml").read_text() == "name: x\n"


def test_a_folder_fsync_that_fails_otherwise_is_raised(tmp_path, monkeypatch):
    _record_fsyncs(monkeypatch, fail_dirs_with=errno.EIO)
    with pytest.raises(OSError, match="Input/output"):
        fsync_dir(tmp_path)


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.EFBIG, "file-size limit"), (errno.ENOSPC, "no space is left"), (errno.EDQUOT, "quota")],
)
def test_a_full_disk_in_an_atomic_write_is_one_line_naming_the_file(tmp_path, code, words):
    target = tmp_path / "labels.extxyz"
    target.write_text("old\n")

    def write(handle) -> None:
        handle.write("half a label")
        raise OSError(code, os.strerror(code))

    with pytest.raises(DiskFull) as caught:
        atomic_write(target, write, binary=False)
    message = str(caught.value)
    assert "\n" not in message and str(target) in message and words in message and "free" in message
    assert "otfparsl resume" in message and isinstance(caught.value, OSError)
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["labels.extxyz"]


def _write_events(path: Path, lines: list[str], end: str = "\n") -> None:
    path.write_text("\n".join(lines) + end)


def test_read_events_leaves_out_a_torn_last_line_and_says_where(tmp_path, caplog):
    path = tmp_path / "events.jsonl"
    whole = [json.dumps({"event": "step", "step": k}) for k in range(3)]
    _write_events(path, [*whole, '{"event": "step", "st'], end="")
    with caplog.at_level(logging.WARNING):
        events, torn_at = read_event_file(path)
    assert [e["step"] for e in events] == [0, 1, 2]
    assert torn_at == sum(len(line) + 1 for line in whole)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and f"byte {torn_at}" in warnings[0]
    _write_events(path, [*whole, '{"event": "step", "st'])  # cut, then a newline (and blank lines)
    assert read_events(path) == events


def test_read_events_keeps_a_whole_last_event_without_its_newline(tmp_path, caplog):
    path = tmp_path / "events.jsonl"
    _write_events(path, [json.dumps({"event": "step", "step": k}) for k in range(2)], end="")
    with caplog.at_level(logging.WARNING):
        assert read_event_file(path) == ([{"event": "step", "step": 0}, {"event": "step", "step": 1}], None)
    assert not caplog.records


def test_a_damaged_line_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "events.jsonl"
    _write_events(path, ['{"event": "step", "step": 0}', '{"event": "st', '{"event": "step", "step": 2}'])
    with pytest.raises(ConfigurationError, match=r"line 2 \(byte 29\).*not a line cut by a crash"):
        read_events(path)


def test_the_report_record_reads_a_torn_events_file(tmp_path):
    from otfparsl.analysis.run_record import _read_events

    path = tmp_path / "events.jsonl"
    _write_events(path, ['{"event": "step", "step": 0}', '{"event": "step", "st'], end="")
    assert _read_events(path) == ([{"event": "step", "step": 0}], 1)
    _write_events(path, ['{"event": "step", "step": 0}'])
    assert _read_events(path) == ([{"event": "step", "step": 0}], 0)


def _frames(n: int) -> list:
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.01 * (k + 1), seed=k)
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0 * k, forces=np.full((4, 3), 0.1 * k))
        atoms.info["step"] = k
        out.append(atoms)
    return out


@pytest.mark.parametrize("cut", [1, 60, -1])
def test_read_frames_leaves_out_a_torn_last_frame(tmp_path, caplog, cut):
    from otfparsl.data import read_frames

    path = tmp_path / "trajectory.extxyz"
    for atoms in _frames(3):
        ase.io.write(path, atoms, format="extxyz", append=True)
    whole = read_frames(path)
    assert [a.info["step"] for a in whole] == [0, 1, 2]
    data = path.read_bytes()
    two = sum(len(ase_text) for ase_text in _texts(_frames(2)))
    with open(path, "r+b") as handle:
        handle.truncate(two + cut if cut > 0 else len(data) + cut)  # into the count, a line, the last newline
    with caplog.at_level(logging.WARNING):
        frames = read_frames(path)
    assert [a.info["step"] for a in frames] == [0, 1]
    assert np.array_equal(frames[1].positions, whole[1].positions)
    assert len(caplog.records) == 1 and f"byte {two}" in caplog.records[0].getMessage()


def _texts(frames) -> list[str]:
    import io

    out = []
    for atoms in frames:
        buffer = io.StringIO()
        ase.io.write(buffer, atoms, format="extxyz")
        out.append(buffer.getvalue())
    return out


def _chain_file(path: Path, n_updates: int) -> None:
    from otfparsl.bayes.chain import _FORMAT

    torch.save({"format": _FORMAT, "n_updates": n_updates, "seed": 0, "weights": {}}, path)


def test_restore_chain_generation_fsyncs_the_copy_and_the_folder(tmp_path, monkeypatch):
    path = tmp_path / "chain_0.pt"
    _chain_file(path, 3)
    _chain_file(chains.previous_path(path), 2)
    calls = []
    monkeypatch.setattr(chains, "fsync_path", lambda p: calls.append(("file", Path(p).name, Path(p).exists())))
    monkeypatch.setattr(chains, "fsync_dir", lambda p: calls.append(("dir", Path(p), path.exists())))
    chains.restore_chain_generation([path], 2)
    assert calls == [("file", ".chain_0.pt.restore", True), ("dir", tmp_path, True)]
    assert chains.read_chain_header(path)["n_updates"] == 2
    assert chains.read_chain_header(chains.next_path(path))["n_updates"] == 3


class _Learner:
    """What Checkpointer.commit asks of the learner."""

    class rule:  # noqa: N801 - stands in for learner.rule
        class calibrator:  # noqa: N801
            @staticmethod
            def to_dict() -> dict:
                return {"a": 1.0}

    @contextlib.contextmanager
    def consistent(self):
        yield type("State", (), {"as_dict": lambda self: {"generation": 1}})()

    def release(self, walker: int) -> None:
        pass


def test_the_checkpoint_is_written_after_the_files_it_measures_are_fsynced(tmp_path, monkeypatch):
    rd = RunDirectory(tmp_path)
    events = EventLog(rd.events)
    order: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        order.append(f"fsync {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for w in (0, 1):
        name = "trajectory.extxyz" if w == 0 else "trajectory_w1.extxyz"
        (tmp_path / name).write_text("4\n\n" + "Cu 0 0 0\n" * 4)
    events.write({"event": "step", "step": 0})
    cp = checkpoint.Checkpointer(rd, _Learner(), events, checkpoint.LabelCounter(), interval=5)
    for w, name in ((0, "trajectory.extxyz"), (1, "trajectory_w1.extxyz")):
        cp.step_done(w, {"walker": w, "step": 0, "finished": False, "trajectory": name,
                         "trajectory_bytes": (tmp_path / name).stat().st_size}, intervened=False)  # fmt: skip
    events.close()
    written = [k for k, entry in enumerate(order) if entry.startswith("fsync .checkpoint.json")]
    assert len(written) == 2  # one commit per walker's step 0
    before_last = order[written[0] + 2 : written[1]]  # after the first commit's file and folder fsync
    assert sorted(before_last) == ["fsync events.jsonl", "fsync trajectory.extxyz", "fsync trajectory_w1.extxyz"]
    state = checkpoint.read_checkpoint(rd)
    assert [w["trajectory_bytes"] for w in state["walkers"]] == [39, 39]


FILL_EVENTS = textwrap.dedent(
    """
    import resource, signal, sys
    from otfparsl.errors import DiskFull
    from otfparsl.run.directory import EventLog

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    log = EventLog(sys.argv[1])
    try:
        for step in range(100):
            log.write({"event": "step", "step": step, "note": "x" * 40})
    except DiskFull as exc:
        print("first:", exc)
    try:
        log.write({"event": "step", "step": -1})
    except DiskFull as exc:
        print("again:", exc)
    log.close()
    """
)


def test_a_real_file_size_limit_cuts_one_event_and_refuses_the_rest(tmp_path, caplog):
    path = tmp_path / "events.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", FILL_EVENTS, str(path)], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first, again = proc.stdout.splitlines()
    assert first.startswith(f"first: cannot write {path}:") and "file-size limit" in first
    assert again.startswith(f"again: cannot write {path}:")
    assert proc.stderr == ""  # the closed log complains of nothing at exit
    assert path.stat().st_size == 1000
    with caplog.at_level(logging.WARNING):
        events, torn_at = read_event_file(path)
    assert [e["step"] for e in events] == list(range(len(events))) and torn_at is not None
    assert torn_at == sum(len(line) for line in path.read_bytes().splitlines(keepends=True)[:-1])


def test_the_cli_says_a_full_disk_in_one_line(capsys):
    import typer

    from otfparsl.cli import _user_errors

    with pytest.raises(typer.Exit) as exited, _user_errors():
        raise OSError(errno.ENOSPC, "No space left on device", "/scratch/run/trajectory.extxyz")
    assert exited.value.exit_code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: DiskFull: cannot write /scratch/run/trajectory.extxyz:")
    assert "no space is left" in err
    with pytest.raises(FileNotFoundError), _user_errors():
        raise FileNotFoundError(errno.ENOENT, "No such file", "x")
