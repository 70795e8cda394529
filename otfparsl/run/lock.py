"""One writing process per run directory: an exclusive lock on ``RUN_DIR/.lock``.

Every command that writes a run directory (``run``, ``resume``, ``audit``) holds
:func:`run_lock` for as long as it writes. A second process that tries to take it fails at once
with a :class:`~otfparsl.errors.ConfigurationError` whose one line names the holder (host, pid,
start time, command) and says what to do. ``otfparsl unlock RUN_DIR`` shows the holder;
``otfparsl unlock RUN_DIR --force`` (:func:`force_unlock`) removes a lock its holder left behind.

Notes
-----
The lock is the file ``RUN_DIR/.lock`` itself: whoever creates it holds the directory, and it
holds the JSON record of its holder (host, pid, start time, command, ``mode``), which is what
the messages show. It is created exclusively and complete: the record is written (and fsynced)
to a private file ``.lock.PID-TOKEN.new`` first, which is then hard-linked to ``.lock``; the link
fails when ``.lock`` exists, on NFS too. Where flock works (``mode: "flock"``), the private file
is flocked (``LOCK_EX``) before it is linked, so ``.lock`` never appears unlocked or without its
record. Where flock is not supported (an errno in ``_NO_FLOCK``), the same file is the lock
without a flock (``mode: "excl"``), logged at INFO; where hard links are not supported either,
``.lock`` is created with ``O_CREAT | O_EXCL`` and the record written into it (a second process
waits up to ``_RECORD_WAIT_S`` for it). Flock and fallback therefore never both hold: there is
one ``.lock``, and only its creator holds the directory. A clean release deletes it (after
checking it is still its own file), so a ``.lock`` that is found means a holder that runs or one
that did not end cleanly. A process that finds one looks at it under a shared flock
(``LOCK_SH``, so lookers do not block each other) and decides:

- the flock is held: a live process holds it, on this host or on one whose flock this host sees
  -> refused (``kill PID on HOST``);
- the record names another host -> refused, never taken over, whether or not the flock was
  free: that host may hold a flock this host's NFS client does not see (or none at all), so its
  process may still run. The message names the way out, ``otfparsl unlock RUN_DIR --force``,
  once the user is sure that job has ended (``squeue``, ``sacct``);
- the record names this host and its pid is not running (or the pid now belongs to a process
  started later, seen from ``/proc/PID/stat``'s start time where Linux has it) -> taken over,
  with a logged warning naming the dead holder;
- this host, pid alive, flock free and ``mode: "flock"``: a pid in use again by a process that
  does not hold the lock (a local flock is authoritative) -> taken over with a warning;
- this host, pid alive, and no flock to tell (``mode: "excl"`` or no flock here) -> refused;
- a record that cannot be read, even after waiting -> refused, with the ``unlock --force`` hint.

A take-over deletes the left-over ``.lock`` only while holding a host-local flock on
``/dev/shm/otfparsl-lock-HASH`` (or in the temp directory; an empty file, left in place) and
after checking that ``.lock`` is still the file it judged; it then creates its own by the same
exclusive link, so of processes racing for a dead holder's lock exactly one wins and the others
are refused, naming the winner. (Records are never rewritten in place, so the file's identity is
its record's.) Only processes on the dead holder's host ever take it over, so a guard local to
that host is enough.

``otfparsl unlock RUN_DIR --force`` removes ``.lock`` (same guard) unless its holder is known to
run: a live flock, or a running pid on this host ("stop it first").

- Re-entrant per process: taking the lock of a directory this process already holds only counts
  one more level (``otfparsl run`` holds it from before the Parsl site starts, and the driver's
  ``run`` and ``resume`` inside take it again).
- A child forked while the lock is held (``multiprocessing`` with the ``fork`` start method)
  closes its copy of the descriptor, so the flock never outlives the process that took it (the
  record names the parent, so the child's exit does not release it either).
- Test and debug hook: the environment variable ``OTFPARSL_HOSTNAME`` replaces
  ``socket.gethostname()`` in the record and in every "this host" decision (:func:`this_host`),
  so tests can play two hosts with real processes on one machine. Never set it in production.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shlex
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from otfparsl.errors import ConfigurationError
from otfparsl.run.directory import LOCK_NAME

log = logging.getLogger(__name__)

#: errno values of a file system without flock (the lock file alone is then the lock).
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
#: errno values of a file system without hard links (``.lock`` is then created with O_EXCL).
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS}
#: How long to wait for a holder that has just created the lock file to write its record (s).
_RECORD_WAIT_S = 0.5
#: Test and debug hook: the host name this process gives itself (see the module notes).
HOSTNAME_ENV = "OTFPARSL_HOSTNAME"


def this_host() -> str:
    """The name of this host as the lock records it (``OTFPARSL_HOSTNAME`` overrides it)."""
    return os.environ.get(HOSTNAME_ENV) or socket.gethostname()


@dataclass(frozen=True)
class LockHolder:
    """The process that holds (or held) a run directory's lock, as recorded in ``.lock``.

    ``mode`` is ``"flock"`` when the holder also flocks the file, ``"excl"`` when the file alone
    is the lock; ``start_ticks`` is the holder's start in clock ticks since boot (Linux), which
    tells a reused pid from the holder.
    """

    host: str
    pid: int
    started: str
    command: str
    mode: str = "flock"
    start_ticks: int | None = None

    @classmethod
    def this_process(cls, command: str, mode: str = "flock") -> LockHolder:
        """The record of the calling process, started now (local time, ISO 8601)."""
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        pid = os.getpid()
        return cls(this_host(), pid, started, command, mode, _start_ticks(pid))

    @classmethod
    def from_text(cls, text: str) -> LockHolder | None:
        """Parse a lock file's content; None when it is empty or not a holder record."""
        try:
            data = json.loads(text)
            ticks = data.get("start_ticks")
            return cls(host=str(data["host"]), pid=int(data["pid"]), started=str(data["started"]),
                       command=str(data["command"]), mode=str(data.get("mode", "flock")),
                       start_ticks=None if ticks is None else int(ticks))  # fmt: skip
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def to_text(self) -> str:
        """The lock file's content: one JSON object."""
        return json.dumps(asdict(self)) + "\n"

    def is_running(self) -> bool | None:
        """Whether the process still exists; None when it ran on another host (cannot tell)."""
        if self.host != this_host():
            return None
        try:
            os.kill(self.pid, 0)  # no signal sent: only whether the pid exists
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by another user
            pass
        if self.start_ticks is not None and _start_ticks(self.pid) not in (None, self.start_ticks):
            return False  # the pid now belongs to a process started later
        return True

    def describe(self) -> str:
        """``pid 123 on host h, since 2026-01-01T12:00:00+01:00 (`otfparsl run ...`)``."""
        return f"pid {self.pid} on host {self.host}, since {self.started} (`{self.command}`)"


