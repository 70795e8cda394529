"""What the system analyses read: walker 0's MD steps and trajectory frames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from otfparsl.data import read_frames
from otfparsl.errors import ConfigurationError
from otfparsl.run.directory import RunDirectory, read_events


@dataclass(frozen=True)
class RunSeries:
    """Per-step arrays (walker 0: time, DFT called, temperature, segment index) and the frames."""

    step_time_fs: np.ndarray
    called: np.ndarray
    temperature_K: np.ndarray
    segment: np.ndarray
    frames: list[Atoms]
    frame_time_fs: np.ndarray

    @classmethod
    def read(cls, rd: RunDirectory) -> RunSeries:
        """Read ``events.jsonl`` and ``trajectory.extxyz`` of a run."""
        if not rd.trajectory.is_file():
            raise ConfigurationError(f"{rd.trajectory} does not exist: the run has written no MD frame yet")
        steps = [e for e in read_events(rd.events) if e["event"] == "step" and e["walker"] == 0]
        frames = read_frames(rd.trajectory)  # whole frames: a crash may have cut the last one
        return cls(
            step_time_fs=np.array([s["time_fs"] for s in steps], dtype=float),
            called=np.array([s["intervened"] for s in steps], dtype=bool),
            temperature_K=np.array([s["temperature_K"] for s in steps], dtype=float),
            segment=np.array([s.get("segment", 0) for s in steps], dtype=int),
            frames=frames,
            frame_time_fs=np.array([f.info["time_fs"] for f in frames], dtype=float),
        )

    @property
    def call_times_fs(self) -> np.ndarray:
        """Times of the MD steps that called DFT, fs."""
        return self.step_time_fs[self.called]


@dataclass(frozen=True)
class ProgrammeSegment:
    """One segment of a run's temperature programme, placed on the run's time axis (fs)."""

    index: int
    ensemble: str
    temperature_K: float
    start_fs: float
    end_fs: float
    timestep_fs: float

    @property
    def duration_ps(self) -> float:
        """Length of the segment, ps."""
        return (self.end_fs - self.start_fs) / 1000.0


def read_programme(rd: RunDirectory) -> list[ProgrammeSegment]:
    """Read the temperature programme of a run from its ``run.yaml`` (``md.segments``).

    Segment k starts where segment k-1 ended; a segment lasts its number of MD steps times its
    time step, as the walkers count time.
    """
    import yaml

    from otfparsl.from_settings import segment_from_settings
    from otfparsl.settings import MDSettings, validate_section

    if not rd.run_yaml.is_file():
        raise ConfigurationError(f"{rd.run_yaml} does not exist: the temperature programme of the run is unknown")
    data = yaml.safe_load(rd.run_yaml.read_text()) or {}
    md = validate_section(MDSettings, data.get("md"), f"{rd.run_yaml}: md")
    out, start = [], 0.0
    for index, seg in enumerate(md.segments):
        length = segment_from_settings(seg).n_steps * seg.timestep_fs
        out.append(ProgrammeSegment(index, seg.ensemble, seg.temperature_K, start, start + length, seg.timestep_fs))
        start += length
    return out
