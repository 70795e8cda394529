"""Cells and strains the periodic labellers' derivative tests share (pyscf_pbc, cp2k)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk


def rattled_silicon(a: float) -> Atoms:
    """The 2-atom diamond Si cell of lattice constant ``a`` (Å), standard form, rattled 0.05 Å."""
    atoms = bulk("Si", "diamond", a=a)
    atoms.set_cell(atoms.cell.standard_form()[0], scale_atoms=True)
    atoms.rattle(0.05, seed=1)
    return atoms


def strained(atoms: Atoms, i: int, j: int, h: float) -> Atoms:
    """``atoms`` under the symmetric strain e_ij = e_ji = h/2 (e_ii = h), atoms moved with the cell."""
    eps = np.zeros((3, 3))
    eps[i, j] += h / 2
    eps[j, i] += h / 2
    out = atoms.copy()
    out.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + eps).T, scale_atoms=True)
    return out
