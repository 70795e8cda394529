"""Reference labels from PySCF (Kohn-Sham DFT or Hartree-Fock on molecules)."""

from __future__ import annotations

import importlib.util
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

from otfparsl.errors import ConfigurationError, MissingDependencyError, SCFNotConverged
from otfparsl.labelers.base import LabelerKind, labelled_copy, prepare_workdir

logger = logging.getLogger(__name__)

#: Name of the PySCF log file written in the working directory of every call.
LOG_NAME = "pyscf.log"


def _import_pyscf() -> Any:
    try:
        import pyscf  # noqa: F401
        from pyscf import dft, gto, scf
    except ImportError as exc:
        raise MissingDependencyError(
            package="pyscf", extra="dft", feature="The PySCF labeler"
        ) from exc
    return gto, dft, scf


def elements_without_basis(
    basis: Any, symbols: Iterable[str], load: Callable[[str, str], Any] | None = None
) -> list[str]:
    """Return the elements of ``symbols`` that ``basis`` does not cover, by PySCF's own loader.

    Parameters
    ----------
    basis
        A basis name (``"6-31g"``) or a mapping element -> name (``"default"`` for the rest),
        as ``Mole.basis``; explicit basis data (not a name) is left to PySCF.
    symbols
        Chemical symbols (repeats allowed).
    load
        ``load(name, symbol)`` raising for an element the basis lacks; default
        ``pyscf.gto.basis.load`` (``pyscf.pbc.gto.basis.load`` for GTH bases).

    Notes
    -----
    Reads the basis file of each element once (milliseconds); no molecule is built.
    """
    if load is None:
        from pyscf.gto import basis as pyscf_basis

        load = pyscf_basis.load
    missing = []
    for symbol in sorted(set(symbols)):
        name = basis.get(symbol, basis.get("default")) if isinstance(basis, Mapping) else basis
        if not isinstance(name, str):
            if name is None:
                missing.append(symbol)
            continue
        try:
            with warnings.catch_warnings():  # PySCF suggests basis-set-exchange for what it lacks
                warnings.simplefilter("ignore", UserWarning)
                load(name, symbol)
        except (RuntimeError, KeyError, ValueError, AssertionError):  # BasisNotFoundError too
            missing.append(symbol)
    return missing