@dataclass(frozen=True)
class LockStatus:
    """A run directory's lock as this host sees it (:func:`lock_status`).

    ``alive``: True when a running process holds it (a flock is held, or the pid runs on this
    host and no flock says otherwise), False when its holder has ended (this host only), None
    when this host cannot tell (a record from another host, or an unreadable one).
    """

    run_dir: Path
    holder: LockHolder | None
    alive: bool | None

    def holder_text(self) -> str:
        """The holder as the messages name it."""
        if self.holder is None:
            return "another process (its record in .lock is unreadable)"
        return self.holder.describe()


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
        When another process holds the lock, or may hold it (a record from another host): the
        message names it and says what to do.
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


def lock_status(run_dir: str | os.PathLike) -> LockStatus | None:
    """Who holds the lock of ``run_dir`` and whether it still runs; None when it is not locked."""
    path = Path(run_dir).resolve() / LOCK_NAME
    with _looking_at(path) as found:
        return None if found is None else found[1]


def force_unlock(run_dir: str | os.PathLike) -> LockStatus | None:
    """Remove the lock of ``run_dir`` unless a running process holds it (``otfparsl unlock --force``).

    Returns
    -------
    LockStatus or None
        The lock that was removed (its holder), or None when the directory was not locked.

    Raises
    ------
    ConfigurationError
        When a running process holds the lock (a held flock, or a running pid on this host).
    """
    path = Path(run_dir).resolve() / LOCK_NAME
    while True:
        with _looking_at(path) as found:
            if found is None:
                return None
            fd, status = found
            if status.alive:
                raise ConfigurationError(_running_message(status))
            if _remove_if_same(fd, path):
                return status
        # replaced between our look and the removal: look at the new one


def _acquire(path: Path, command: str) -> int:
    """Create ``path`` holding our record (flocked where flock works); return its descriptor."""
    removed: LockStatus | None = None  # a left-over we removed: reported once ours is in place
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _publish(path, command)
        if fd is not None:
            if removed is not None:
                _warn_left_over(removed)
            return fd
        with _looking_at(path) as found:
            if found is None:
                continue  # released in between: try again
            found_fd, status = found
            if status.alive is not False:
                raise ConfigurationError(_refusal(status))
            if _remove_if_same(found_fd, path):
                removed = status


