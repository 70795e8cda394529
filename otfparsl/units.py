"""The few unit constants of otfparsl, and nowhere else.

Public boundaries use ASE units (eV, Å, eV/Å, eV/Å^3, fs via ``ase.units``). The paper and the
original code use kcal/mol; these constants convert the published values.
"""

from __future__ import annotations

from ase import units as _ase_units

#: 1 kcal/mol in eV.
KCAL_PER_MOL_EV: float = float(_ase_units.kcal / _ase_units.mol)
#: 1 GPa in eV/Å^3.
GPA_EV_PER_A3: float = float(_ase_units.GPa)

#: Base force sigma of the sigma head: 0.1 kcal/mol/Å in eV/Å (method.md section 1).
FORCE_SIGMA_BASE_EV_PER_A: float = 0.1 * KCAL_PER_MOL_EV
#: Fixed stress sigma: 0.1/16 kcal/mol/Å^3 in eV/Å^3 (method.md section 1).
STRESS_SIGMA_EV_PER_A3: float = 0.1 / 16.0 * KCAL_PER_MOL_EV
#: Energy sigma as a fraction of the threshold K (method.md section 1).
ENERGY_SIGMA_FRACTION_OF_K: float = 0.1
