"""Checkpoints: the run directory's state committed atomically to ``checkpoint.json``; resume.

A checkpoint is committed at an MD step boundary after every step that called DFT (so after every
label and chain update) and every ``md.checkpoint_interval`` steps. It holds, per walker, the MD
state (positions, momenta, cell, integrator and RNG state, the calculator's cached results), and
the learner's state (energy offset, chain generation, calibration, DFT working-directory
counter) plus the sizes of the append-only files at that moment, fsync'ed before the checkpoint
that records them. It is one JSON file written to a temporary file, fsync'ed and renamed (and its
folder fsync'ed), so a kill or a power cut leaves either the old or the new checkpoint.

Resuming (:func:`prepare_resume`) cuts the run directory back to the checkpoint: events and
trajectory frames written after it are dropped, ``labels.extxyz`` keeps the checkpoint's labels
and each chain file goes back to the checkpoint's generation. Nothing paid for is lost: a DFT
label finished after the checkpoint stays in ``dft/label_N/label.json`` and a chain update made
after it stays in ``chains/chain_K.next.pt``; the resumed run reuses both when it reaches the same
structure with the same data (which, with one walker, it does bit for bit).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from otfparsl import jsonable
from otfparsl.errors import ConfigurationError
from otfparsl.fileio import atomic_write_text, fsync_path
from otfparsl.run.chains import restore_chain_generation
from otfparsl.run.directory import EventLog, RunDirectory

if TYPE_CHECKING:
    from otfparsl.learning import Learner

FORMAT = "otfparsl.checkpoint/1"


class LabelCounter:
    """Numbers the DFT working directories ``dft/label_NNNNN`` (thread-safe, checkpointed)."""

    def __init__(self, start: int = 0) -> None:
        self.value = start
        self._lock = threading.Lock()

    def next(self) -> int:
        """Return the next number."""
        with self._lock:
            value = self.value
            self.value += 1
            return value


class Checkpointer:
    """Collects each walker's state at its step boundaries and commits consistent checkpoints.

    Parameters
    ----------
    rd
        The run directory.
    learner, events, counter
        The run's shared state (saved in every checkpoint; the calibration is the learner's).
    interval
        Commit every this many MD steps (besides after every step that called DFT).
    previous
        The checkpoint a resumed run starts from: its walker snapshots, and its wall time
        (summed into ``wall_s``).
    """

    def __init__(
        self, rd: RunDirectory, learner: Learner, events: EventLog, counter: LabelCounter, interval: int,
        previous: dict | None = None,
    ) -> None:  # fmt: skip
        self.rd, self.learner, self.events, self.counter, self.interval = rd, learner, events, counter, interval
        previous = previous or {"walkers": [], "wall_s": 0.0}
        self._walkers: dict[int, dict] = {w["walker"]: w for w in previous["walkers"]}
        self._lock = threading.Lock()
        self._wall_offset_s = previous["wall_s"]
        self._start = time.perf_counter()
        self.commits = 0

    @property
    def wall_s(self) -> float:
        """Wall time of the run so far, all sessions together (s)."""
        return self._wall_offset_s + time.perf_counter() - self._start

    def step_done(self, walker: int, snapshot: dict, intervened: bool) -> None:
        """Record a walker's state after an MD step; commit when it is time to."""
        self.learner.release(walker)
        with self._lock:
            self._walkers[walker] = snapshot
        if intervened or snapshot["finished"] or snapshot["step"] % self.interval == 0:
            self.commit()

    def commit(self, done: bool = False) -> bool:
        """Write ``checkpoint.json`` unless a walker is inside a DFT step (then it commits later)."""
        with self._lock:
            with self.learner.consistent() as learner_state:
                if learner_state is None:
                    return False
                state = {
                    "format": FORMAT, "done": done, "wall_s": self.wall_s,
                    "learner": learner_state.as_dict(), "calibration": self.learner.rule.calibrator.to_dict(),
                    "label_counter": self.counter.value, "events_bytes": self.events.flush(),
                    "labels_bytes": _size(self.rd.labels), "heldout_bytes": _size(self.rd.heldout),
                    "walkers": [self._walkers[w] for w in sorted(self._walkers)],
                }  # fmt: skip
            _fsync_trajectories(self.rd, state["walkers"])  # the sizes it records are on the disk first
            atomic_write_text(self.rd.checkpoint, jsonable.dumps(state))
            self.commits += 1
            return True


def read_checkpoint(rd: RunDirectory) -> dict | None:
    """Return the last committed checkpoint of a run directory, or None if there is none."""
    if not rd.checkpoint.is_file():
        return None
    try:
        state = jsonable.loads(rd.checkpoint.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigurationError(f"{rd.checkpoint} cannot be read ({exc}); restart from scratch.") from None
    if state.get("format") != FORMAT:
        raise ConfigurationError(
            f"{rd.checkpoint} has format {state.get('format')!r}, this otfparsl reads {FORMAT!r}."
        )
    return state


def prepare_resume(rd: RunDirectory, state: dict, chain_paths: list[Path]) -> None:
    """Cut the run directory back to the checkpoint ``state`` (see the module notes).

    Every file is found in ``rd`` whatever the working directory: a trajectory by its name
    (older checkpoints stored the path the run was started with, possibly relative).
    """
    steps = {snap["walker"]: snap["step"] for snap in state["walkers"]}
    _cut_events(rd.events, state["events_bytes"], steps)
    for snap in state["walkers"]:
        _truncate(rd.path / Path(snap["trajectory"]).name, snap["trajectory_bytes"])
    _truncate(rd.labels, state["labels_bytes"])
    _truncate(rd.heldout, state.get("heldout_bytes", 0))
    restore_chain_generation(chain_paths, state["learner"]["generation"])
    rd.summary.unlink(missing_ok=True)


def _cut_events(path: Path, size: int, steps: dict[int, int]) -> None:
    """Keep the first ``size`` bytes, minus step events of a walker past its checkpointed step."""
    if not path.is_file():
        return
    with open(path, "rb") as handle:
        lines = handle.read(size).decode("utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        event = json.loads(line)
        if event.get("event") == "step" and event["step"] > steps.get(event["walker"], -1):
            continue
        kept.append(line)
    atomic_write_text(path, "".join(kept))


def _truncate(path: Path, size: int) -> None:
    if path.is_file() and path.stat().st_size > size:
        with open(path, "r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())


def _fsync_trajectories(rd: RunDirectory, snapshots: list[dict]) -> None:
    """Fsync each walker's trajectory up to the size its snapshot records (appended unsynced).

    ``events.jsonl`` is fsynced by ``EventLog.flush`` and ``labels.extxyz`` by its atomic write.
    """
    for name in {Path(snap["trajectory"]).name for snap in snapshots if snap.get("trajectory_bytes")}:
        fsync_path(rd.path / name)


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0
