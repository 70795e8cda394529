"""Durable file writes: atomic replacement, fsync of files and folders, a full disk in words.

:func:`atomic_write` writes to a temporary file in the target's folder, flushes, fsyncs, gives it
the mode a new file gets under the process's umask, ``os.replace``-s it over the target and
fsyncs the folder, so a reader never sees a half-written file and a crash (even a power cut) never
leaves one or loses the rename. Used for labels, calibration state, chain files, the checkpoint,
run metadata and the report. A write that fails because the disk, the quota or the file-size
limit is full raises :class:`~otfparsl.errors.DiskFull`, one line naming the file and the free
space (:func:`disk_full_error`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from otfparsl.errors import DiskFull

#: errno values of a write refused for lack of space: disk full, quota, file-size limit.
FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if e is not None)

_UMASK_LOCK = threading.Lock()
_umask_fallback: int | None = None


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], binary: bool = True) -> None:
    """Replace ``path`` atomically with what ``write(handle)`` writes into an open file.

    The new file has mode ``0o666 & ~umask`` (as ``open(path, "w")`` would give it).

    Raises
    ------
    DiskFull
        When the disk, the quota or the process's file-size limit is full (nothing is replaced).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with raise_disk_full(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 whatever the umask
            with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` atomically with ``text`` (UTF-8)."""
    atomic_write(path, lambda handle: handle.write(text), binary=False)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data written through another handle (or another process) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Fsync a folder, so the renames and new names in it survive a crash.

    File systems that cannot fsync a folder (EINVAL, ENOTSUP: some network and FUSE file
    systems) are skipped; there the rename is as durable as the file system makes it.
    """
    if os.name == "nt":  # no folder handles to fsync; NTFS journals the rename
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES):
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def current_umask() -> int:
    """Return the process's umask without changing it (``Umask:`` of /proc/self/status).

    Where /proc is not there the umask is read once with ``os.umask`` (set and set back under a
    lock, on first use); a later change of the umask is then not seen.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    global _umask_fallback
    with _UMASK_LOCK:
        if _umask_fallback is None:
            _umask_fallback = os.umask(0o022)
            os.umask(_umask_fallback)
        return _umask_fallback


def disk_full_error(path: str | os.PathLike | None, exc: OSError) -> DiskFull:
    """Return the one-line :class:`DiskFull` for ``exc`` (an errno of :data:`FULL_ERRNOS`) at ``path``."""
    folder = Path(path).absolute() if path is not None else Path.cwd()
    while not folder.is_dir() and folder != folder.parent:  # the nearest folder that exists
        folder = folder.parent
    try:
        where = "its file system" if path is not None else "the working directory's file system"
        free = f"{_human_bytes(shutil.disk_usage(folder).free)} free on {where}"
    except OSError:
        free = "free space unknown"
    if exc.errno == errno.EFBIG:
        reason = "the file would pass this process's file-size limit (`ulimit -f`) or the file system's largest file"
        fix = "raise the limit (`ulimit -f unlimited`) or move the run directory to another file system"
    elif exc.errno == getattr(errno, "EDQUOT", None):
        reason = "the disk quota is exceeded"
        fix = "free space within the quota (`quota -s` shows it) or move the run directory"
    else:
        reason = "no space is left on the device"
        fix = "free space or move the run directory to a larger file system"
    name = str(path) if path is not None else "a file"
    return DiskFull(
        f"cannot write {name}: {reason} ({free}); {fix}, then run the command again (a run "
        "continues from its last checkpoint with `otfparsl resume RUN_DIR`; nothing committed is lost)."
    )


@contextlib.contextmanager
def raise_disk_full(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError of a full disk, quota or file-size limit inside into :class:`DiskFull` at ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL_ERRNOS and not isinstance(exc, DiskFull):
            raise disk_full_error(path, exc) from exc
        raise


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