@dataclass(frozen=True)
class PySCFLabeler:
    """Label molecules with PySCF: SCF energy and analytic nuclear gradient.

    Parameters
    ----------
    xc
        Exchange-correlation functional in PySCF/libxc notation (``"b3lyp"``, ``"pbe"``), or
        ``"hf"`` for Hartree-Fock.
    basis
        Basis set name (``"6-31g"``, ``"sto-3g"``, ``"def2-svp"``).
    charge
        Total charge (elementary charges).
    spin
        Number of unpaired electrons, 2S. 0 selects restricted (RKS/RHF), otherwise unrestricted.
    max_cycle
        Maximum SCF iterations; :class:`~otfparsl.errors.SCFNotConverged` beyond it.
    conv_tol
        SCF energy convergence threshold (Hartree).
    grid_level
        DFT integration grid level (PySCF 0-9; default 3).
    num_threads
        OpenMP threads for PySCF during the call (restored afterwards; process-wide, so do not
        run two PySCF labelings in threads of one process), or None for PySCF's default (all
        cores). Set it to the cores really available: oversubscribed OpenMP threads slow PySCF
        down by an order of magnitude.
    verbose
        PySCF verbosity written to ``pyscf.log`` in the working directory.
    level_shift
        Virtual-orbital level shift (Hartree); 0.2-0.5 helps SCFs that oscillate.
    damp
        Fock-matrix damping factor in [0, 1).
    diis_space
        Number of DIIS vectors (PySCF default 8).
    second_order
        Use the second-order (Newton) SCF solver, slower per iteration but robust.
    grid_response
        Include the response of the DFT integration grid in the gradient. Without it (PySCF's
        default, cheaper) the forces differ from -dE/dR of the reported energy by about
        1e-4 - 1e-3 eV/Å at grid level 3; with it they are its exact derivative.

    Notes
    -----
    Forces are ``-dE/dR`` from PySCF's analytic gradient, converted from Hartree/Bohr to eV/Å.
    The energy is converted from Hartree to eV (``ase.units.Hartree``).
    """

    xc: str = "b3lyp"
    basis: str = "6-31g"
    charge: int = 0
    spin: int = 0
    max_cycle: int = 100
    conv_tol: float = 1e-9
    grid_level: int = 3
    num_threads: int | None = None
    verbose: int = 4
    grid_response: bool = False
    level_shift: float = 0.0
    damp: float = 0.0
    diis_space: int = 8
    second_order: bool = False

    def __post_init__(self) -> None:
        if self.spin < 0:
            raise ConfigurationError(f"spin (2S) must be >= 0; got {self.spin}.")
        if self.max_cycle < 1:
            raise ConfigurationError(f"max_cycle must be >= 1; got {self.max_cycle}.")
        if not 0.0 <= self.damp < 1.0:
            raise ConfigurationError(f"damp must be in [0, 1); got {self.damp}.")
        if self.level_shift < 0 or self.diis_space < 1:
            raise ConfigurationError(
                f"level_shift must be >= 0 and diis_space >= 1; got {self.level_shift}, "
                f"{self.diis_space}."
            )
        if not self.conv_tol > 0:
            raise ConfigurationError(f"conv_tol must be > 0 Hartree; got {self.conv_tol}.")

    def _build_scf(self, mol: Any) -> Any:
        _, dft, scf = _import_pyscf()
        if self.xc.lower() == "hf":
            mf = scf.RHF(mol) if self.spin == 0 else scf.UHF(mol)
        else:
            mf = dft.RKS(mol) if self.spin == 0 else dft.UKS(mol)
            mf.xc = self.xc
            mf.grids.level = self.grid_level
        mf.max_cycle = self.max_cycle
        mf.conv_tol = self.conv_tol
        mf.level_shift = self.level_shift
        mf.damp = self.damp
        mf.diis_space = self.diis_space
        return mf.newton() if self.second_order else mf

    def check_structure(self, atoms: Atoms) -> None:
        """Raise ConfigurationError unless ``atoms`` is a molecule whose charge and spin fit.

        Where pyscf is installed, also check that ``basis`` covers every element (where it is
        not, :meth:`check_environment` on the DFT worker reports the missing package).
        """
        if np.any(atoms.pbc):
            raise ConfigurationError(
                f"the 'pyscf' labeller handles molecules only; the structure has "
                f"pbc={atoms.pbc.tolist()} ({atoms.get_chemical_formula()}). Use labeler.kind "
                "'pyscf_pbc' (PySCF's periodic DFT), 'cp2k', 'vasp' or 'ase' (GPAW, Quantum "
                "ESPRESSO) for a periodic cell, or give a molecule without a cell"
            )
        n_electrons = int(atoms.numbers.sum()) - self.charge
        if n_electrons < 1:
            raise ConfigurationError(
                f"charge={self.charge} leaves {n_electrons} electrons in "
                f"{atoms.get_chemical_formula()} (sum of Z = {int(atoms.numbers.sum())}); fix "
                "labeler.options.charge"
            )
        if self.spin > n_electrons or (n_electrons - self.spin) % 2:
            allowed = "0, 2, 4, ..." if n_electrons % 2 == 0 else "1, 3, 5, ..."
            raise ConfigurationError(
                f"spin (2S) = {self.spin} does not fit {n_electrons} electrons "
                f"({atoms.get_chemical_formula()}, charge={self.charge}); allowed: {allowed}; "
                "fix labeler.options.spin or labeler.options.charge"
            )
        if importlib.util.find_spec("pyscf") is not None:
            self._check_basis(atoms.get_chemical_symbols())

    def _check_basis(self, symbols: Iterable[str]) -> None:
        missing = elements_without_basis(self.basis, symbols)
        if missing:
            raise ConfigurationError(
                f"basis={self.basis!r} has no functions for element(s) {missing} in PySCF's "
                "basis library (or PySCF does not know that basis); choose a basis that covers "
                "every element of the structure (e.g. 'def2-svp': H to Rn), or give "
                "labeler.options.basis as a mapping element -> basis"
            )

    def check_environment(self, symbols: Iterable[str]) -> None:
        """Raise unless pyscf imports here and ``basis`` covers every element of ``symbols``."""
        if importlib.util.find_spec("pyscf") is None:
            raise MissingDependencyError("pyscf", "dft", "The PySCF labeler")
        self._check_basis(symbols)

    def label(self, atoms: Atoms, workdir: Path) -> Atoms:
        """Return a copy of the molecule with PySCF energy (eV) and forces (eV/Å).

        Raises
        ------
        ConfigurationError
            For a periodic structure (PySCF molecular codes only) or an impossible charge/spin.
        SCFNotConverged
            When the SCF does not converge in ``max_cycle`` iterations (log text attached).
        """
        if np.any(atoms.pbc):
            raise ConfigurationError(
                f"PySCFLabeler handles molecules only; got pbc={atoms.pbc.tolist()}. "
                "Set atoms.pbc = False for a molecule, or use the 'pyscf_pbc', 'cp2k', 'vasp' or "
                "'ase' labeler (GPAW, Quantum ESPRESSO) for periodic systems."
            )
        gto, _, _ = _import_pyscf()
        path = prepare_workdir(workdir)
        log_path = path / LOG_NAME
        start = time.perf_counter()
        mol = gto.Mole()
        mol.atom = [(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions, strict=False)]
        mol.unit = "Angstrom"
        mol.basis = self.basis
        mol.charge = self.charge
        mol.spin = self.spin
        mol.verbose = self.verbose
        with open(log_path, "a", encoding="utf-8") as log:
            mol.stdout = log
            try:
                mol.build()
            except RuntimeError as exc:
                raise ConfigurationError(
                    f"PySCF rejected the molecule (charge={self.charge}, spin={self.spin}): "
                    f"{exc}. Check that charge and spin (2S) match the number of electrons."
                ) from exc
            energy_eV, forces = self._run_with_threads(mol, log_path)
        seconds = time.perf_counter() - start
        return labelled_copy(atoms, energy_eV, forces, None, seconds, "pyscf")

    def _run_with_threads(self, mol: Any, log_path: Path) -> tuple[float, np.ndarray]:
        if self.num_threads is None:
            return self._run(mol, log_path)
        from pyscf import lib

        previous = lib.num_threads()
        lib.num_threads(self.num_threads)
        try:
            return self._run(mol, log_path)
        finally:
            lib.num_threads(previous)

    def _run(self, mol: Any, log_path: Path) -> tuple[float, np.ndarray]:
        mf = self._build_scf(mol)
        energy = mf.kernel()
        if not mf.converged:
            mol.stdout.flush()
            raise SCFNotConverged(
                f"PySCF SCF ({self.xc}/{self.basis}) did not converge in {self.max_cycle} "
                f"cycles; log: {log_path}. Increase max_cycle, or check the geometry, charge "
                "and spin.",
                output=log_path.read_text(encoding="utf-8", errors="replace"),
            )
        grad = mf.nuc_grad_method()
        grad.verbose = self.verbose
        if self.xc.lower() != "hf":
            grad.grid_response = self.grid_response
        gradient = grad.kernel()  # Hartree/Bohr, shape (n_atoms, 3)
        forces = -np.asarray(gradient, dtype=float) * units.Hartree / units.Bohr
        return float(energy) * units.Hartree, forces


KIND = LabelerKind(
    name="pyscf", labeler=PySCFLabeler,
    summary="PySCF (pip extra 'dft'): Kohn-Sham DFT of molecules (no cell), in process",
)  # fmt: skip
