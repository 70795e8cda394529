"""What the system analyses read: walker 0's MD steps and trajectory frames."""

from __future__ import annotations

from dataclasses import dataclass

import ase.io
import numpy as np
from ase import Atoms

from otfparsl.errors import ConfigurationError
from otfparsl.run.directory import RunDirectory, read_events


@dataclass(frozen=True)
class RunSeries:
    """Per-step arrays (walker 0) and the trajectory frames with their times."""

    step_time_fs: np.ndarray
    called: np.ndarray
    temperature_K: np.ndarray
    frames: list[Atoms]
    frame_time_fs: np.ndarray

    @classmethod
    def read(cls, rd: RunDirectory) -> RunSeries:
        """Read ``events.jsonl`` and ``trajectory.extxyz`` of a run."""
        if not rd.trajectory.is_file():
            raise ConfigurationError(f"{rd.trajectory} does not exist: the run has written no MD frame yet")
        steps = [e for e in read_events(rd.events) if e["event"] == "step" and e["walker"] == 0]
        frames = list(ase.io.read(rd.trajectory, index=":", format="extxyz"))
        return cls(
            step_time_fs=np.array([s["time_fs"] for s in steps], dtype=float),
            called=np.array([s["intervened"] for s in steps], dtype=bool),
            temperature_K=np.array([s["temperature_K"] for s in steps], dtype=float),
            frames=frames,
            frame_time_fs=np.array([f.info["time_fs"] for f in frames], dtype=float),
        )

    @property
    def call_times_fs(self) -> np.ndarray:
        """Times of the MD steps that called DFT, fs."""
        return self.step_time_fs[self.called]
