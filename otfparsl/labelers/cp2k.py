"""Reference labels of crystals from CP2K (Quickstep, Gaussian and plane waves): E, F and stress.

CP2K runs through ASE's :class:`ase.calculators.cp2k.CP2K`, which drives CP2K's shell mode
(``cp2k.psmp -s``) over a pipe; this module writes the input ASE cannot (a basis and a
pseudopotential per element, DFT+U, initial spin moments, smearing, k-points) and checks what a
label needs before anything runs. CP2K installs from Debian's packages (``apt-get install
cp2k``: the program and its basis/potential files in ``/usr/share/cp2k``) and from every HPC
centre's modules, so it labels what PySCF's periodic code cannot here: spin-polarised cells,
DFT+U, charged cells, elements without a PySCF GTH basis (La).

Measured on the 2-core development machine (2026-12-02, two OpenMP threads, PBE, GTH-PBE,
DZVP-MOLOPT, 300 Ry, Gamma only, orbital transformation) in the run of
``workflows/cazrs3_proton/run_small.yaml`` (``pytest -m long tests/integration/test_small_systems.py``;
each label's time is in ``events.jsonl``): CaZrS3 with one proton (21 atoms, charge +1) 132 s for
the first label from the atomic guess, 47-66 s from the previous label's wavefunction.
Spin-polarised PBE+U of the 20-atom LaMnO3 cell (``workflows/lamno3/run_small.yaml``): 836 s
for the first label.

The SCF starts from the newest wavefunction a finished label of the same atoms left in a sibling
working directory (``scf_guess: previous``, the default; CP2K's ``SCF_GUESS RESTART``), else from
CP2K's atomic guess. Both converge to the same ground state within ``eps_scf``; a label then
depends on which labels ran before it only within that tolerance
(``tests/unit/labelers/test_labelers_cp2k.py`` measures the difference). ``scf_guess: atomic``
makes every label independent of the others.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

from otfparsl import jsonable
from otfparsl.errors import ConfigurationError, LabelingFailed, SCFNotConverged
from otfparsl.labelers.base import (
    LabelerKind,
    is_periodic,
    labelled_copy,
    prepare_workdir,
    three_positive_ints,
)

logger = logging.getLogger(__name__)

#: Project name of every call: CP2K writes ``cp2k.inp``, ``cp2k.out``, ``cp2k-RESTART.wfn``.
PROJECT = "cp2k"
#: What a finished label leaves for the next one's SCF guess: the atoms it was for.
GUESS_RECORD = "cp2k-guess.json"
#: Where Debian's ``cp2k-data`` puts the basis and potential files (used when CP2K_DATA_DIR is unset).
DEBIAN_DATA_DIR = "/usr/share/cp2k"
#: The basis for elements without an entry in ``basis`` (CP2K's MOLOPT family, short range).
DEFAULT_BASIS = "DZVP-MOLOPT-SR-GTH"
_GUESSES = ("previous", "atomic")
#: Density mixing of the diagonalisation path: CP2K method and its history keyword.
_MIXING = {"broyden": ("BROYDEN_MIXING", "NBROYDEN"), "pulay": ("PULAY_MIXING", "NPULAY")}


@dataclass(frozen=True)
class CP2KLabeler:
    """Label crystals with CP2K Quickstep (GPW): energy, forces and analytic stress.

    Parameters
    ----------
    xc
        Exchange-correlation functional as a CP2K XC_FUNCTIONAL section name (``"PBE"``,
        ``"PADE"``, ``"BLYP"``).
    basis
        Basis set per element, e.g. ``{"Mn": "DZVP-MOLOPT-PBE-GTH-q15"}``; elements without
        an entry get ``DZVP-MOLOPT-SR-GTH``.
    pseudo
        Pseudopotential per element, e.g. ``{"Mn": "GTH-PBE-q15"}``; elements without an entry
        get ``GTH-<xc>``, which CP2K resolves to the element's default valence.
    basis_files, potential_file
        CP2K data files that hold them (names in CP2K's data directory, or paths).
    cutoff_Ry, rel_cutoff_Ry
        Plane-wave cutoff of the finest grid and the relative cutoff (Rydberg).
    eps_default
        Quickstep's screening threshold (``&QS EPS_DEFAULT``), or None for CP2K's 1e-10. It
        sets how far each Gaussian product is collocated on the grids, where a GPW step spends
        its time; 1e-8 is cheaper at a measured cost in force accuracy (workflows/lamno3).
    kpts
        Monkhorst-Pack mesh (three integers), or None for the Gamma point only.
    charge
        Total charge of the cell (elementary charges; CP2K adds a neutralising background).
    uks, multiplicity
        Spin-polarised (unrestricted) Kohn-Sham, and 2S + 1 (None: CP2K's lowest).
    magnetization
        Initial spin moment per element for the atomic guess (Bohr magnetons), e.g.
        ``{"Mn": 4}`` for a ferromagnetic start.
    plus_u
        DFT+U (Dudarev, U - J) per element: ``{"Mn": {"l": 2, "u_eV": 3.9}}``, with CP2K's
        Mulliken projection (``PLUS_U_METHOD MULLIKEN``, the one with forces and stress); Gamma
        point only (CP2K 2023 has no DFT+U with k-points).
    smearing_K
        Fermi-Dirac electronic temperature (K), for metals, or None. The SCF uses the orbital
        transformation (OT, fast, for insulators) at the Gamma point without smearing, else
        diagonalisation with Broyden mixing (CP2K has no OT with k-points or smearing).
    added_mos
        Empty orbitals per spin with smearing.
    mixing, mixing_alpha, mixing_vectors
        Density mixing of the diagonalisation path: ``"broyden"`` or ``"pulay"``, the fraction
        of the new density mixed in per step, and the history length. Broyden with alpha 0.2
        (the default) diverged on the spin-polarised +U LaMnO3 cell (workflows/lamno3/README.md);
        a smaller alpha is the usual remedy.
    eps_scf, max_scf, max_outer_scf
        SCF convergence (Hartree) and the inner/outer iteration limits.
    scf_guess
        ``"previous"``: start from the newest wavefunction of a finished label of the same
        atoms in a sibling working directory (module notes); ``"atomic"``: CP2K's atomic guess.
    command
        The CP2K shell command (``"srun cp2k.psmp -s"`` on a cluster); None:
        ``$ASE_CP2K_COMMAND`` or ``cp2k.psmp -s`` with ``num_threads`` OpenMP threads.
    num_threads
        OpenMP threads of the default command.
    data_dir
        CP2K's data directory; None: ``$CP2K_DATA_DIR``, else Debian's ``/usr/share/cp2k``.
    extra_input
        CP2K input text merged into the generated input (ASE's ``inp``), for anything else.
    """

    xc: str = "PBE"
    basis: Mapping[str, str] = field(default_factory=dict)
    pseudo: Mapping[str, str] = field(default_factory=dict)
    basis_files: tuple[str, ...] = ("BASIS_MOLOPT", "BASIS_MOLOPT_UZH", "BASIS_MOLOPT_UCL")
    potential_file: str = "GTH_POTENTIALS"
    cutoff_Ry: float = 400.0
    rel_cutoff_Ry: float = 50.0
    eps_default: float | None = None
    kpts: tuple[int, int, int] | None = None
    charge: int = 0
    uks: bool = False
    multiplicity: int | None = None
    magnetization: Mapping[str, float] = field(default_factory=dict)
    plus_u: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    smearing_K: float | None = None
    added_mos: int = 20
    mixing: str = "broyden"
    mixing_alpha: float = 0.2
    mixing_vectors: int = 8
    eps_scf: float = 1e-6
    max_scf: int = 50
    max_outer_scf: int = 10
    scf_guess: str = "previous"
    command: str | None = None
    num_threads: int = 1
    data_dir: str | None = None
    extra_input: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "basis_files", tuple(self.basis_files))
        if self.kpts is not None:
            object.__setattr__(self, "kpts", three_positive_ints("kpts", self.kpts, "or null (Gamma only)"))
        if not (self.cutoff_Ry > 0 and self.rel_cutoff_Ry > 0):
            raise ConfigurationError(
                f"cutoff_Ry and rel_cutoff_Ry must be > 0 Rydberg; got {self.cutoff_Ry}, "
                f"{self.rel_cutoff_Ry} (typical: 400 and 50)"
            )
        if self.scf_guess not in _GUESSES:
            raise ConfigurationError(f"scf_guess must be one of {_GUESSES}; got {self.scf_guess!r}")
        if self.multiplicity is not None and self.multiplicity < 1:
            raise ConfigurationError(f"multiplicity must be >= 1 (2S + 1); got {self.multiplicity}")
        if self.multiplicity not in (None, 1) and not self.uks:
            raise ConfigurationError(
                f"multiplicity {self.multiplicity} needs spin polarisation; set uks: true"
            )
        if self.magnetization and not self.uks:
            raise ConfigurationError("magnetization (initial spin moments) needs uks: true")
        if self.smearing_K is not None and not self.smearing_K > 0:
            raise ConfigurationError(
                f"smearing_K must be > 0 K or null (OT); got {self.smearing_K}"
            )
        if min(self.max_scf, self.max_outer_scf, self.num_threads, self.added_mos, self.mixing_vectors) < 1:
            raise ConfigurationError(
                "max_scf, max_outer_scf, num_threads, added_mos and mixing_vectors must be >= 1"
            )
        if self.mixing not in _MIXING:
            raise ConfigurationError(f"mixing must be one of {sorted(_MIXING)}; got {self.mixing!r}")
        if not 0 < self.mixing_alpha <= 1:
            raise ConfigurationError(
                f"mixing_alpha must be in (0, 1]; got {self.mixing_alpha} (0.05-0.2 is usual)"
            )
        if not self.eps_scf > 0:
            raise ConfigurationError(f"eps_scf must be > 0 Hartree; got {self.eps_scf}")
        if self.eps_default is not None and not 0 < self.eps_default < 1e-4:
            raise ConfigurationError(
                f"eps_default must be in (0, 1e-4) or null (CP2K's 1e-10); got {self.eps_default}"
            )
        if self.plus_u and self.kpts is not None:
            raise ConfigurationError(
                "CP2K 2023 has no DFT+U with k-points (\"Method not implemented for k-points\"); "
                "use kpts: null (Gamma only) on a supercell large enough for it, or drop plus_u"
            )
        for element, u in self.plus_u.items():
            if set(u) != {"l", "u_eV"}:
                raise ConfigurationError(
                    f"plus_u of {element} must give l and u_eV, e.g. {{l: 2, u_eV: 3.9}}; got {dict(u)}"
                )

    # ------------------------------------------------------------------ checks
    def check_structure(self, atoms: Atoms) -> None:
        """Raise ConfigurationError unless ``atoms`` is a 3D-periodic cell with a volume."""
        if not is_periodic(atoms):
            raise ConfigurationError(
                f"the 'cp2k' labeller needs a cell periodic in all three directions; the structure "
                f"has pbc={atoms.pbc.tolist()} ({atoms.get_chemical_formula()}). Use labeler.kind "
                "'pyscf' for a molecule, or give a crystal with pbc=\"T T T\""
            )
        if abs(float(np.linalg.det(np.asarray(atoms.cell)))) < 1e-6:
            raise ConfigurationError(
                f"the cell of {atoms.get_chemical_formula()} has zero volume; give three "
                "independent cell vectors"
            )
        unknown = sorted(
            (set(self.plus_u) | set(self.magnetization)) - set(atoms.get_chemical_symbols())
        )
        if unknown:
            raise ConfigurationError(
                f"plus_u/magnetization name element(s) {unknown} that are not in "
                f"{atoms.get_chemical_formula()}; remove them or fix the element symbols"
            )

    def check_environment(self, symbols: Iterable[str]) -> None:
        """Raise unless the CP2K program runs here and every element has a basis and a potential.

        Raises
        ------
        ConfigurationError
            No CP2K program on PATH, a data file is missing, or an element has no entry of its basis or potential there.
        """
        self.resolve_command()
        folder = self.resolve_data_dir()
        basis_text = "\n".join(
            self._data_file(folder, name).read_text(errors="replace") for name in self.basis_files
        )
        potential_text = self._data_file(folder, self.potential_file).read_text(errors="replace")
        for symbol in sorted(set(symbols)):
            for what, name, text, files in (
                ("basis", self._basis(symbol), basis_text, ", ".join(self.basis_files)),
                ("pseudopotential", self._pseudo(symbol), potential_text, self.potential_file),
            ):
                if not _has_entry(text, symbol, name):
                    raise ConfigurationError(
                        f"CP2K has no {what} {name!r} for {symbol} in {files} ({folder}). Choose "
                        f"one that exists (grep '^{symbol} ' in those files), e.g. "
                        f"basis: {{{symbol}: DZVP-MOLOPT-SR-GTH}}, pseudo: {{{symbol}: GTH-PBE}}"
                    )

    def resolve_command(self) -> str:
        """Return the CP2K shell command, checking that its program is on PATH."""
        command = self.command or os.environ.get("ASE_CP2K_COMMAND") or "cp2k.psmp -s"
        words = shlex.split(command)
        program = next((w for w in words if "=" not in w and w != "env"), "")
        if shutil.which(program) is None:
            raise ConfigurationError(
                f"the CP2K command {command!r} cannot run: program {program!r} is not on PATH. "
                "Install CP2K (Debian/Ubuntu: apt-get install cp2k; a cluster: module load cp2k) "
                "or set labeler.options.command (or ASE_CP2K_COMMAND) on the dft workers"
            )
        return command

    def resolve_data_dir(self) -> Path:
        """Return CP2K's data directory (basis and potential files), checking that it exists."""
        folder = Path(self.data_dir or os.environ.get("CP2K_DATA_DIR") or DEBIAN_DATA_DIR)
        if not folder.is_dir():
            raise ConfigurationError(
                f"CP2K data directory {str(folder)!r} does not exist; set CP2K_DATA_DIR (or "
                "labeler.options.data_dir) to the folder holding BASIS_MOLOPT and GTH_POTENTIALS"
            )
        return folder.absolute()

    @staticmethod
    def _data_file(folder: Path, name: str) -> Path:
        path = Path(name) if Path(name).is_absolute() else folder / name
        if not path.is_file():
            raise ConfigurationError(f"CP2K data file {str(path)!r} does not exist")
        return path

    def _basis(self, symbol: str) -> str:
        return self.basis.get(symbol, DEFAULT_BASIS)

    def _pseudo(self, symbol: str) -> str:
        return self.pseudo.get(symbol, f"GTH-{self.xc.upper()}")

    # ------------------------------------------------------------------ input
    @property
    def uses_ot(self) -> bool:
        """Whether the SCF uses the orbital transformation (Gamma only, no smearing)."""
        return self.smearing_K is None and self.kpts is None

    def input_template(self, symbols: Iterable[str], guess: str | None) -> str:
        """Return the CP2K input this labeller adds to ASE's (sections ASE does not write)."""
        dft = [f"BASIS_SET_FILE_NAME {name}" for name in self.basis_files]
        dft.append(f"POTENTIAL_FILE_NAME {self.potential_file}")
        if self.plus_u:
            dft.append("PLUS_U_METHOD MULLIKEN")
        dft += ["&MGRID", f"  REL_CUTOFF [Ry] {self.rel_cutoff_Ry}", "&END MGRID"]
        if self.eps_default is not None:
            dft += ["&QS", f"  EPS_DEFAULT {self.eps_default:.3E}", "&END QS"]
        if self.kpts is not None:
            dft += [
                "&KPOINTS",
                "  SCHEME MONKHORST-PACK " + " ".join(map(str, self.kpts)),
                "&END KPOINTS",
            ]
        scf = [f"EPS_SCF {self.eps_scf:.3E}", f"SCF_GUESS {'RESTART' if guess else 'ATOMIC'}"]
        if self.uses_ot:
            scf += ["&OT", "  MINIMIZER DIIS", "  PRECONDITIONER FULL_SINGLE_INVERSE", "&END OT"]
            scf += [
                "&OUTER_SCF",
                f"  MAX_SCF {self.max_outer_scf}",
                f"  EPS_SCF {self.eps_scf:.3E}",
                "&END OUTER_SCF",
            ]
        else:  # CP2K has no OT with k-points or smearing: diagonalisation with density mixing
            scf += ["&DIAGONALIZATION ON", "  ALGORITHM STANDARD", "&END DIAGONALIZATION"]
            method, history = _MIXING[self.mixing]
            scf += [
                "&MIXING",
                f"  METHOD {method}",
                f"  ALPHA {self.mixing_alpha}",
                f"  {history} {self.mixing_vectors}",
                "&END MIXING",
            ]
        if self.smearing_K is not None:
            scf += [
                f"ADDED_MOS {self.added_mos}", "&SMEAR ON", "  METHOD FERMI_DIRAC",
                f"  ELECTRONIC_TEMPERATURE [K] {self.smearing_K}", "&END SMEAR",
            ]  # fmt: skip
        dft += ["&SCF", *("  " + line for line in scf), "&END SCF"]
        if guess:
            dft.insert(0, f"WFN_RESTART_FILE_NAME {guess}")
        kinds = []
        for symbol in sorted(set(symbols)):
            kinds += [
                f"&KIND {symbol}",
                f"  BASIS_SET {self._basis(symbol)}",
                f"  POTENTIAL {self._pseudo(symbol)}",
            ]
            if symbol in self.magnetization:
                kinds.append(f"  MAGNETIZATION {self.magnetization[symbol]}")
            if symbol in self.plus_u:
                u = self.plus_u[symbol]
                kinds += [
                    "  &DFT_PLUS_U",
                    f"    L {int(u['l'])}",
                    f"    U_MINUS_J [eV] {float(u['u_eV'])}",
                    "  &END DFT_PLUS_U",
                ]
            kinds.append("&END KIND")
        lines = [
            "&FORCE_EVAL",
            "&DFT",
            *dft,
            "&END DFT",
            "&SUBSYS",
            *kinds,
            "&END SUBSYS",
            "&END FORCE_EVAL",
        ]
        return "\n".join(lines) + "\n" + self.extra_input

    def _guess_file(self, atoms: Atoms, workdir: Path) -> str | None:
        """Copy the newest matching wavefunction of a sibling label into ``workdir``; its name."""
        if self.scf_guess != "previous" or not workdir.parent.is_dir():
            return None
        wanted = jsonable.loads(self._guess_record(atoms))
        found = []
        for record in workdir.parent.glob(f"*/{GUESS_RECORD}"):
            wfn = record.with_name(self._restart_name())
            if record.parent == workdir or not wfn.is_file():
                continue
            try:
                if jsonable.loads(record.read_text()) == wanted:
                    found.append((record.stat().st_mtime_ns, record.parent.name, wfn))
            except (OSError, ValueError):
                continue
        if not found:
            return None
        source = max(found)[2]
        shutil.copyfile(source, workdir / "guess.wfn")
        logger.debug("cp2k SCF guess from %s", source)
        return "guess.wfn"

    def _restart_name(self) -> str:
        return f"{PROJECT}-RESTART.{'kp' if self.kpts else 'wfn'}"

    def _guess_record(self, atoms: Atoms) -> str:
        """What a wavefunction was computed for: the atoms and the options that shape it."""
        return jsonable.dumps(
            {"symbols": atoms.get_chemical_symbols(), "options": self._guess_key()}
        )

    def _guess_key(self) -> dict[str, Any]:
        return {
            "basis": dict(sorted(self.basis.items())), "pseudo": dict(sorted(self.pseudo.items())),
            "charge": self.charge, "uks": self.uks, "multiplicity": self.multiplicity,
            "kpts": self.kpts, "smearing_K": self.smearing_K, "added_mos": self.added_mos,
        }  # fmt: skip

    # ------------------------------------------------------------------ label
    def label(self, atoms: Atoms, workdir: Path) -> Atoms:
        """Return a copy of the crystal with energy (eV), forces (eV/Å) and stress (eV/Å^3).

        Raises
        ------
        ConfigurationError
            A non-periodic cell, no CP2K program, missing data files.
        SCFNotConverged
            When CP2K reports an SCF that did not converge (its output attached).
        LabelingFailed
            When CP2K stops with an error or returns non-finite results.
        """
        self.check_structure(atoms)
        command = self.resolve_command()
        folder = self.resolve_data_dir()
        path = prepare_workdir(workdir)
        guess = self._guess_file(atoms, path)
        threads = "" if self.command else f"OMP_NUM_THREADS={self.num_threads} "
        shell = f"cd {shlex.quote(str(path))} && exec env {threads}CP2K_DATA_DIR={shlex.quote(str(folder))} {command}"
        start = time.perf_counter()
        work = atoms.copy()
        out = path / f"{PROJECT}.out"
        calc = _calculator(
            command=shell, label=str(path / PROJECT), xc=self.xc.upper(), basis_set=None,
            basis_set_file=None, potential_file=None, pseudo_potential=None, charge=self.charge,
            uks=self.uks, multiplicity=self.multiplicity, cutoff=self.cutoff_Ry * units.Rydberg,
            max_scf=self.max_scf, inp=self.input_template(atoms.get_chemical_symbols(), guess),
            stress_tensor=True, print_level="LOW",
        )  # fmt: skip
        try:
            work.calc = calc
            energy = work.get_potential_energy()
            forces = work.get_forces()
            stress = work.get_stress(voigt=True)
        except Exception as exc:  # the shell dies with CP2K: EOF, assertion or broken pipe
            raise self._failure(out, exc) from exc
        finally:
            calc.close()
        self._check_converged(out)
        (path / GUESS_RECORD).write_text(self._guess_record(atoms))
        seconds = time.perf_counter() - start
        return labelled_copy(atoms, energy, forces, stress, seconds, "cp2k")

    def _failure(self, out: Path, exc: Exception) -> LabelingFailed:
        text = out.read_text(errors="replace") if out.is_file() else ""
        if "SCF run NOT converged" in text:
            return SCFNotConverged(self._scf_message(out), output=text)
        tail = "\n".join(text.splitlines()[-20:])
        return LabelingFailed(
            f"CP2K stopped in {out.parent} ({type(exc).__name__}: {exc}); end of {out.name}:\n{tail}",
            output=text,
        )

    def _check_converged(self, out: Path) -> None:
        text = out.read_text(errors="replace") if out.is_file() else ""
        if "SCF run NOT converged" in text:
            raise SCFNotConverged(self._scf_message(out), output=text)

    def _scf_message(self, out: Path) -> str:
        if self.uses_ot:
            limit = f"max_scf={self.max_scf} x max_outer_scf={self.max_outer_scf} OT steps"
            fix = "Raise max_scf, use smearing_K for a metal"
        else:
            limit = f"max_scf={self.max_scf} diagonalisation steps ({self.mixing} mixing, alpha {self.mixing_alpha})"
            fix = "Raise max_scf, lower mixing_alpha or try mixing: pulay"
        return (
            f"CP2K's SCF did not converge to eps_scf={self.eps_scf:g} within {limit} ({out}). "
            f"{fix}, or check the structure and spin state (multiplicity, magnetization)."
        )


def _has_entry(text: str, symbol: str, name: str) -> bool:
    """Whether a CP2K data file text has an entry ``<symbol> ... <name> ...`` (name or alias)."""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == symbol and name in words[1:]:
            return True
    return False


KIND = LabelerKind(
    name="cp2k", labeler=CP2KLabeler,
    summary="CP2K Quickstep through ASE (Debian's cp2k or a site module): crystals, energy, forces and stress; spin, DFT+U, charge, smearing",
)  # fmt: skip


def _calculator(**kwargs: Any) -> Any:
    """ASE's CP2K calculator, writing ``PROJECT cp2k`` instead of the label's absolute path.

    CP2K reads at most 80 characters of a keyword's value: a label folder deeper than that (a
    cluster's scratch, a long project path) made CP2K abort while parsing its input ("has more
    than 80 characters"). CP2K runs in the label's folder (the shell command changes into it),
    so the project's files (the wavefunction the next label starts from) land where they did.
    """
    from ase.calculators.cp2k import CP2K

    class _RelativeProject(CP2K):
        def _generate_input(self) -> str:
            return super()._generate_input().replace(f"PROJECT {self.label}", f"PROJECT {PROJECT}", 1)

    return _RelativeProject(**kwargs)
