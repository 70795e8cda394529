"""The run directory's lock, between real processes: one writer at a time, dead holders taken over.

Each holder is a fresh Python process (``python -c``) that takes the lock and waits on its stdin;
the test process is the second one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from otfparsl.errors import ConfigurationError
from otfparsl.run.lock import LockHolder, run_lock

ROOT = Path(__file__).resolve().parents[3]

HOLDER = """
import multiprocessing, sys, time
from otfparsl.run.lock import run_lock

with run_lock(sys.argv[1], "holder test"):
    if sys.argv[2:] == ["fork"]:  # a forked child that outlives this process
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        child.start()
        print(child.pid, flush=True)
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes the pipe or kills this process
"""

TRY = """
import sys
from otfparsl.errors import ConfigurationError
from otfparsl.run.lock import run_lock

try:
    with run_lock(sys.argv[1], "try"):
        print("taken")
except ConfigurationError as exc:
    print("busy:", exc)
"""


@contextlib.contextmanager
def _holder(run_dir: Path, *args: str):
    """A process holding the lock of ``run_dir``; yields (Popen, lines it printed before locking)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        lines = []
        while (line := proc.stdout.readline().strip()) != "locked":
            assert line, f"the holder exited ({proc.wait()}) without taking the lock"
            lines.append(line)
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _try_in_another_process(run_dir: Path) -> str:
    return subprocess.run(
        [sys.executable, "-c", TRY, str(run_dir)], capture_output=True, text=True, cwd=ROOT, timeout=60
    ).stdout.strip()  # fmt: skip


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_process_fails_at_once_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    with _holder(run_dir) as (holder, _):
        record = LockHolder.from_text((run_dir / ".lock").read_text())
        assert (record.pid, record.host, record.command) == (holder.pid, socket.gethostname(), "holder test")
        start = time.perf_counter()
        with pytest.raises(ConfigurationError) as caught, run_lock(run_dir, "second"):
            pytest.fail("took a lock another process holds")
        assert time.perf_counter() - start < 0.3, "the second process waited"
        message = str(caught.value)
        assert "\n" not in message
        assert f"pid {holder.pid} on host {socket.gethostname()}, since {record.started}" in message
        assert f"kill {holder.pid}" in message and "choose another run directory" in message
        holder.stdin.close()  # a clean end releases the lock and removes the file
        assert holder.wait(timeout=30) == 0
    assert not (run_dir / ".lock").exists()
    with run_lock(run_dir, "third"):
        pass


def test_a_sigkilled_holder_is_taken_over_with_a_warning(tmp_path, caplog):
    run_dir = tmp_path / "run"
    with _holder(run_dir) as (holder, _):
        os.kill(holder.pid, signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL
    assert LockHolder.from_text((run_dir / ".lock").read_text()).pid == holder.pid  # left behind
    with caplog.at_level(logging.WARNING, logger="otfparsl.run.lock"), run_lock(run_dir, "after the kill"):
        assert LockHolder.from_text((run_dir / ".lock").read_text()).pid == os.getpid()
    assert f"left by pid {holder.pid} on host {socket.gethostname()}" in caplog.text
    assert "no longer running" in caplog.text
    assert not (run_dir / ".lock").exists()


def test_a_lock_file_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = _dead_pid()
    stale = LockHolder(socket.gethostname(), dead, "2026-01-01T00:00:00+00:00", "otfparsl run x.yaml")
    (run_dir / ".lock").write_text(stale.to_text())
    with caplog.at_level(logging.WARNING, logger="otfparsl.run.lock"), run_lock(run_dir, "new"):
        pass
    assert f"left by pid {dead} on host {socket.gethostname()}, since 2026-01-01T00:00:00+00:00" in caplog.text
    assert "(`otfparsl run x.yaml`), which is no longer running" in caplog.text
    # from another host: never taken over (its node may hold a flock this host does not see)
    (run_dir / ".lock").write_text(LockHolder("elsewhere", dead, "2026-01-01T00:00:00+00:00", "run").to_text())
    with pytest.raises(ConfigurationError, match="is locked by pid .* on host elsewhere"), run_lock(run_dir, "new"):
        pytest.fail("took over a lock from another host")
    assert LockHolder.from_text((run_dir / ".lock").read_text()).host == "elsewhere"


def test_the_lock_is_re_entrant_in_one_process_and_held_until_the_outermost_exit(tmp_path):
    run_dir = tmp_path / "run"
    with run_lock(run_dir, "outer"):
        with run_lock(run_dir, "inner"):
            pass
        assert LockHolder.from_text((run_dir / ".lock").read_text()).command == "outer"
        assert _try_in_another_process(run_dir).startswith(f"busy: run directory {str(run_dir)!r}")
    assert not (run_dir / ".lock").exists()
    assert _try_in_another_process(run_dir) == "taken"


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_parent(tmp_path):
    run_dir = tmp_path / "run"
    with _holder(run_dir, "fork") as (holder, lines):
        child = int(lines[0])
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    try:
        os.kill(child, 0)  # the child still runs ...
        assert _try_in_another_process(run_dir) == "taken"  # ... without the lock
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


# ------------------------------------------------------------------ who takes it
@pytest.fixture()
def locked_run(tmp_path):
    """A run directory (run.yaml, structure) whose lock another process holds."""
    from ase.build import bulk

    from otfparsl.settings import RunSettings

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bulk("Cu", "fcc", a=3.61, cubic=True).write(run_dir / "structure.extxyz")
    settings = RunSettings.from_dict(
        {"name": "t", "structure": str(run_dir / "structure.extxyz"), "model": {"family": "mace", "source": "tiny"},
         "md": {"segments": [{"duration_fs": 2.0}]}}
    )  # fmt: skip
    (run_dir / "run.yaml").write_text(settings.to_yaml())
    with _holder(run_dir) as (holder, _):
        yield run_dir, settings, holder.pid


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_resume_audit_and_the_cli_refuse_a_locked_run_directory(locked_run, monkeypatch):
    from otfparsl.audit import audit_run
    from otfparsl.cli import app
    from otfparsl.workflow import driver

    run_dir, settings, pid = locked_run
    monkeypatch.setattr(driver, "check_run", lambda s, structure=None: structure)  # no model build
    monkeypatch.setattr(driver, "check_labeler_on_workers", lambda *args: None)
    monkeypatch.setattr(driver, "_same_structure", lambda *args: True)  # the stand-in structure is no Atoms
    before = _files(run_dir)
    calls = {
        "run": lambda: driver.run(settings, submitter=object(), run_dir=run_dir, structure=object()),
        "resume": lambda: driver.resume(run_dir, submitter=object(), structure=object()),
        "audit": lambda: audit_run(run_dir, label=lambda atoms, workdir: None),
    }
    for name, call in calls.items():
        with pytest.raises(ConfigurationError, match=f"in use by pid {pid} on host"):
            call()
        assert _files(run_dir) == before, f"{name} wrote into a locked run directory"
    result = CliRunner().invoke(app, ["resume", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ConfigurationError: run directory") and f"pid {pid}" in result.output
    assert _files(run_dir) == before
