"""Temperature programmes: a sequence of MD segments run on the same atoms.

Example (the LaMnO3 run of the paper): ``TemperatureProgramme([Segment(300, 25000, "npt"),
Segment(800, 100000, "npt"), Segment(300, 25000, "npt")])``. Velocities carry over from one
segment to the next; initial velocities are drawn from the Maxwell-Boltzmann distribution at the
first segment's temperature. The state of a thermostat/barostat (Nosé-Hoover, Parrinello-Rahman
variables) restarts at each segment boundary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np
from ase import Atoms
from ase.md.md import MolecularDynamics
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from otfparsl.errors import ConfigurationError
from otfparsl.md.dynamics import Segment, make_dynamics


def segment_seed(seed: int, index: int) -> list[int]:
    """Return the seed of segment ``index`` derived from the run seed.

    ``[seed, index + 1]`` for segment ``index``; ``[seed, 0]`` (index -1) is the seed of the
    initial velocities. numpy's SeedSequence makes these independent streams.
    """
    return [int(seed), int(index) + 1]


@dataclass(frozen=True)
class TemperatureProgramme:
    """An ordered sequence of :class:`Segment` objects.

    Parameters
    ----------
    segments
        The segments, run in order.
    """

    segments: tuple[Segment, ...]

    def __init__(self, segments: Sequence[Segment]) -> None:
        segs = tuple(segments)
        if not segs:
            raise ConfigurationError("a temperature programme needs at least one segment; got 0.")
        bad = [type(s).__name__ for s in segs if not isinstance(s, Segment)]
        if bad:
            raise ConfigurationError(f"segments must be Segment objects; got {bad}.")
        object.__setattr__(self, "segments", segs)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Yield ``(segment index, number of steps)`` for every segment."""
        for index, segment in enumerate(self.segments):
            yield index, segment.n_steps

    @property
    def total_steps(self) -> int:
        """Number of MD steps of the whole programme."""
        return sum(s.n_steps for s in self.segments)

    @property
    def total_duration_fs(self) -> float:
        """Simulated time of the whole programme (fs)."""
        return sum(s.n_steps * s.timestep_fs for s in self.segments)

    def locate(self, step: int) -> tuple[int, int]:
        """Return ``(segment index, step within that segment)`` of global step ``step``.

        Used to resume a run in the middle of a segment. ``step`` counts from 0.
        """
        if not 0 <= step < self.total_steps:
            raise ConfigurationError(
                f"step must be in [0, {self.total_steps}); got {step}."
            )
        for index, n_steps in self:
            if step < n_steps:
                return index, step
            step -= n_steps
        raise AssertionError("unreachable")  # pragma: no cover

    def initialize_velocities(self, atoms: Atoms, seed: int) -> None:
        """Draw Maxwell-Boltzmann momenta at the first segment's temperature (in place).

        The centre-of-mass momentum is removed afterwards.
        """
        rng = np.random.default_rng(segment_seed(seed, -1))
        MaxwellBoltzmannDistribution(
            atoms, temperature_K=self.segments[0].temperature_K, rng=rng
        )
        Stationary(atoms)

    def make_dynamics(
        self, atoms: Atoms, index: int, seed: int, logfile: IO[str] | str | None = None
    ) -> MolecularDynamics:
        """Return the dynamics of segment ``index`` on ``atoms`` (velocities kept)."""
        if not 0 <= index < len(self.segments):
            raise ConfigurationError(
                f"segment index must be in [0, {len(self.segments)}); got {index}."
            )
        return make_dynamics(atoms, self.segments[index], segment_seed(seed, index), logfile)

    def iter_dynamics(
        self, atoms: Atoms, seed: int, logfile: IO[str] | str | None = None
    ) -> Iterator[tuple[int, int, MolecularDynamics]]:
        """Yield ``(index, n_steps, dynamics)`` per segment; the caller runs the steps.

        Velocities are not initialised here: call :meth:`initialize_velocities` first.
        """
        for index, n_steps in self:
            yield index, n_steps, self.make_dynamics(atoms, index, seed, logfile)

    def run(self, atoms: Atoms, seed: int, logfile: IO[str] | str | None = None) -> None:
        """Initialise velocities and run every segment to completion on ``atoms``."""
        self.initialize_velocities(atoms, seed)
        for _, n_steps, dynamics in self.iter_dynamics(atoms, seed, logfile):
            dynamics.run(n_steps)
