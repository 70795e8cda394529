"""The labelled data set: every DFT-labelled structure of a run, in one extxyz file.

The file is append-only in meaning and replaced atomically on every append (write a temporary
file in the same folder, fsync, rename, fsync the folder), so a crash never leaves a
half-written label and the size a checkpoint records is on the disk: a DFT label costs up to half
an hour of a cluster node and must never be lost. :func:`read_frames` reads an extxyz that is
appended to in place (a trajectory), whose last frame a crash or a full disk may have cut.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import ase.io
from ase import Atoms

from otfparsl.fileio import atomic_write

log = logging.getLogger(__name__)


class LabelledDataset:
    """The labelled structures of a run, kept in memory and in ``labels.extxyz``.

    Each structure holds its DFT energy/forces/stress in a SinglePointCalculator (raw DFT
    values, without the energy offset) and, in ``info``/``arrays``, what the ensemble predicted
    before it was labelled.

    Parameters
    ----------
    path
        The extxyz file; read if it exists (resume), created on the first append otherwise.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._frames: list[Atoms] = []
        if self.path.is_file() and self.path.stat().st_size > 0:
            self._frames = list(ase.io.read(self.path, index=":", format="extxyz"))

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> Atoms:
        return self._frames[index]

    @property
    def frames(self) -> list[Atoms]:
        """The labelled structures, oldest first (the newest is the last)."""
        return list(self._frames)

    def append(self, atoms: Atoms) -> None:
        """Add one labelled structure and commit the file atomically."""
        if atoms.calc is None or "energy" not in atoms.calc.results:
            raise ValueError("only labelled structures (with a DFT energy) can join the data set")
        frames = [*self._frames, atoms]
        atomic_write(self.path, lambda handle: ase.io.write(handle, frames, format="extxyz"), binary=False)
        self._frames = frames


def read_labels(path: str | os.PathLike, n_labels: int | None = None) -> list[Atoms]:
    """Read the first ``n_labels`` labelled structures of a ``labels.extxyz`` (all if None)."""
    frames = list(ase.io.read(path, index=":", format="extxyz"))
    return frames if n_labels is None else frames[:n_labels]


def read_frames(path: str | os.PathLike) -> list[Atoms]:
    """Read every whole frame of an appended extxyz (a trajectory); a torn last frame is left out.

    A crash or a full disk in the middle of an append leaves the last frame cut off: the frames
    before it are read, with one warning naming the file and the byte offset where it starts.
    A damaged frame that is not the last one raises ase's own error, as before.
    """
    path = Path(path)
    size = path.stat().st_size
    whole = _whole_frames_end(path)
    if whole == size:
        return list(ase.io.read(path, index=":", format="extxyz")) if size else []
    log.warning(
        "%s ends with a torn frame from byte %d on (a crash or a full disk while it was written); "
        "read the frames before it", path, whole,
    )  # fmt: skip
    with open(path, "rb") as handle:
        text = handle.read(whole).decode("utf-8")
    return list(ase.io.read(io.StringIO(text), index=":", format="extxyz")) if text else []


def _whole_frames_end(path: Path) -> int:
    """Byte offset after the last whole frame (the file's size when no frame is torn).

    A frame is a count line, a comment line and that many atom lines, each ending in a newline;
    only a frame that the end of the file cuts short is torn.
    """
    end = offset = 0
    needed = 0  # lines still missing from the frame being read; 0 between frames
    with open(path, "rb") as handle:
        for raw in handle:
            offset += len(raw)
            if not raw.endswith(b"\n"):
                return end  # a line the end of the file cut (it can only be the last)
            if needed == 0:
                if not raw.strip():
                    end = offset
                    continue
                try:
                    needed = int(raw) + 1  # the comment line and the atoms
                except ValueError:  # not a frame start: let ase say what is wrong
                    return os.fstat(handle.fileno()).st_size
                continue
            needed -= 1
            if needed == 0:
                end = offset
    return end
