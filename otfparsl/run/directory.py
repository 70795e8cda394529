"""The run directory: its paths, the event log and JSON state files (no Parsl, no torch).

Format (stable; what users look at): ``run.yaml``, ``events.jsonl``, ``labels.extxyz``,
``trajectory.extxyz``, ``calibration.json``, ``chains/chain_K.pt``, ``checkpoint.json``, ``dft/``
(one working directory per DFT call, with ``label.json`` once it finished), ``summary.json``,
``.lock`` (held by the one process writing the directory, :mod:`otfparsl.run.lock`), ``audit/``,
``report/``. The fine-tuned ensemble of a run loads with
:meth:`otfparsl.calculators.ensemble.EnsembleCalculator.from_run`.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

from otfparsl.fileio import atomic_write_text
from otfparsl.jsonable import plain_default

#: Name of the lock file in a run directory (see :mod:`otfparsl.run.lock`).
LOCK_NAME = ".lock"


class RunDirectory:
    """Paths of one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    run_yaml = property(lambda self: self.path / "run.yaml")
    events = property(lambda self: self.path / "events.jsonl")
    labels = property(lambda self: self.path / "labels.extxyz")
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

    Every event is stamped with ``wall_s``, seconds since the log was opened.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._handle = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed in close()

    def write(self, event: dict) -> None:
        """Append one event."""
        stamped = {**event, "wall_s": round(time.perf_counter() - self._t0, 4)}
        line = json.dumps(stamped, default=plain_default)
        with self._lock:
            self._handle.write(line + "\n")

    def flush(self) -> int:
        """Flush and fsync the file; return its size in bytes (what a checkpoint keeps)."""
        with self._lock:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            return os.fstat(self._handle.fileno()).st_size

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()


def read_events(path: str | os.PathLike) -> list[dict]:
    """Read every event of an ``events.jsonl``."""
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def save_json(path: str | os.PathLike, data: dict) -> None:
    """Write a JSON file atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, default=plain_default))
