"""Read and check the starting structure of a run (any file ASE or pymatgen reads)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from otfparsl.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: Two atoms closer than this (Å) are treated as overlapping input.
MIN_DISTANCE_A = 0.5

_FRAME_SELECTOR = re.compile(r"^(?P<file>.+)@(?P<frame>[+-]?\d+)$")


def split_frame(spec: str | os.PathLike) -> tuple[Path, int | None]:
    """Split ``FILE@N`` into the file and the frame index N (None without a selector).

    A path that exists as written is a file, even if its name ends in ``@N``.
    """
    text = os.fspath(spec)
    match = _FRAME_SELECTOR.match(text)
    if match is None or Path(text).is_file():
        return Path(text), None
    return Path(match["file"]), int(match["frame"])


def read_structure(path: str | os.PathLike) -> Atoms:
    """Read a structure file (extxyz, xyz, CIF, POSCAR, ...) with ASE, then pymatgen.

    Parameters
    ----------
    path
        The file, optionally with a frame selector: ``traj.extxyz@-1`` (the last frame) or
        ``traj.extxyz@N`` (frame N, from 0). A file with several frames needs one; a file
        with one frame is read as it is. Momenta (velocities) in the file are kept.

    Raises
    ------
    ConfigurationError
        When the file does not exist, neither reader can parse it, it holds several frames
        and none is named, or the named frame does not exist.
    """
    path, frame = split_frame(path)
    if not path.is_file():
        raise ConfigurationError(f"structure file {str(path)!r} does not exist; check the path")
    frames = _read_frames(path)
    n = len(frames)
    if n == 0:
        raise ConfigurationError(f"structure file {str(path)!r} holds no structure; check the file")
    if frame is None and n > 1:
        raise ConfigurationError(
            f"structure file {str(path)!r} holds {n} frames; name the one to start from: "
            f"structure: {path.name}@-1 (the last) or {path.name}@N (N from 0 to {n - 1})"
        )
    frame = 0 if frame is None else frame
    if not -n <= frame < n:
        raise ConfigurationError(
            f"frame {frame} of structure file {str(path)!r} does not exist: it holds {n} "
            f"frame(s); use @N with N from {-n} to {n - 1} (@-1: the last)"
        )
    return check_structure(to_atoms(frames[frame]))


def _read_frames(path: Path) -> list[Atoms]:
    """Every frame of ``path``: ASE's readers first, then pymatgen's (one frame)."""
    import ase.io

    try:
        frames = ase.io.read(path, index=":")
    except Exception as ase_error:  # noqa: BLE001 - fall back to pymatgen's readers
        try:
            return [_read_with_pymatgen(path)]
        except Exception:  # noqa: BLE001
            raise ConfigurationError(
                f"cannot read structure file {str(path)!r}: {ase_error}. "
                "Use a format ASE or pymatgen reads (extxyz, xyz, CIF, POSCAR)"
            ) from None
    return [frames] if isinstance(frames, Atoms) else list(frames)


def keep_input_velocities(atoms: Atoms, walker: int = 0) -> bool:
    """Return True (and log it) when ``atoms`` carries nonzero momenta to start MD from.

    A structure file with velocities (extxyz ``momenta``, e.g. the last frame of an earlier
    trajectory) continues from them; without, the caller draws Maxwell-Boltzmann velocities.
    """
    if not atoms.has("momenta") or not np.any(atoms.get_momenta()):
        return False
    logger.warning(
        "walker %d starts from the velocities of the input structure (%.1f K, %s), not from "
        "velocities drawn at the first segment's temperature; remove the momenta from the "
        "structure file to draw them",
        walker, atoms.get_temperature(), atoms.get_chemical_formula(),
    )  # fmt: skip
    return True


def to_atoms(structure: Any) -> Atoms:
    """Convert an ASE ``Atoms`` or a pymatgen ``Structure``/``Molecule`` to ``Atoms``."""
    if isinstance(structure, Atoms):
        return structure.copy()
    try:
        from pymatgen.core import Molecule, Structure
        from pymatgen.io.ase import AseAtomsAdaptor
    except ImportError:  # pragma: no cover - pymatgen is a dependency
        Structure = Molecule = ()  # type: ignore[assignment]
    if isinstance(structure, (Structure, Molecule)):
        return AseAtomsAdaptor.get_atoms(structure)
    raise ConfigurationError(
        f"a structure must be an ASE Atoms or a pymatgen Structure/Molecule; got {type(structure).__name__}"
    )


def check_structure(atoms: Atoms) -> Atoms:
    """Reject empty structures, non-finite positions, mixed periodicity and overlapping atoms; return ``atoms``."""
    if len(atoms) == 0:
        raise ConfigurationError("the structure has no atoms; check the structure file")
    if not np.all(np.isfinite(atoms.positions)):
        bad = np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1))
        raise ConfigurationError(
            f"atoms {bad[:5].tolist()} have non-finite positions (NaN or inf); fix the structure file"
        )
    if atoms.pbc.any() and not atoms.pbc.all():
        raise ConfigurationError(
            f"mixed periodicity pbc={atoms.pbc.tolist()} is not supported; "
            "use a molecule (no pbc) or a fully periodic cell"
        )
    if atoms.pbc.all() and atoms.cell.volume < 1e-6:
        raise ConfigurationError("the structure is periodic but its cell has zero volume")
    if len(atoms) > 1:
        distances = atoms.get_all_distances(mic=bool(atoms.pbc.all()))
        np.fill_diagonal(distances, np.inf)
        i, j = np.unravel_index(np.argmin(distances), distances.shape)
        if distances[i, j] < MIN_DISTANCE_A:
            raise ConfigurationError(
                f"atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are "
                f"{distances[i, j]:.3f} Å apart (minimum {MIN_DISTANCE_A} Å): overlapping atoms; "
                "check the coordinates (units must be Å)"
            )
    return atoms


def _read_with_pymatgen(path: Path) -> Atoms:
    from pymatgen.core import Molecule, Structure

    try:
        return to_atoms(Structure.from_file(path))
    except Exception:  # noqa: BLE001
        return to_atoms(Molecule.from_file(path))


def structures_digest(frames: Iterable[Atoms], results: bool = False, extra: str = "") -> str:
    """Return the SHA-256 of structures, bit for bit: the one structure hash of otfparsl.

    Parameters
    ----------
    frames
        The structures, in order.
    results
        Include the attached calculator's energy, forces and stress (labelled structures).
    extra
        Text hashed after the structures (e.g. a DFT code and its options).

    Notes
    -----
    Hashes the exact bits of atomic numbers, positions (Å), cell (Å) and pbc: the DFT label
    cache key (:func:`otfparsl.run.label_cache.label_key`) and the digest of the labels a chain
    update saw (its idempotence check).
    """
    digest = hashlib.sha256()
    for atoms in frames:
        for array in (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc):
            digest.update(np.ascontiguousarray(array).tobytes())
        if results and atoms.calc is not None:
            for key in ("energy", "forces", "stress"):
                if key in atoms.calc.results:
                    digest.update(np.ascontiguousarray(atoms.calc.results[key], dtype=float).tobytes())
    digest.update(extra.encode())
    return digest.hexdigest()