def _publish(path: Path, command: str) -> int | None:
    """Link a complete, flocked record file to ``path``; None when ``path`` exists already."""
    private = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.new")
    try:
        fd = os.open(private, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileNotFoundError:  # the directory was removed in between
        return None
    linked: bool | None = False
    try:
        mode = _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if mode == "excl":
            log.info("the file system of %s does not support flock: its lock is the lock file alone, created "
                     "exclusively", path.parent)  # fmt: skip
        _write_record(fd, LockHolder.this_process(command, mode))
        linked = _link(private, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            private.unlink()
        if not linked:
            os.close(fd)
    if linked is None:
        return _create_exclusively(path, command)
    return fd if linked else None


def _link(private: Path, path: Path) -> bool | None:
    """Hard-link ``private`` to ``path``: True when linked, False when ``path`` exists (or
    ``private`` vanished), None where the file system has no hard links."""
    try:
        os.link(private, path)
    except (FileExistsError, FileNotFoundError):
        return False
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        return None
    return True


def _create_exclusively(path: Path, command: str) -> int | None:
    """Without hard links: create ``path`` with O_EXCL, then write the record (no flock)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except (FileExistsError, FileNotFoundError):
        return None
    try:
        _write_record(fd, LockHolder.this_process(command, "excl"))
    except BaseException:
        path.unlink()
        os.close(fd)
        raise
    return fd


def _flock(fd: int, operation: int) -> str:
    """Flock ``fd``: ``"flock"`` when done, ``"excl"`` where flock is not supported."""
    try:
        fcntl.flock(fd, operation)
    except OSError as exc:
        if exc.errno not in _NO_FLOCK:
            raise
        return "excl"
    return "flock"


def _write_record(fd: int, holder: LockHolder) -> None:
    os.pwrite(fd, holder.to_text().encode("utf-8"), 0)
    os.fsync(fd)


@contextlib.contextmanager
def _looking_at(path: Path) -> Iterator[tuple[int, LockStatus] | None]:
    """Open ``path`` under a shared flock (where there is flock) and judge its holder."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        yield fd, _judge(fd, path.parent)
    finally:
        os.close(fd)


def _judge(fd: int, run_dir: Path) -> LockStatus:
    try:  # shared: lookers do not block each other
        flocked = _flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB) == "flock"
    except BlockingIOError:  # a live process holds the flock
        flocked = None
    holder = _wait_for_record(fd)
    if flocked is None:
        return LockStatus(run_dir, holder, alive=True)
    alive = None if holder is None else holder.is_running()
    if alive and flocked and holder is not None and holder.mode == "flock":
        alive = False  # a free local flock is authoritative: the pid is in use again
    return LockStatus(run_dir, holder, alive)


def _remove_if_same(fd: int, path: Path) -> bool:
    """Delete ``path`` if it is still the file open as ``fd`` (under this host's take-over guard)."""
    with _takeover_guard(path):
        if not _is_file_at(fd, path):
            return False
        path.unlink()
        return True


@contextlib.contextmanager
def _takeover_guard(path: Path) -> Iterator[None]:
    """Serialise take-overs of ``path`` among this host's processes (a flock on a local file)."""
    name = "otfparsl-lock-" + hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:20]
    try:
        fd = os.open(os.path.join("/dev/shm", name), os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:  # no (writable) /dev/shm
        fd = os.open(os.path.join(tempfile.gettempdir(), name), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for one stat and one unlink
        yield
    finally:
        os.close(fd)


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
    """Read the holder's record, waiting briefly for one that has just created the file."""
    deadline = time.monotonic() + _RECORD_WAIT_S
    while (holder := LockHolder.from_text(_read_fd(fd))) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return holder


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[19])  # field 22, after "(comm)"
    except (OSError, ValueError, IndexError):
        return None


def _refusal(status: LockStatus) -> str:
    """The one-line error of a process that may not take the lock."""
    run_dir, holder = status.run_dir, status.holder
    if status.alive:
        return _busy_message(run_dir, holder)
    if holder is None:
        who = status.holder_text()
    else:
        who = (f"{holder.describe()}, and this host ({this_host()}) cannot tell whether that process still "
               "runs (its node may hold a lock this host does not see)")  # fmt: skip
    return (
        f"run directory {str(run_dir)!r} is locked by {who}; only one process may write a run directory at a "
        "time: once you are sure that job has ended (e.g. with `squeue` or `sacct`), run "
        f"`otfparsl unlock {shlex.quote(str(run_dir))} --force`, then try again, or choose another run directory"
    )


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


def _running_message(status: LockStatus) -> str:
    """Why ``unlock --force`` leaves a lock in place."""
    holder, where = status.holder, repr(str(status.run_dir))
    if holder is not None and holder.host == this_host() and holder.is_running():
        return f"not unlocking run directory {where}: pid {holder.pid} on this host is running; stop it first ({holder.describe()})"
    return (f"not unlocking run directory {where}: {status.holder_text()} holds its lock and is running; "
            "stop it first")  # fmt: skip


def _warn_left_over(status: LockStatus) -> None:
    """Log the record a process left behind when it ended without releasing the lock."""
    holder = status.holder
    if holder is None:
        return
    if holder.is_running():
        why = "a pid in use again by a process that does not hold the lock"
    else:
        why = "which is no longer running"
    message = "taking over the lock of run directory %s left by %s, %s"
    log.warning(message, status.run_dir, holder.describe(), why)


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
