"""LaMnO3 in its room-temperature Pbnm structure and the 2x2x2 pseudo-cubic supercell.

The published structure (Rodriguez-Carvajal et al., Phys. Rev. B 57, R3189 (1998), neutron
powder diffraction at room temperature, space group Pbnm, No. 62): a = 5.5367, b = 5.7473,
c = 7.6929 Å; La on 4c (-0.0078, 0.0490, 1/4), Mn on 4b (1/2, 0, 0), O1 on 4c
(0.0745, 0.4874, 1/4), O2 on 8d (0.7256, 0.3066, 0.0384). These coordinates give the
Jahn-Teller-distorted MnO6 octahedron of the paper: Mn-O 1.906 (x2), 1.968 (x2) and
2.180 (x2) Å (published: 1.907, 1.968, 2.178 Å; checked in the tests).

The 2x2x2 pseudo-cubic supercell (40 atoms, 8 formula units) has the cell vectors
``A1 = a + b``, ``A2 = b - a``, ``A3 = c`` of the orthorhombic cell (each about twice the
pseudo-cubic edge of 3.9 Å), rotated so that the cell matrix is upper triangular
(``A2`` along y, ``A3`` along z), the form ASE's NPT (Melchionna) integrates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import make_supercell

#: Orthorhombic lattice parameters a, b, c of LaMnO3 at room temperature, Å (RC98).
PBNM_LATTICE_A = (5.5367, 5.7473, 7.6929)
#: Fractional coordinates of the asymmetric unit (RC98): element, Wyckoff site, (x, y, z).
PBNM_SITES = (
    ("La", "4c", (-0.0078, 0.0490, 0.25)),
    ("Mn", "4b", (0.5, 0.0, 0.0)),
    ("O", "4c", (0.0745, 0.4874, 0.25)),
    ("O", "8d", (0.7256, 0.3066, 0.0384)),
)
#: The eight general positions of Pbnm: (rotation diagonal, translation) of x, y, z.
_PBNM_OPERATIONS = tuple(
    (sign * np.array(rot, dtype=float), np.array(shift))
    for sign in (1.0, -1.0)
    for rot, shift in (
        ((1, 1, 1), (0.0, 0.0, 0.0)),
        ((-1, -1, 1), (0.0, 0.0, 0.5)),
        ((1, -1, -1), (0.5, 0.5, 0.0)),
        ((-1, 1, -1), (0.5, 0.5, 0.5)),
    )
)
#: Supercell matrix from the orthorhombic cell to the 2x2x2 pseudo-cubic one (rows: A1, A2, A3).
PSEUDOCUBIC_FROM_PBNM = np.array([[1, 1, 0], [-1, 1, 0], [0, 0, 1]])
_ORDER = {"La": 0, "Mn": 1, "O": 2}


def _orbit(xyz: tuple[float, float, float]) -> list[np.ndarray]:
    """Distinct images of a fractional position under the Pbnm operations (in [0, 1))."""
    found: list[np.ndarray] = []
    for rotation, shift in _PBNM_OPERATIONS:
        image = (rotation * np.asarray(xyz) + shift) % 1.0
        if not any(np.allclose((image - f + 0.5) % 1.0 - 0.5, 0.0, atol=1e-8) for f in found):
            found.append(image)
    return found


def lamno3_pbnm() -> Atoms:
    """Return the 20-atom orthorhombic (Pbnm) cell of LaMnO3 at room temperature (RC98).

    Returns
    -------
    ase.Atoms
        La4 Mn4 O12 in the cell a x b x c = 5.5367 x 5.7473 x 7.6929 Å, periodic, atoms
        ordered La, Mn, O.
    """
    symbols, scaled = [], []
    for symbol, _, xyz in PBNM_SITES:
        images = _orbit(xyz)
        symbols += [symbol] * len(images)
        scaled += images
    atoms = Atoms(symbols, scaled_positions=scaled, cell=np.diag(PBNM_LATTICE_A), pbc=True)
    return atoms[np.argsort([_ORDER[s] for s in symbols], kind="stable")]


def upper_triangular(atoms: Atoms) -> Atoms:
    """Return a copy rotated so that the cell matrix is upper triangular (rows a1, a2, a3).

    ``a3`` goes along z and ``a2`` into the yz plane, so ``cell[1, 0] = cell[2, 0] =
    cell[2, 1] = 0`` exactly (ASE's NPT checks these for equality with zero). Lengths, angles
    and fractional coordinates are unchanged.
    """
    cell = np.asarray(atoms.cell, dtype=float)
    e3 = cell[2] / np.linalg.norm(cell[2])
    e2 = cell[1] - (cell[1] @ e3) * e3
    e2 /= np.linalg.norm(e2)
    e1 = np.cross(e2, e3)
    rotated = cell @ np.column_stack([e1, e2, e3])
    rotated[1, 0] = rotated[2, 0] = rotated[2, 1] = 0.0
    if rotated[0, 0] <= 0.0:
        raise ValueError(f"cell {cell.tolist()} is left-handed; swap two cell vectors first")
    out = atoms.copy()
    out.set_cell(rotated, scale_atoms=True)
    return out


def lamno3_pseudocubic_supercell() -> Atoms:
    """Return the 40-atom 2x2x2 pseudo-cubic supercell of Pbnm LaMnO3, upper triangular.

    Returns
    -------
    ase.Atoms
        La8 Mn8 O24 with cell vectors A1 = a + b, A2 = b - a, A3 = c of :func:`lamno3_pbnm`
        (|A1| = |A2| = 7.975 Å, |A3| = 7.693 Å, angle(A1, A2) = 87.8 deg), ordered La, Mn, O.
    """
    supercell = make_supercell(lamno3_pbnm(), PSEUDOCUBIC_FROM_PBNM)
    symbols = supercell.get_chemical_symbols()
    supercell = supercell[np.argsort([_ORDER[s] for s in symbols], kind="stable")]
    supercell.wrap()
    return upper_triangular(supercell)


def write_lamno3_structure(path: str | Path, small: bool = False) -> Path:
    """Write the 40-atom supercell (or, ``small``, the 20-atom Pbnm cell) as extxyz; return the path."""
    import ase.io

    path = Path(path)
    atoms = lamno3_pbnm() if small else lamno3_pseudocubic_supercell()
    atoms.info["source"] = (
        "LaMnO3 Pbnm, Rodriguez-Carvajal et al. PRB 57 R3189 (1998), room temperature"
    )
    atoms.info["supercell"] = (
        "none: the Pbnm cell a, b, c"
        if small
        else "2x2x2 pseudo-cubic: A1=a+b, A2=b-a, A3=c, rotated upper triangular"
    )
    ase.io.write(path, atoms, format="extxyz")
    return path
