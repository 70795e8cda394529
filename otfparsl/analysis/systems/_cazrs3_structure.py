"""The small CaZrS3 + H+ cell of ``workflows/cazrs3_proton``'s variant that runs on a laptop.

The paper's cell (``workflows/cazrs3_proton/POSCAR``: Ca32 Zr32 S96 H2, a 2x2x2 supercell of the
20-atom Pnma cell, a snapshot with thermal displacements) is folded into one Pnma cell: every
host atom is taken to fractional coordinates of the halved cell, the eight images of each site
are averaged (minimum image), and the first proton is put back on its nearest S at the S-H
bond length of H2S. The result, Ca4 Zr4 S12 H (charge +1), keeps the paper's lattice and host
geometry at 1/8 of the atoms.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

#: S-H bond length of H2S (Å), where the proton is put on its host S.
S_H_BOND_A = 1.336
#: Two images of one site in the paper's snapshot are closer than this (Å); distinct sites are
#: more than 3 Å apart in CaZrS3.
_SAME_SITE_A = 1.5


def fold_to_unit_cell(supercell: Atoms, repeat: tuple[int, int, int] = (2, 2, 2)) -> Atoms:
    """Average the images of each host site of ``supercell`` into one cell (H dropped)."""
    cell = np.asarray(supercell.cell) / np.asarray(repeat)[:, None]
    host = supercell[[s != "H" for s in supercell.get_chemical_symbols()]]
    fractional = np.linalg.solve(cell.T, host.positions.T).T % 1.0
    sites: list[tuple[str, list[np.ndarray]]] = []
    for symbol, f in zip(host.get_chemical_symbols(), fractional, strict=True):
        for site_symbol, images in sites:
            delta = f - images[0]
            delta -= np.round(delta)
            if site_symbol == symbol and np.linalg.norm(delta @ cell) < _SAME_SITE_A:
                images.append(images[0] + delta)
                break
        else:
            sites.append((symbol, [f]))
    expected = int(np.prod(repeat))
    counts = sorted({len(images) for _, images in sites})
    if counts != [expected]:
        raise ValueError(f"folding found sites with {counts} images, expected {expected} each")
    positions = np.array([np.mean(images, axis=0) for _, images in sites]) % 1.0
    return Atoms([s for s, _ in sites], scaled_positions=positions, cell=cell, pbc=True)


def cazrs3_proton_cell(poscar: str | Path) -> Atoms:
    """The 21-atom Ca4 Zr4 S12 H cell from the paper's 162-atom POSCAR (module notes)."""
    supercell = ase.io.read(poscar)
    small = fold_to_unit_cell(supercell)
    proton = supercell.positions[supercell.get_chemical_symbols().index("H")]
    fractional = np.linalg.solve(np.asarray(small.cell).T, proton) % 1.0
    small += Atoms("H", scaled_positions=[fractional], cell=small.cell, pbc=True)
    sulfur = [i for i, s in enumerate(small.get_chemical_symbols()) if s == "S"]
    distances = small.get_distances(len(small) - 1, sulfur, mic=True, vector=True)
    nearest = int(np.argmin(np.linalg.norm(distances, axis=1)))
    host = small.positions[sulfur[nearest]]
    bond = -distances[nearest] / np.linalg.norm(distances[nearest])
    small.positions[-1] = host + S_H_BOND_A * bond
    small.wrap()
    small.info["charge"] = 1
    return small


def write_cazrs3_proton_cell(poscar: str | Path, path: str | Path) -> Path:
    """Write :func:`cazrs3_proton_cell` of ``poscar`` to ``path`` (extxyz); return the path."""
    target = Path(path)
    ase.io.write(target, cazrs3_proton_cell(poscar), format="extxyz")
    return target
