"""ASE molecular dynamics built from explicit parameters (temperature in K, time in fs).

Ensembles:

- ``"langevin"``: :class:`ase.md.langevin.Langevin`, friction in 1/fs (paper: 0.01/fs).
- ``"nve"``: :class:`ase.md.verlet.VelocityVerlet`.
- ``"npt"``: :class:`ase.md.melchionna.MelchionnaNPT` (Nosé-Hoover thermostat + Parrinello-Rahman
  barostat, Melchionna et al. 1993; the class ASE also exports as ``ase.md.npt.NPT``), pressure
  in bar. Needs a fully periodic cell in triangular form.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from ase import Atoms, units
from ase.md.md import MolecularDynamics

from otfparsl.errors import ConfigurationError

logger = logging.getLogger(__name__)

ENSEMBLES = ("langevin", "nve", "npt")


def _positive(name: str, value: float) -> None:
    if not (np.isfinite(value) and value > 0):
        raise ConfigurationError(f"{name} must be a finite number > 0; got {value!r}.")


@dataclass(frozen=True)
class Segment:
    """One stretch of MD at fixed conditions.

    Parameters
    ----------
    temperature_K
        Target temperature (K); for ``"nve"`` only used for initial velocities.
    duration_fs
        Length of the segment (fs); the number of steps is ``round(duration_fs / timestep_fs)``.
    ensemble
        ``"langevin"``, ``"nve"`` or ``"npt"``.
    timestep_fs
        Integration time step (fs).
    friction_per_fs
        Langevin friction (1/fs).
    pressure_bar
        NPT external pressure (bar).
    thermostat_time_fs
        NPT Nosé-Hoover characteristic time (fs).
    barostat_time_fs
        NPT Parrinello-Rahman characteristic time (fs).
    bulk_modulus_GPa
        Estimated bulk modulus (GPa); NPT ``pfactor = barostat_time**2 * B``.
    """

    temperature_K: float
    duration_fs: float
    ensemble: str = "langevin"
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.01
    pressure_bar: float = 1.0
    thermostat_time_fs: float = 25.0
    barostat_time_fs: float = 75.0
    bulk_modulus_GPa: float = 100.0

    def __post_init__(self) -> None:
        if self.ensemble not in ENSEMBLES:
            raise ConfigurationError(
                f"ensemble must be one of {list(ENSEMBLES)}; got {self.ensemble!r}."
            )
        for name in ("temperature_K", "duration_fs", "timestep_fs", "friction_per_fs",
                     "thermostat_time_fs", "barostat_time_fs", "bulk_modulus_GPa"):
            _positive(name, getattr(self, name))
        if not np.isfinite(self.pressure_bar):
            raise ConfigurationError(f"pressure_bar must be finite; got {self.pressure_bar!r}.")
        if self.n_steps < 1:
            raise ConfigurationError(
                f"duration_fs={self.duration_fs} is shorter than one step of "
                f"timestep_fs={self.timestep_fs}; make the segment longer."
            )

    @property
    def n_steps(self) -> int:
        """Number of MD steps of the segment."""
        return int(round(self.duration_fs / self.timestep_fs))


def _check_npt_cell(atoms: Atoms) -> None:
    from ase.md.melchionna import MelchionnaNPT

    if not np.all(atoms.pbc):
        raise ConfigurationError(
            f"NPT needs a periodic cell in all three directions; got pbc={atoms.pbc.tolist()}. "
            "Use 'langevin' or 'nve' for a molecule."
        )
    if not MelchionnaNPT._istriangular(np.asarray(atoms.cell)):
        raise ConfigurationError(
            "NPT (Melchionna) needs a triangular cell matrix; got "
            f"{np.asarray(atoms.cell).round(4).tolist()}. Rotate it first, e.g. "
            "atoms.set_cell(atoms.cell.standard_form()[0], scale_atoms=True)."
        )


def check_ensemble_structure(ensemble: str, atoms: Atoms) -> None:
    """Raise ConfigurationError when ``atoms`` cannot run under ``ensemble``.

    NPT (Melchionna) needs a cell periodic in all three directions, in triangular form.
    """
    if ensemble == "npt":
        _check_npt_cell(atoms)


def make_dynamics(
    atoms: Atoms,
    segment: Segment,
    seed: int | Sequence[int],
    logfile: IO[str] | str | None = None,
    loginterval: int = 1,
) -> MolecularDynamics:
    """Return the ASE dynamics of ``segment`` acting on ``atoms`` (velocities are kept).

    Parameters
    ----------
    atoms
        Structure with a calculator attached.
    segment
        Conditions (ensemble, temperature, time step...).
    seed
        Seed of the Langevin noise (``numpy.random.default_rng(seed)``); unused by NVE/NPT.
    logfile, loginterval
        ASE MD log (file name or stream) and its interval in steps.
    """
    dt = segment.timestep_fs * units.fs
    common: dict[str, Any] = {"logfile": logfile, "loginterval": loginterval}
    if segment.ensemble == "langevin":
        from ase.md.langevin import Langevin

        return Langevin(
            atoms,
            dt,
            temperature_K=segment.temperature_K,
            friction=segment.friction_per_fs / units.fs,
            fixcm=False,
            rng=np.random.default_rng(seed),
            **common,
        )
    if segment.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, dt, **common)
    _check_npt_cell(atoms)
    from ase.md.melchionna import MelchionnaNPT

    ptime = segment.barostat_time_fs * units.fs
    return MelchionnaNPT(
        atoms,
        dt,
        temperature_K=segment.temperature_K,
        externalstress=segment.pressure_bar * units.bar,
        ttime=segment.thermostat_time_fs * units.fs,
        pfactor=ptime**2 * segment.bulk_modulus_GPa * units.GPa,
        **common,
    )


def target_temperature_K(dynamics: MolecularDynamics) -> float | None:
    """Return the thermostat target of ``dynamics`` in K, or None for NVE."""
    for attr in ("temp", "temperature"):
        value = getattr(dynamics, attr, None)
        if value is not None:
            return float(np.mean(value)) / units.kB
    return None
