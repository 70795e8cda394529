"""The run directory: its paths, the event log and JSON state files (no Parsl, no torch).

Format (stable; what users look at): ``run.yaml``, ``events.jsonl``, ``labels.extxyz``,
``heldout.extxyz`` (the in-run held-out checks' DFT labels, never trained on),
``trajectory.extxyz``, ``calibration.json``, ``chains/chain_K.pt``, ``checkpoint.json``, ``dft/``
(one working directory per DFT call, with ``label.json`` once it finished), ``summary.json``,
``.lock`` (held by the one process writing the directory, :mod:`otfparsl.run.lock`), ``audit/``,
``report/``. The fine-tuned ensemble of a run loads with
:meth:`otfparsl.calculators.ensemble.EnsembleCalculator.from_run`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from otfparsl.errors import ConfigurationError, DiskFull
from otfparsl.fileio import atomic_write_text, raise_disk_full
from otfparsl.jsonable import plain_default

log = logging.getLogger(__name__)

#: Name of the lock file in a run directory (see :mod:`otfparsl.run.lock`).
LOCK_NAME = ".lock"


class RunDirectory:
    """Paths of one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    run_yaml = property(lambda self: self.path / "run.yaml")
    events = property(lambda self: self.path / "events.jsonl")
    labels = property(lambda self: self.path / "labels.extxyz")
    heldout = property(lambda self: self.path / "heldout.extxyz")
    trajectory = property(lambda self: self.path / "trajectory.extxyz")
    calibration = property(lambda self: self.path / "calibration.json")
    chains = property(lambda self: self.path / "chains")
    dft = property(lambda self: self.path / "dft")
    summary = property(lambda self: self.path / "summary.json")
    checkpoint = property(lambda self: self.path / "checkpoint.json")
    report = property(lambda self: self.path / "report")
    audit = property(lambda self: self.path / "audit")
    production = property(lambda self: self.path / "md")
    lock = property(lambda self: self.path / LOCK_NAME)

    def exists(self) -> bool:
        """True when a run was started here (its run.yaml exists)."""
        return self.run_yaml.is_file()

    def chain_files(self) -> list[Path]:
        """The chain files, in chain order."""
        found = [p for p in self.chains.glob("chain_*.pt") if re.fullmatch(r"chain_\d+\.pt", p.name)]
        return sorted(found, key=lambda p: int(p.stem.split("_")[1]))  # not .prev/.next copies


class EventLog:
    """Append-only JSON-lines log, one event per line, flushed per line (thread-safe).

    Every event is stamped with ``wall_s``, seconds since the log was opened. A write refused
    for lack of space raises :class:`~otfparsl.errors.DiskFull`, and so does every later write
    (nothing is appended after a line the disk cut); the last checkpoint's events are intact.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._failed: DiskFull | None = None
        with raise_disk_full(self.path):
            self._handle = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed in close()

    def write(self, event: dict) -> None:
        """Append one event."""
        stamped = {**event, "wall_s": round(time.perf_counter() - self._t0, 4)}
        line = json.dumps(stamped, default=plain_default)
        with self._lock, self._refused_when_full():
            self._handle.write(line + "\n")

    def flush(self) -> int:
        """Flush and fsync the file; return its size in bytes (what a checkpoint keeps)."""
        with self._lock, self._refused_when_full():
            self._handle.flush()
            os.fsync(self._handle.fileno())
            return os.fstat(self._handle.fileno()).st_size

    def close(self) -> None:
        """Flush and close the file (after a refused write: close only, the error was raised)."""
        with self._lock:
            if self._failed is not None:
                with contextlib.suppress(OSError):  # it closes even when its flush fails again
                    self._handle.close()
                return
            with self._refused_when_full():
                try:
                    self._handle.flush()
                    os.fsync(self._handle.fileno())
                finally:
                    self._handle.close()

    @contextlib.contextmanager
    def _refused_when_full(self) -> Iterator[None]:
        if self._failed is not None:
            raise DiskFull(str(self._failed))
        try:
            with raise_disk_full(self.path):
                yield
        except DiskFull as exc:
            self._failed = exc
            raise


def read_events(path: str | os.PathLike) -> list[dict]:
    """Read every event of an ``events.jsonl`` (a torn last line is left out, with a warning)."""
    return read_event_file(path)[0]


def read_event_file(path: str | os.PathLike) -> tuple[list[dict], int | None]:
    """Read the events of an ``events.jsonl`` and where its torn last line starts.

    A crash or a full disk in the middle of a write leaves the last line cut off: it is left
    out, with one warning naming the file and the byte offset where it starts.

    Returns
    -------
    events, torn_at
        The events, and the byte offset of the torn last line (None when the file is whole).

    Raises
    ------
    ConfigurationError
        When a line that is not the last one is not a JSON event (the file was damaged).
    """
    events: list[dict] = []
    bad: tuple[int, int, ValueError] | None = None  # line number, byte offset, error
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            if bad is not None:
                line, at, exc = bad
                raise ConfigurationError(
                    f"{path}: line {line} (byte {at}) is not a JSON event ({exc}) and more events "
                    "follow it, so it is not a line cut by a crash: the file was damaged or edited. "
                    "Restore it from a copy, or start the run over with --restart-from-scratch."
                )
            try:
                event = json.loads(raw)
            except ValueError as exc:
                bad = (number, start, exc)
                continue
            events.append(event)
    if bad is None:
        return events, None
    log.warning(
        "%s ends with a torn line from byte %d on (a crash or a full disk while it was written); "
        "read the %d events before it", path, bad[1], len(events),
    )  # fmt: skip
    return events, bad[1]


def save_json(path: str | os.PathLike, data: dict) -> None:
    """Write a JSON file atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, default=plain_default))
