"""The labelled data set: every DFT-labelled structure of a run, in one extxyz file.

The file is append-only in meaning and replaced atomically on every append (write a temporary
file in the same folder, fsync, rename), so a crash never leaves a half-written label: a DFT
label costs up to half an hour of a cluster node and must never be lost.
"""

from __future__ import annotations

import os
from pathlib import Path

import ase.io
from ase import Atoms

from otfparsl.fileio import atomic_write


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
