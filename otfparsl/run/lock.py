"""One writing process per run directory: an exclusive lock on ``RUN_DIR/.lock``.

Every command that writes a run directory (``run``, ``resume``, ``audit``) holds
:func:`run_lock` for as long as it writes. A second process that tries to take it fails at once
with a :class:`~otfparsl.errors.ConfigurationError` whose one line names the holder (host, pid,
start time, command) and says what to do.

Notes
-----
The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``RUN_DIR/.lock``; the file also holds a JSON
record of the holder, which is what the error message shows. The operating system releases a
flock when the process that took it ends, however it ends (SIGKILL and an out-of-memory kill
included), so a lock file left behind by a dead process is taken over by the next process
without any check of ours; the left-over record is still reported in a logged warning (naming
the dead pid when it ran on this host). A clean release deletes the file, so a left-over record
always means its process did not end cleanly.

- Re-entrant per process: taking the lock of a directory this process already holds only counts
  one more level (``otfparsl run`` holds it from before the Parsl site starts, and the driver's
  ``run`` and ``resume`` inside take it again).
- A child forked while the lock is held (``multiprocessing`` with the ``fork`` start method)
  closes its copy of the descriptor, so the lock never outlives the process that took it.
- After taking the flock, the descriptor is checked to still be the file at ``RUN_DIR/.lock``
  (the previous holder may have deleted it in between); if not, the new file is taken instead.
- Works across hosts where the file system supports flock across clients (NFS v4 and Linux NFS
  clients emulate it with byte-range locks; Lustre needs the ``flock`` mount option). Where flock
  is not supported at all, the command runs with a logged warning and without the protection.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from otfparsl.errors import ConfigurationError
from otfparsl.run.directory import LOCK_NAME

log = logging.getLogger(__name__)

#: errno values of a file system without flock (the command then runs unprotected, with a warning).
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
#: How long to wait for a holder that has just taken the lock to write its record (s).
_RECORD_WAIT_S = 0.5


@dataclass(frozen=True)
class LockHolder:
    """The process that holds (or held) a run directory's lock, as recorded in ``.lock``."""

    host: str
    pid: int
    started: str
    command: str

    @classmethod
    def this_process(cls, command: str) -> LockHolder:
        """The record of the calling process, started now (local time, ISO 8601)."""
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        return cls(host=socket.gethostname(), pid=os.getpid(), started=started, command=command)

    @classmethod
    def from_text(cls, text: str) -> LockHolder | None:
        """Parse a lock file's content; None when it is empty or not a holder record."""
        try:
            data = json.loads(text)
            return cls(host=str(data["host"]), pid=int(data["pid"]), started=str(data["started"]),
                       command=str(data["command"]))  # fmt: skip
        except (ValueError, TypeError, KeyError):
            return None

    def to_text(self) -> str:
        """The lock file's content: one JSON object."""
        return json.dumps(asdict(self)) + "\n"

    def is_running(self) -> bool | None:
        """Whether the process still exists; None when it ran on another host (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)  # no signal sent: only whether the pid exists
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by another user
            pass
        return True

    def describe(self) -> str:
        """``pid 123 on host h, since 2026-01-01T12:00:00+01:00 (`otfparsl run ...`)``."""
        return f"pid {self.pid} on host {self.host}, since {self.started} (`{self.command}`)"


@dataclass
class _Held:
    path: Path
    fd: int
    depth: int


# The locks this process holds, by lock-file path: per-process state by nature (flock is too).
_held: dict[Path, _Held] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold the exclusive lock of a run directory for the duration of the ``with`` block.

    Parameters
    ----------
    run_dir
        The run directory (created if missing).
    command
        What this process is doing there (``"run"``, ``"otfparsl resume runs/x"``), recorded
        for the error message of a second process.

    Raises
    ------
    ConfigurationError
        When another process holds the lock: the message names it and says what to do.
    """
    path = Path(run_dir).resolve() / LOCK_NAME
    with _held_guard:
        held = _held.get(path)
        if held is not None:
            held.depth += 1
        else:
            held = _held[path] = _Held(path, _acquire(path, command), 1)
    try:
        yield
    finally:
        with _held_guard:
            held.depth -= 1
            # fd < 0: a forked child leaving the block its parent entered; the parent releases
            if held.depth == 0 and held.fd >= 0:
                del _held[path]
                _release(held)


def _acquire(path: Path, command: str) -> int:
    """Take the flock of ``path`` (creating it), write our record, return the descriptor."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the directory was removed in between
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _wait_for_record(fd)
            os.close(fd)
            raise ConfigurationError(_busy_message(path.parent, holder)) from None
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            log.warning("the file system of %s does not support flock (%s): this run directory is not "
                        "protected against a second process writing it", path.parent, exc.strerror)  # fmt: skip
            break
        if _is_file_at(fd, path):
            break
        os.close(fd)  # the previous holder deleted the file after we opened it: take the new one
    _warn_left_over(path.parent, LockHolder.from_text(_read_fd(fd)))
    record = LockHolder.this_process(command).to_text().encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)
    os.fsync(fd)
    return fd


def _release(held: _Held) -> None:
    """Delete the lock file (still holding it, so no one takes the old file), then unlock."""
    try:
        if _is_file_at(held.fd, held.path):
            held.path.unlink()
    finally:
        os.close(held.fd)


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_fd(fd: int) -> str:
    return os.pread(fd, 1 << 16, 0).decode("utf-8", errors="replace")


def _wait_for_record(fd: int) -> LockHolder | None:
    """Read the holder's record, waiting briefly for one that has just taken the lock."""
    deadline = time.monotonic() + _RECORD_WAIT_S
    while (holder := LockHolder.from_text(_read_fd(fd))) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return holder


def _busy_message(run_dir: Path, holder: LockHolder | None) -> str:
    if holder is None:
        who, stop = "another process (its record in .lock is unreadable)", "stop it"
    else:
        who, stop = holder.describe(), f"stop it (kill {holder.pid} on {holder.host})"
    return (
        f"run directory {str(run_dir)!r} is in use by {who}; only one process may write a run "
        f"directory at a time: wait for it to finish or {stop}, then try again, or choose another "
        "run directory"
    )


def _warn_left_over(run_dir: Path, holder: LockHolder | None) -> None:
    """Log the record a process left behind when it ended without releasing the lock."""
    if holder is None:
        return
    running = holder.is_running()
    if running is False:
        why = "which is no longer running"
    elif running is None:
        why = "which no longer holds it (its host may have gone down)"
    else:
        why = "a pid in use again by a process that does not hold the lock"
    log.warning(
        "taking over the lock of run directory %s left by %s, %s", run_dir, holder.describe(), why
    )


def _close_in_forked_child() -> None:
    """In a forked child: drop the inherited descriptors (the parent keeps its locks)."""
    global _held_guard
    for held in _held.values():
        with contextlib.suppress(OSError):
            os.close(held.fd)
        held.fd = -1
    _held.clear()
    _held_guard = threading.Lock()


os.register_at_fork(after_in_child=_close_in_forked_child)
