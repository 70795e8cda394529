"""The run directory's lock on a cluster's shared file system, with real processes.

Each process plays a host through ``OTFPARSL_HOSTNAME`` (the lock's test hook); a file system
without flock is simulated by a ``fcntl.flock`` that fails with ENOLCK on files in the run
directory (``NO_FLOCK_UNDER``), as Lustre without the ``flock`` mount option or NFS without a lock
manager does.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from otfparsl.cli import app
from otfparsl.errors import ConfigurationError
from otfparsl.run.lock import LockHolder, _start_ticks, run_lock, this_host

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")

PROCESS = """
import errno, fcntl, os, sys, time

if os.environ.get("NO_FLOCK_UNDER"):  # the run directory's file system has no flock
    _real, _root = fcntl.flock, os.environ["NO_FLOCK_UNDER"]

    def _flock(fd, operation):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(_root):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return _real(fd, operation)

    fcntl.flock = _flock

from otfparsl.errors import ConfigurationError
from otfparsl.run.lock import run_lock

run_dir, role = sys.argv[1], sys.argv[2]
if role == "race":  # all racers start together
    print("ready", flush=True)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.002)
try:
    with run_lock(run_dir, role):
        print("taken", flush=True)
        if role in ("hold", "race"):
            sys.stdin.read()  # until the test closes the pipe or kills this process
except ConfigurationError as exc:
    print("busy:", exc, flush=True)
