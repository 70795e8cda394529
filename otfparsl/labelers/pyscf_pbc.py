"""Reference labels of crystals from PySCF's periodic Kohn-Sham DFT (energy, forces, stress).

Gaussian basis, GTH pseudopotentials, a plane-wave (FFT) grid for the Coulomb and XC terms, a
Gamma-centred k-point mesh; analytic nuclear gradients (``pyscf.pbc.grad.krks``) and the analytic
stress tensor (``pyscf.pbc.grad.krks_stress``, K. Doll, Mol. Phys. 108, 223 (2010)). It installs
with pip (``pip install 'otfparsl[dft]'``, no system package, no executable), so it is the
periodic code the tests and the embedded crystal demo (``workflows/crystal_npt``) run for real.

Why this code for the periodic demo (measured 2026-12-02 on the 2-core development machine,
shared with other jobs; Si 2-atom primitive cell):

- **Cost.** One label (SCF + forces + stress) of the demo's setting (PBE, gth-szv/gth-pbe,
  2x2x2 k-points, a fixed 15^3 FFT mesh, a = 5.79 Å) takes 9.1 CPU-seconds with one thread;
  evaluating the AOs on the FFT grid dominates. Gamma only costs about half, but is not a
  crystal: with LDA at a = 5.43 Å it gives +66 GPa, and still +16 GPa at 6.0 Å.
- **Reliability.** The stress is ``(1/V) dE/d(strain)`` of the reported energy to 2e-7 eV/Å^3
  and the forces ``-dE/dR`` to 8e-6 eV/Å (central differences at the same fixed mesh, 15^3;
  ``tests/unit/labelers/test_labelers_pyscf_pbc.py``). A coarser mesh breaks translation
  invariance (the egg-box effect): forces off -dE/dR by 2e-4 eV/Å at 13^3, 2e-3 eV/Å at 11^3.
- **Installation.** pip only (``pyscf==2.14.0``, the ``dft`` extra), no executable, no system
  package. ``pip install gpaw`` (26.7.0, after ``apt-get install libxc-dev libopenblas-dev
  gpaw-data``, 7 s) failed to build here after 56 s (``c/bmgs/zero.c`` includes the C++ header
  ``<algorithm>`` but is compiled as C). CP2K from Debian (2023.1) has its
  own labeller, ``labeler.kind: cp2k`` (spin, DFT+U, charged cells; ``otfparsl/labelers/cp2k.py``).

Limits of PySCF 2.14.0's periodic stress, checked before a run: closed-shell (restricted) Kohn-
Sham only, LDA/GGA/meta-GGA (no hybrid functional, no DFT+U: ``cp2k`` has DFT+U), FFT density fitting, cells periodic
in three directions. No smearing: use it for insulators and semiconductors.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

from otfparsl.errors import (
    ConfigurationError,
    LabelingFailed,
    MissingDependencyError,
    SCFNotConverged,
)
from otfparsl.labelers.base import (
    LabelerKind,
    is_periodic,
    labelled_copy,
    prepare_workdir,
    three_positive_ints,
)

logger = logging.getLogger(__name__)

#: Name of the PySCF log file written in the working directory of every call.
LOG_NAME = "pyscf_pbc.log"

#: Hartree/Bohr^3 in eV/Å^3 (PySCF's stress unit to ASE's).
HARTREE_PER_BOHR3_EV_PER_A3: float = units.Hartree / units.Bohr**3


def _import_pbc() -> tuple[Any, Any]:
    try:
        from pyscf.pbc import dft, gto
    except ImportError as exc:
        raise MissingDependencyError(
            package="pyscf", extra="dft", feature="The periodic PySCF labeler ('pyscf_pbc')"
        ) from exc
    return gto, dft


@dataclass(frozen=True)
class PySCFPeriodicLabeler:
    """Label crystals with PySCF periodic Kohn-Sham DFT: energy, forces and stress.

    Parameters
    ----------
    xc
        Exchange-correlation functional in PySCF/libxc notation, LDA, GGA or meta-GGA
        (``"pbe"``, ``"lda,vwn"``); hybrids have no stress in PySCF and are rejected.
    basis
        Gaussian basis for every element (``"gth-szv"``, ``"gth-dzvp"``).
    pseudo
        GTH pseudopotential family matching ``xc`` (``"gth-pbe"``, ``"gth-pade"`` for LDA).
    kpts
        Gamma-centred Monkhorst-Pack mesh, three integers (``(1, 1, 1)``: Gamma only).
    mesh
        FFT grid points along each cell vector, or None to let PySCF choose them from
        ``ke_cutoff_Ha`` (or from its precision) for every structure. A fixed mesh keeps the
        energy a smooth function of the cell, so that the stress is its exact strain derivative
        and energies along an NPT trajectory do not jump when PySCF would change the grid.
    ke_cutoff_Ha
        Kinetic-energy cutoff of the FFT grid (Hartree) when ``mesh`` is None; None: PySCF's
        choice from ``precision``.
    precision
        PySCF's integral screening threshold (``cell.precision``).
    charge
        Total charge of the cell (elementary charges); the cell must keep an even number of
        electrons (restricted Kohn-Sham).
    max_cycle
        Maximum SCF iterations; :class:`~otfparsl.errors.SCFNotConverged` beyond it.
    conv_tol
        SCF energy convergence threshold (Hartree per cell).
    level_shift
        Virtual-orbital level shift (Hartree); 0.1-0.3 helps SCFs that oscillate.
    damp
        Fock-matrix damping factor in [0, 1).
    num_threads
        OpenMP threads of PySCF during the call (restored afterwards; process-wide), or None
        for PySCF's default (all cores). Set it to the cores really available.
    verbose
        PySCF verbosity written to ``pyscf_pbc.log`` in the working directory.

    Notes
    -----
    The energy is the total energy per cell, ``E`` (Hartree -> eV). Forces are
    ``F = -dE/dR`` (Hartree/Bohr -> eV/Å). The stress is PySCF's strain derivative
    ``sigma_ij = (1/V) dE/de_ij`` (Hartree/Bohr^3 -> eV/Å^3), symmetrised
    ``(sigma + sigma^T) / 2`` and written in ASE's Voigt order and sign (positive = tensile),
    ``xx, yy, zz, yz, xz, xy``.
    """

    xc: str = "pbe"
    basis: str = "gth-szv"
    pseudo: str = "gth-pbe"
    kpts: tuple[int, int, int] = (1, 1, 1)
    mesh: tuple[int, int, int] | None = None
    ke_cutoff_Ha: float | None = None
    precision: float = 1e-8
    charge: int = 0
    max_cycle: int = 100
    conv_tol: float = 1e-9
    level_shift: float = 0.0
    damp: float = 0.0
    num_threads: int | None = None
    verbose: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "kpts", three_positive_ints("kpts", self.kpts))
        if self.mesh is not None:
            object.__setattr__(self, "mesh", three_positive_ints("mesh", self.mesh))
        if self.ke_cutoff_Ha is not None and not self.ke_cutoff_Ha > 0:
            raise ConfigurationError(f"ke_cutoff_Ha must be > 0 Hartree; got {self.ke_cutoff_Ha}.")
        if not 0 < self.precision < 1:
            raise ConfigurationError(f"precision must be in (0, 1); got {self.precision}.")
        if self.max_cycle < 1:
            raise ConfigurationError(f"max_cycle must be >= 1; got {self.max_cycle}.")
        if not self.conv_tol > 0:
            raise ConfigurationError(f"conv_tol must be > 0 Hartree; got {self.conv_tol}.")
        if not 0.0 <= self.damp < 1.0 or self.level_shift < 0:
            raise ConfigurationError(
                f"damp must be in [0, 1) and level_shift >= 0 Hartree; got {self.damp}, "
                f"{self.level_shift}."
            )
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigurationError(f"num_threads must be >= 1 or None; got {self.num_threads}.")

    # ------------------------------------------------------------------ checks
    def check_structure(self, atoms: Atoms) -> None:
        """Raise ConfigurationError unless ``atoms`` is a 3D-periodic closed-shell cell.

        Where pyscf is installed, also check that ``basis`` and ``pseudo`` cover every element.
        """
        if not is_periodic(atoms):
            raise ConfigurationError(
                f"the 'pyscf_pbc' labeller needs a cell periodic in all three directions; the "
                f"structure has pbc={atoms.pbc.tolist()} ({atoms.get_chemical_formula()}). Use "
                "labeler.kind 'pyscf' for a molecule, or give a crystal with pbc=\"T T T\""
            )
        volume = abs(float(np.linalg.det(np.asarray(atoms.cell))))
        if volume < 1e-6:
            raise ConfigurationError(
                f"the cell of {atoms.get_chemical_formula()} has zero volume "
                f"({np.asarray(atoms.cell).round(4).tolist()}); give three independent cell vectors"
            )
        n_electrons = int(atoms.numbers.sum()) - self.charge
        if n_electrons < 2 or n_electrons % 2:
            raise ConfigurationError(
                f"restricted Kohn-Sham needs an even number of electrons; "
                f"{atoms.get_chemical_formula()} with charge={self.charge} has {n_electrons} "
                "(sum of Z minus the charge; GTH cores hold an even number). Use a cell with "
                "an even electron count, or fix labeler.options.charge"
            )
        if importlib.util.find_spec("pyscf") is not None:  # else check_environment says so
            self._check_basis_and_pseudo(atoms.get_chemical_symbols())

    def check_environment(self, symbols: Iterable[str]) -> None:
        """Raise unless PySCF imports, ``xc`` has a stress and every element has basis and pseudo.

        Raises
        ------
        MissingDependencyError
            pyscf is not installed here.
        ConfigurationError
            An unknown or hybrid functional, or an element without ``basis`` or ``pseudo``.
        """
        if importlib.util.find_spec("pyscf") is None:
            raise MissingDependencyError("pyscf", "dft", "The periodic PySCF labeler ('pyscf_pbc')")
        self._check_xc()
        self._check_basis_and_pseudo(symbols)

    def _check_basis_and_pseudo(self, symbols: Iterable[str]) -> None:
        """Raise ConfigurationError for an element without ``basis`` or ``pseudo`` (milliseconds)."""
        from pyscf.lib.exceptions import BasisNotFoundError
        from pyscf.pbc.gto import basis, pseudo

        for symbol in sorted(set(symbols)):
            for what, load, name in (
                ("basis", basis.load, self.basis),
                ("pseudo", pseudo.load, self.pseudo),
            ):
                try:
                    with warnings.catch_warnings():  # PySCF suggests basis-set-exchange
                        warnings.simplefilter("ignore", UserWarning)
                        load(name, symbol)
                except (BasisNotFoundError, KeyError, RuntimeError) as exc:
                    raise ConfigurationError(
                        f"PySCF has no {what} {name!r} for {symbol}: {exc}. Choose a GTH {what} "
                        "that covers every element (e.g. basis 'gth-szv' or 'gth-dzvp', pseudo "
                        "'gth-pbe' or 'gth-pade'); the files are in pyscf/pbc/gto/"
                    ) from None

    def _check_xc(self) -> None:
        from pyscf.dft import libxc

        try:
            hybrid = libxc.is_hybrid_xc(self.xc)
        except KeyError as exc:
            raise ConfigurationError(
                f"xc={self.xc!r} is not a functional libxc knows ({exc}); use e.g. 'pbe', "
                "'lda,vwn', 'pbesol' or 'scan'"
            ) from None
        if hybrid:
            raise ConfigurationError(
                f"xc={self.xc!r} is a hybrid functional; PySCF 2.14 has no periodic stress for "
                "hybrids. Use an LDA/GGA/meta-GGA ('pbe', 'lda,vwn', 'scan') or labeler.kind "
                "'vasp' for hybrid labels"
            )

    # ------------------------------------------------------------------ label
    def label(self, atoms: Atoms, workdir: Path) -> Atoms:
        """Return a copy of the crystal with energy (eV), forces (eV/Å) and stress (eV/Å^3).

        Parameters
        ----------
        atoms
            A 3D-periodic cell (positions and cell in Å). Not modified.
        workdir
            Working directory of this call; ``pyscf_pbc.log`` is written there.

        Raises
        ------
        ConfigurationError
            A non-periodic cell, an odd electron count, or a functional without stress.
        SCFNotConverged
            When the SCF does not converge in ``max_cycle`` iterations (log text attached).
        LabelingFailed
            When PySCF returns a non-finite energy, forces or stress.
        """
        self.check_structure(atoms)
        self._check_xc()
        path = prepare_workdir(workdir)
        log_path = path / LOG_NAME
        start = time.perf_counter()
        with open(log_path, "a", encoding="utf-8") as log, self._threads():
            cell = self._build_cell(atoms, log)
            energy_Ha, gradient, sigma = self._run(cell, log, log_path)
        stress = 0.5 * (sigma + sigma.T) * HARTREE_PER_BOHR3_EV_PER_A3
        if not np.all(np.isfinite(stress)):
            raise LabelingFailed(
                f"PySCF returned a non-finite stress {stress.tolist()}; log: {log_path}"
            )
        forces = -gradient * units.Hartree / units.Bohr
        seconds = time.perf_counter() - start
        return labelled_copy(atoms, energy_Ha * units.Hartree, forces, stress, seconds, "pyscf_pbc")

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        if self.num_threads is None:
            yield
            return
        from pyscf import lib

        previous = lib.num_threads()
        lib.num_threads(self.num_threads)
        try:
            yield
        finally:
            lib.num_threads(previous)

    def _build_cell(self, atoms: Atoms, log: Any) -> Any:
        gto, _ = _import_pbc()
        cell = gto.Cell()
        cell.a = np.asarray(atoms.cell, dtype=float)
        cell.atom = [
            (s, tuple(p))
            for s, p in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)
        ]
        cell.unit = "Angstrom"
        cell.basis = self.basis
        cell.pseudo = self.pseudo
        cell.charge = self.charge
        cell.precision = self.precision
        if self.mesh is not None:
            cell.mesh = list(self.mesh)
        elif self.ke_cutoff_Ha is not None:
            cell.ke_cutoff = self.ke_cutoff_Ha
        cell.verbose = self.verbose
        cell.stdout = log
        cell.build()
        return cell

    def _run(self, cell: Any, log: Any, log_path: Path) -> tuple[float, np.ndarray, np.ndarray]:
        _, dft = _import_pbc()
        mf = dft.KRKS(cell, kpts=cell.make_kpts(list(self.kpts)))
        mf.xc = self.xc
        mf.max_cycle = self.max_cycle
        mf.conv_tol = self.conv_tol
        mf.level_shift = self.level_shift
        mf.damp = self.damp
        energy = mf.kernel()
        if not mf.converged:
            log.flush()
            raise SCFNotConverged(
                f"PySCF periodic SCF ({self.xc}/{self.basis}, kpts {list(self.kpts)}) did not "
                f"converge in {self.max_cycle} cycles; log: {log_path}. Increase max_cycle, "
                "set level_shift (0.1-0.3 Hartree) or damp, or check the structure (a metal "
                "needs smearing, which this labeller does not do).",
                output=log_path.read_text(encoding="utf-8", errors="replace"),
            )
        grad = mf.nuc_grad_method()
        gradient = np.asarray(grad.kernel(), dtype=float)  # Hartree/Bohr, (n_atoms, 3)
        sigma = np.asarray(grad.get_stress(), dtype=float)  # Hartree/Bohr^3, (3, 3)
        return float(energy), gradient, sigma


KIND = LabelerKind(
    name="pyscf_pbc", labeler=PySCFPeriodicLabeler,
    summary="PySCF periodic DFT (pip extra 'dft'): crystals, energy, forces and stress (LDA/GGA, GTH), in process",
)  # fmt: skip
