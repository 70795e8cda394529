"""The labeler contract and the helpers every labeler shares.

A labeler runs one reference (DFT) calculation on one structure in its own working directory and
returns a copy of the structure whose calculator is a
:class:`~ase.calculators.singlepoint.SinglePointCalculator` holding the reference energy (eV),
forces (eV/Å) and, for fully periodic cells, stress (eV/Å^3, Voigt order, ASE sign convention).
The wall time of the calculation is stored in ``atoms.info["label_seconds"]``.

Labelers are small picklable value objects (settings only, no live calculator) so they can be
sent to a remote worker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from otfparsl.errors import ConfigurationError

logger = logging.getLogger(__name__)


@runtime_checkable
class Labeler(Protocol):
    """Something that labels one structure with reference energy, forces and stress."""

    def label(self, atoms: Atoms, workdir: Path) -> Atoms:
        """Return a labelled copy of ``atoms``; run the calculation in ``workdir``.

        Parameters
        ----------
        atoms
            The structure (positions in Å). Not modified.
        workdir
            Working directory of this call; created if missing (parents included). The caller
            chooses a fresh name per call (e.g. ``labels/step_000123``).

        Returns
        -------
        ase.Atoms
            A copy with a SinglePointCalculator holding ``energy`` (eV), ``forces``
            (n_atoms, 3) eV/Å and, for periodic cells, ``stress`` (6,) eV/Å^3, and
            ``info["label_seconds"]``.
        """
        ...

    def check_structure(self, atoms: Atoms) -> None:
        """Raise ConfigurationError when this labeller cannot label ``atoms`` (no I/O)."""
        ...

    def check_environment(self, symbols: Iterable[str]) -> None:
        """Raise when what the labeller needs is missing where it runs (a `dft` worker)."""
        ...


@dataclass(frozen=True)
class LabelerKind:
    """One DFT code, declared once in its own module of :mod:`otfparsl.labelers`.

    The module defines ``KIND = LabelerKind(...)``; settings, preflight and ``make_labeler`` ask
    the registry (:func:`otfparsl.labelers.kinds`) and the labeller's own checks.

    Attributes
    ----------
    name
        The value of ``labeler.kind`` in a run YAML.
    labeler
        The labeller class: a frozen dataclass whose fields are ``labeler.options``.
    summary
        One line for the docs and errors: what it computes and for which structures.
    """

    name: str
    labeler: type
    summary: str


def prepare_workdir(workdir: str | Path) -> Path:
    """Create the working directory of one labelling call and return it as an absolute path."""
    path = Path(workdir).absolute()
    if path.exists() and not path.is_dir():
        raise ConfigurationError(
            f"labelling workdir {str(path)!r} exists and is not a directory; "
            "pass a fresh directory name per call."
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def three_positive_ints(name: str, value: object, alternative: str = "") -> tuple[int, int, int]:
    """Return ``value`` as three integers >= 1 (a k-point mesh or an FFT grid), or raise.

    ``alternative`` names what else the option accepts, for the message (e.g. "or null (Gamma only)").
    """
    try:
        items = tuple(int(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        items = ()
    if len(items) != 3 or any(v < 1 for v in items) or list(items) != list(value):  # type: ignore[call-overload]
        extra = f" {alternative}" if alternative else ""
        raise ConfigurationError(
            f"{name} must be three integers >= 1 (one per cell vector){extra}; got {value!r}. "
            f"Example: {name}: [2, 2, 2]"
        )
    return items  # type: ignore[return-value]


def is_periodic(atoms: Atoms) -> bool:
    """Return True when the cell is periodic in all three directions (stress is defined)."""
    return bool(np.all(atoms.pbc))


def labelled_copy(
    atoms: Atoms,
    energy_eV: float,
    forces_eV_per_A: np.ndarray,
    stress_eV_per_A3: np.ndarray | None,
    seconds: float,
    labeler: str,
) -> Atoms:
    """Return a copy of ``atoms`` carrying the reference results.

    Parameters
    ----------
    atoms
        The input structure.
    energy_eV
        Total energy (eV).
    forces_eV_per_A
        Forces, shape (n_atoms, 3), eV/Å.
    stress_eV_per_A3
        Stress, shape (6,) Voigt or (3, 3), eV/Å^3, or None.
    seconds
        Wall time of the calculation (s).
    labeler
        Short name of the labeler, stored in ``info["labeler"]``.
    """
    forces = np.asarray(forces_eV_per_A, dtype=float).reshape(len(atoms), 3)
    if not (np.isfinite(energy_eV) and np.all(np.isfinite(forces))):
        from otfparsl.errors import LabelingFailed

        raise LabelingFailed(f"{labeler} returned a non-finite energy or forces (E={energy_eV}).")
    out = atoms.copy()
    results: dict[str, object] = {"energy": float(energy_eV), "forces": forces}
    if stress_eV_per_A3 is not None:
        stress = np.asarray(stress_eV_per_A3, dtype=float)
        if stress.shape == (3, 3):
            from ase.stress import full_3x3_to_voigt_6_stress

            stress = full_3x3_to_voigt_6_stress(stress)
        results["stress"] = stress.reshape(6)
    out.calc = SinglePointCalculator(out, **results)
    out.info["label_seconds"] = float(seconds)
    out.info["labeler"] = labeler
    logger.info("%s labelled %d atoms in %.2f s", labeler, len(atoms), seconds)
    return out