"""


def _start(
    run_dir: Path, role: str, host: str, no_flock: bool = False, *args: str
) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OTFPARSL_HOSTNAME", "NO_FLOCK_UNDER")}
    env["OTFPARSL_HOSTNAME"] = host
    if no_flock:
        env["NO_FLOCK_UNDER"] = str(run_dir.resolve())
    return subprocess.Popen(
        [sys.executable, "-c", PROCESS, str(run_dir), role, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip


def _holder(run_dir: Path, host: str, no_flock: bool = False) -> subprocess.Popen:
    proc = _start(run_dir, "hold", host, no_flock)
    assert proc.stdout.readline().strip() == "taken", proc.communicate(timeout=30)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stdin.close()
    proc.stdout.close()
    proc.stderr.close()


def _try(run_dir: Path, host: str, no_flock: bool = False) -> tuple[str, str]:
    """(stdout, stderr) of a process that takes the lock and lets it go at once."""
    proc = _start(run_dir, "try", host, no_flock)
    out, err = proc.communicate(timeout=60)
    return out.strip(), err


def _record(run_dir: Path) -> LockHolder:
    return LockHolder.from_text((run_dir / ".lock").read_text())


def _cannot_tell(run_dir: Path, record: LockHolder, here: str) -> str:
    where = str(run_dir.resolve())
    return (
        f"busy: run directory {where!r} is locked by pid {record.pid} on host {record.host}, since "
        f"{record.started} (`{record.command}`), and this host ({here}) cannot tell whether that process "
        "still runs (its node may hold a lock this host does not see); only one process may write a run "
        "directory at a time: once you are sure that job has ended (e.g. with `squeue` or `sacct`), run "
        f"`otfparsl unlock {where} --force`, then try again, or choose another run directory"
    )


def test_a_job_killed_on_another_host_is_refused_until_unlock_force(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir, "node-a")
    in_use = f"busy: run directory {str(run_dir.resolve())!r} is in use by pid {holder.pid} on host node-a"
    assert _try(run_dir, "node-b")[0].startswith(in_use)  # a live flock seen from the other host
    assert _try(run_dir, "node-a", no_flock=True)[0].startswith(
        in_use
    )  # the fallback never holds beside it
    _kill(holder)
    record = _record(run_dir)
    assert (record.host, record.pid, record.mode) == ("node-a", holder.pid, "flock")

    assert _try(run_dir, "node-b")[0] == _cannot_tell(
        run_dir, record, "node-b"
    )  # the flock is free: still refused
    assert _record(run_dir) == record

    monkeypatch.setenv("OTFPARSL_HOSTNAME", "node-b")
    shown = CliRunner().invoke(app, ["unlock", str(run_dir)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines() == [
        f"run directory {str(run_dir)!r} is locked by {record.describe()}",
        "this host (node-b) cannot tell whether that process still runs: once you are sure that job has ended "
        f"(e.g. with `squeue` or `sacct`), `otfparsl unlock {run_dir} --force` removes the lock file and its "
        "record, and the next command takes the run directory",
    ]
    assert _record(run_dir) == record
    forced = CliRunner().invoke(app, ["unlock", str(run_dir), "--force"])
    assert forced.exit_code == 0, forced.output
    assert " ".join(forced.output.split()) == (
        f"warning: removed the lock of run directory {str(run_dir)!r}, held by {record.describe()}; if that "
        "process still runs, it and the next command will both write this run directory"
    )
    assert not (run_dir / ".lock").exists()
    again = CliRunner().invoke(app, ["unlock", str(run_dir)])
    assert again.output.strip() == f"run directory {str(run_dir)!r} is not locked: nothing to do"
    assert _try(run_dir, "node-b")[0] == "taken"
    assert not (run_dir / ".lock").exists()


def test_without_flock_the_lock_file_alone_refuses_and_a_dead_holder_here_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir, "node-a", no_flock=True)
    record = _record(run_dir)
    assert (record.host, record.pid, record.mode) == ("node-a", holder.pid, "excl")
    in_use = f"busy: run directory {str(run_dir.resolve())!r} is in use by pid {holder.pid} on host node-a"
    assert _try(run_dir, "node-a", no_flock=True)[0].startswith(in_use)
    assert _try(run_dir, "node-a")[0].startswith(
        in_use
    )  # where flock works, the file still refuses
    assert _try(run_dir, "node-b", no_flock=True)[0] == _cannot_tell(run_dir, record, "node-b")
    _kill(holder)
    assert _try(run_dir, "node-b", no_flock=True)[0] == _cannot_tell(run_dir, record, "node-b")
    out, err = _try(run_dir, "node-a", no_flock=True)
    assert out == "taken"
    assert (
        f"taking over the lock of run directory {run_dir.resolve()} left by {record.describe()}"
        in err
    )
    assert "which is no longer running" in err
    assert not (run_dir / ".lock").exists()  # released on a clean exit


@pytest.mark.parametrize("no_flock", [False, True], ids=["flock", "no-flock"])
def test_of_processes_racing_for_a_dead_holders_lock_exactly_one_wins(tmp_path, no_flock):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    mode = "excl" if no_flock else "flock"
    stale = LockHolder("node-a", int(dead.stdout), "2026-01-01T00:00:00+00:00", "killed", mode)
    (run_dir / ".lock").write_text(stale.to_text())
    go = tmp_path / "go"
    racers = [_start(run_dir, "race", "node-a", no_flock, str(go)) for _ in range(4)]
    try:
        assert [racer.stdout.readline().strip() for racer in racers] == ["ready"] * 4
        go.touch()
        outcomes = [racer.stdout.readline().strip() for racer in racers]  # the winner keeps holding
        winners = [racer for racer, out in zip(racers, outcomes, strict=True) if out == "taken"]
        assert len(winners) == 1, outcomes
        losers = [out for out in outcomes if out != "taken"]
        assert all(f"is in use by pid {winners[0].pid} on host node-a" in out for out in losers), (
            losers
        )
        assert _record(run_dir).pid == winners[0].pid
    finally:
        for racer in racers:
            racer.stdin.close()
            racer.wait(timeout=30)
            racer.stdout.close()
            racer.stderr.close()
    assert not (run_dir / ".lock").exists()


def _fake_flock_without_support(monkeypatch, run_dir: Path) -> None:
    import fcntl

    real, root = fcntl.flock, str(run_dir.resolve())

    def flock(fd, operation):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(root):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        return real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)


def test_a_live_pid_here_without_the_lock_is_taken_over_only_where_flock_tells(
    tmp_path, monkeypatch, caplog
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    alive = os.getppid()  # runs, and does not hold this lock
    (run_dir / ".lock").write_text(
        LockHolder(this_host(), alive, "2026-01-01T00:00:00+00:00", "old").to_text()
    )
    with caplog.at_level(logging.WARNING, logger="otfparsl.run.lock"), run_lock(run_dir, "new"):
        pass  # a free flock on this host is authoritative: the pid is in use again
    assert (
        f"left by pid {alive} on host {this_host()}" in caplog.text
        and "a pid in use again" in caplog.text
    )

    excl = LockHolder(this_host(), alive, "2026-01-01T00:00:00+00:00", "old", "excl")
    (run_dir / ".lock").write_text(excl.to_text())
    with (
        pytest.raises(ConfigurationError, match=f"is in use by pid {alive} on host"),
        run_lock(run_dir, "new"),
    ):
        pytest.fail("took a lock file whose holder runs")
    _fake_flock_without_support(monkeypatch, run_dir)
    (run_dir / ".lock").write_text(
        LockHolder(this_host(), alive, "2026-01-01T00:00:00+00:00", "old").to_text()
    )
    with (
        pytest.raises(ConfigurationError, match=f"is in use by pid {alive} on host"),
        run_lock(run_dir, "new"),
    ):
        pytest.fail("took a lock whose holder runs, with no flock to tell")

    ticks = _start_ticks(alive)
    assert ticks is not None
    assert LockHolder(this_host(), alive, "x", "old", "excl", ticks).is_running() is True
    reused = LockHolder(
        this_host(), alive, "x", "old", "excl", ticks + 1
    )  # started later than the holder
    assert reused.is_running() is False
    (run_dir / ".lock").write_text(reused.to_text())
    with run_lock(run_dir, "new"):
        assert _record(run_dir).mode == "excl"


def test_without_hard_links_the_lock_file_is_created_exclusively(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"

    def no_link(src, dst, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_link)
    with run_lock(run_dir, "no links"):
        record = _record(run_dir)
        assert (record.pid, record.mode) == (os.getpid(), "excl")
        assert _try(run_dir, this_host())[0].startswith(
            f"busy: run directory {str(run_dir.resolve())!r} is in use"
        )
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # no private file left
    assert not (run_dir / ".lock").exists()


def test_unlock_force_refuses_a_running_holder_on_this_host(tmp_path, monkeypatch):
    monkeypatch.delenv("OTFPARSL_HOSTNAME", raising=False)
    run_dir = tmp_path / "run"
    holder = _holder(run_dir, this_host())
    try:
        shown = CliRunner().invoke(app, ["unlock", str(run_dir)])
        assert shown.exit_code == 0, shown.output
        assert f"pid {holder.pid} on this host is running: stop it first" in shown.output
        forced = CliRunner().invoke(app, ["unlock", str(run_dir), "--force"])
        assert forced.exit_code == 2, forced.output
        assert forced.output.startswith(
            f"error: ConfigurationError: not unlocking run directory {str(run_dir.resolve())!r}: "
            f"pid {holder.pid} on this host is running; stop it first"
        )
        assert _record(run_dir).pid == holder.pid
    finally:
        _kill(holder)
    missing = CliRunner().invoke(app, ["unlock", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "does not exist or is not a directory" in missing.output


def test_a_take_over_waits_for_this_hosts_guard_and_removes_only_the_file_it_judged(tmp_path):
    from otfparsl.run.lock import _takeover_guard

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / ".lock"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock.write_text(
        LockHolder("node-a", int(dead.stdout), "2026-01-01T00:00:00+00:00", "killed").to_text()
    )
    with _takeover_guard(lock.resolve()):  # as if another process were taking it over right now
        racer = _start(run_dir, "try", "node-a")
        deadline = time.monotonic() + 30
        while not any(
            f"-> FLOCK  ADVISORY  WRITE {racer.pid} " in line for line in Path("/proc/locks").open()
        ):
            assert racer.poll() is None and time.monotonic() < deadline, racer.communicate()
            time.sleep(0.01)  # until the racer waits for the guard, having judged the dead holder
        lock.unlink()  # ... and that process won: a live holder's file replaces the dead one's
        winner = LockHolder("node-a", os.getpid(), "2026-01-01T00:00:01+00:00", "winner", "excl")
        lock.write_text(winner.to_text())
    out, _ = racer.communicate(timeout=60)
    assert out.strip().startswith(
        f"busy: run directory {str(run_dir.resolve())!r} is in use by {winner.describe()}"
    )
    assert _record(run_dir) == winner
