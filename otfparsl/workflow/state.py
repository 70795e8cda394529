"""The run directory: paths, the event log, calibration state, and loading a run's ensemble.

Format (stable; what users look at): ``run.yaml``, ``events.jsonl``, ``labels.extxyz``,
``trajectory.extxyz``, ``calibration.json``, ``chains/chain_K.pt``, ``checkpoint.json``, ``dft/``
(one working directory per DFT call, with ``label.json`` once it finished), ``summary.json``,
``report/``.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np

from otfparsl.fileio import atomic_write_text


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
        line = json.dumps(stamped, default=_json_default)
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
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def ensemble_from_run(run_dir: Path, device: str | None = None):
    """Build the EnsembleCalculator of a run from its run.yaml and chain files."""
    from otfparsl.calculators.ensemble import EnsembleCalculator
    from otfparsl.models import load_adapter
    from otfparsl.settings import RunSettings
    from otfparsl.workflow.driver import model_spec

    rd = RunDirectory(run_dir)
    settings = RunSettings.from_yaml(rd.run_yaml)
    spec = model_spec(settings.model, device=device or settings.model.device)
    return EnsembleCalculator.from_chain_files(
        load_adapter(spec),
        rd.chain_files(),
        energy_sigma_eV=0.1 * settings.calibration.energy_threshold_eV,
        variance_ddof=settings.bayes.variance_ddof,
    )
