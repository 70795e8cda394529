"""Reference labels from VASP through :class:`ase.calculators.vasp.Vasp`.

VASP itself and its POTCAR files are licensed software provided by the user's site:

- the command comes from ``command`` or, in this order, the environment variables
  ``ASE_VASP_COMMAND``, ``VASP_COMMAND``, ``VASP_SCRIPT`` (e.g. ``srun vasp_std``);
- the pseudopotentials come from ``pp_path`` or ``VASP_PP_PATH``: a folder holding
  ``potpaw_PBE/<Element>/POTCAR`` (``pp="PBE"``), ``potpaw/`` (``pp="LDA"``) or any folder
  named by ``pp``.

Both are checked before anything runs, with a message that says what to set.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms

from otfparsl.errors import ConfigurationError, LabelingFailed, SCFNotConverged
from otfparsl.labelers.base import LabelerKind, is_periodic, labelled_copy, prepare_workdir

logger = logging.getLogger(__name__)

COMMAND_VARIABLES = ("ASE_VASP_COMMAND", "VASP_COMMAND", "VASP_SCRIPT")
_PP_ALIASES = {"pbe": "potpaw_PBE", "lda": "potpaw"}


@dataclass(frozen=True)
class VaspLabeler:
    """Label periodic structures with VASP (single point: energy, forces, stress).

    Parameters
    ----------
    incar
        INCAR settings as ASE Vasp keywords (case-insensitive), e.g.
        ``{"encut": 520, "ediff": 1e-6, "ismear": 0, "sigma": 0.05, "ldau": True, ...}``.
        ``nsw`` must be 0 or absent (a label is a single point).
    kpts
        Monkhorst-Pack mesh (3 integers) or ASE's k-point specification.
    gamma
        Gamma-centred mesh.
    xc
        Functional for ASE's INCAR defaults (``"PBE"``).
    pp
        Pseudopotential family: ``"PBE"``, ``"LDA"`` or a folder name under ``pp_path``.
    setups
        ASE ``setups`` (e.g. ``{"Mn": "_pv"}`` or ``"recommended"``), or None.
    command
        VASP command line; None reads the environment (module notes).
    pp_path
        Folder of the POTCAR families; None reads ``VASP_PP_PATH``.
    energy_key
        ``"free_energy"`` (TOTEN, consistent with the forces; default) or ``"energy"``
        (sigma -> 0 extrapolation).
    """

    incar: dict[str, Any] = field(default_factory=dict)
    kpts: Any = (1, 1, 1)
    gamma: bool = False
    xc: str = "PBE"
    pp: str = "PBE"
    setups: Any = None
    command: str | None = None
    pp_path: str | None = None
    energy_key: str = "free_energy"

    def __post_init__(self) -> None:
        if int(self._incar().get("nsw", 0) or 0) > 0:
            raise ConfigurationError(
                f"VASP labels are single points; got NSW={self._incar()['nsw']}. "
                "Remove nsw from the INCAR settings (or set it to 0)."
            )
        if self.energy_key not in ("free_energy", "energy"):
            raise ConfigurationError(
                f"energy_key must be 'free_energy' or 'energy'; got {self.energy_key!r}."
            )

    def _incar(self) -> dict[str, Any]:
        return {str(k).lower(): v for k, v in self.incar.items()}

    def resolve_command(self) -> str:
        """Return the VASP command, checking that its program can be found."""
        command = self.command
        if command is None:
            found = [v for v in COMMAND_VARIABLES if os.environ.get(v)]
            if not found:
                raise ConfigurationError(
                    "no VASP command: none of "
                    f"{', '.join(COMMAND_VARIABLES)} is set and no 'command' was given. "
                    "Set e.g. ASE_VASP_COMMAND='srun vasp_std' in the environment of the DFT "
                    "workers (site profile worker_init), or pass command='...' to the labeler."
                )
            command = os.environ[found[0]]
            if found[0] == "VASP_SCRIPT":
                return command
        words = shlex.split(command)
        program = words[0] if words else ""
        if not program or shutil.which(program) is None:
            raise ConfigurationError(
                f"the VASP command {command!r} cannot run: program {program!r} is not on PATH. "
                "Load the VASP module in the worker environment or give the full path."
            )
        return command

    def resolve_pp_folder(self) -> Path:
        """Return the absolute POTCAR family folder, checking that it exists."""
        root = self.pp_path or os.environ.get("VASP_PP_PATH")
        if not root:
            raise ConfigurationError(
                "no VASP pseudopotentials: VASP_PP_PATH is not set and no 'pp_path' was given. "
                "Set VASP_PP_PATH to the folder that contains potpaw_PBE/ (or potpaw/)."
            )
        folder = Path(root) / _PP_ALIASES.get(self.pp.lower(), self.pp)
        if not folder.is_dir():
            raise ConfigurationError(
                f"POTCAR folder {str(folder)!r} does not exist (pp={self.pp!r}, "
                f"VASP_PP_PATH/pp_path={root!r}). Expected <pp_path>/potpaw_PBE/<El>/POTCAR; "
                "fix pp_path or pp."
            )
        return folder.absolute()

    def make_calculator(self, workdir: Path, command: str | None = None) -> Any:
        """Return an ASE Vasp calculator writing into ``workdir``."""
        from ase.calculators.vasp import Vasp

        kwargs = dict(self._incar())
        if self.setups is not None:
            kwargs["setups"] = self.setups
        return Vasp(
            directory=str(workdir),
            command=command,
            xc=self.xc,
            pp=str(self.resolve_pp_folder()),
            kpts=self.kpts,
            gamma=self.gamma,
            txt="vasp.out",
            **kwargs,
        )

    def write_inputs(self, atoms: Atoms, workdir: Path) -> Any:
        """Write INCAR, KPOINTS, POSCAR and POTCAR into ``workdir``; return the calculator."""
        self.check_structure(atoms)
        path = prepare_workdir(workdir)
        calc = self.make_calculator(path)
        try:
            calc.write_input(atoms)
        except RuntimeError as exc:
            raise ConfigurationError(
                f"could not assemble the POTCAR: {exc}. Check pp, setups and pp_path "
                "(each element needs <pp_path>/<family>/<El><setup>/POTCAR)."
            ) from exc
        return calc

    def check_structure(self, atoms: Atoms) -> None:
        """Raise ConfigurationError unless ``atoms`` is fully periodic."""
        if not is_periodic(atoms):
            raise ConfigurationError(
                f"the 'vasp' labeller needs a periodic cell; the structure has pbc={atoms.pbc.tolist()} "
                f"({atoms.get_chemical_formula()}). Put the molecule in a box with pbc=True (e.g. an "
                "extxyz with a Lattice and pbc=\"T T T\"), or use labeler.kind 'pyscf'"
            )

    def check_environment(self, symbols: Iterable[str]) -> None:
        """Raise unless the VASP command is set and on PATH and every element has a POTCAR."""
        self.resolve_command()
        folder = self.resolve_pp_folder()
        from ase.calculators.vasp.create_input import get_pp_setup

        try:
            setups, _ = get_pp_setup(self.setups)
        except (KeyError, TypeError, AttributeError):
            raise ConfigurationError(
                f"VASP setups {self.setups!r} not understood; use None, 'minimal', "
                "'recommended', 'gw' or a dict such as {'Mn': '_pv'}"
            ) from None
        missing = []
        for symbol in sorted(set(symbols)):
            potcar = folder / f"{symbol}{setups.get(symbol, '')}" / "POTCAR"
            if not (potcar.is_file() or potcar.with_name("POTCAR.Z").is_file()):
                missing.append(str(potcar))
        if missing:
            raise ConfigurationError(
                f"no POTCAR for {len(missing)} element(s): {', '.join(missing)} does not exist. "
                "Check pp, setups and VASP_PP_PATH/pp_path (each element needs "
                "<pp_path>/<family>/<El><setup>/POTCAR)"
            )

    def label(self, atoms: Atoms, workdir: Path) -> Atoms:
        """Run VASP on ``atoms`` in ``workdir`` and return the labelled copy.

        Raises
        ------
        ConfigurationError
            Missing command or pseudopotentials, non-periodic input.
        SCFNotConverged
            When the electronic loop did not reach EDIFF within NELM.
        LabelingFailed
            When VASP exits with an error or its output cannot be read.
        """
        from ase.calculators.calculator import CalculatorError

        self.check_structure(atoms)
        command = self.resolve_command()
        path = prepare_workdir(workdir)
        start = time.perf_counter()
        calc = self.make_calculator(path, command=command)
        work = atoms.copy()
        work.calc = calc
        try:
            energy = work.get_potential_energy(force_consistent=self.energy_key == "free_energy")
            forces = work.get_forces()
            stress = work.get_stress(voigt=True)
        except CalculatorError as exc:
            raise LabelingFailed(f"VASP failed in {path}: {exc}", output=str(path)) from exc
        if not calc.read_convergence():
            raise SCFNotConverged(
                f"VASP electronic loop did not converge (EDIFF not reached within NELM) in "
                f"{path}. Increase NELM, change ALGO/mixing, or check the structure.",
                output=str(path / "OUTCAR"),
            )
        seconds = time.perf_counter() - start
        return labelled_copy(atoms, energy, forces, stress, seconds, "vasp")


KIND = LabelerKind(
    name="vasp", labeler=VaspLabeler,
    summary="VASP through ASE: periodic cells (energy, forces, stress); needs VASP and POTCARs on the dft nodes",
)  # fmt: skip
