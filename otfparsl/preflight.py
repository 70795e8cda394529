"""Checks of a run's inputs before anything is written (one clear error per problem).

``check_run(settings)`` reads the structure and checks it against the model, the temperature
programme and the labeller, so that a bad input stops the run before the run directory is
touched. Checks that depend on the DFT workers' environment (the DFT executable, the
pseudopotentials, the calculator's package) run on the `dft` role:
:func:`check_labeler_environment`.

Every check raises a :class:`~otfparsl.errors.OtfparslError` whose message names the setting
(``labeler.retries[1]``, ``md.segments[0]``), the value, what is allowed and how to fix it.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from otfparsl.errors import ConfigurationError, MissingDependencyError
from otfparsl.from_settings import model_spec
from otfparsl.labelers import (
    ASECalculatorLabeler,
    PySCFLabeler,
    VaspLabeler,
    make_labeler,
    resolve_calculator_class,
)
from otfparsl.models.base import ModelAdapter, ModelSpec
from otfparsl.settings import LabelerSettings, MDSettings, ModelSettings, RunSettings
from otfparsl.structures import check_structure, read_structure, to_atoms


def check_run(settings: RunSettings, structure: Atoms | None = None) -> Atoms:
    """Check every input of a run that can be checked here; return the starting structure.

    The checks run in this order: the structure (readable, atoms, periodicity, overlaps), the
    model (torch device, elements it knows), the temperature programme against the structure
    (NPT needs a fully periodic triangular cell), the labeller built from ``labeler.options``
    and from every retry override, and the labeller against the structure (PySCF: molecules
    with a consistent charge and spin; VASP: periodic cells). Nothing is written.

    Parameters
    ----------
    settings
        Validated run settings.
    structure
        The starting structure (ASE Atoms or pymatgen Structure/Molecule); default: read
        ``settings.structure``.

    Returns
    -------
    ase.Atoms
        A checked copy of the starting structure (positions in Å).

    Raises
    ------
    ConfigurationError, ModelError, MissingDependencyError
        With a message that says what is wrong and how to fix it.
    """
    atoms = (
        check_structure(to_atoms(structure))
        if structure is not None
        else read_structure(settings.structure)
    )
    check_model(settings.model, atoms)
    check_md(settings.md, atoms)
    check_labeler(settings.labeler, atoms)
    return atoms


# ----------------------------------------------------------------------------- model
def check_model(model: ModelSettings, atoms: Atoms) -> None:
    """Check the torch devices of the model settings and that the model knows every element."""
    _check_device("model.device", model.device, must_exist_here=True)
    if model.chain_device != "auto":
        _check_device("model.chain_device", model.chain_device, must_exist_here=False)
    _adapter(model_spec(model)).check_atoms(atoms)


@functools.lru_cache(maxsize=2)
def _adapter(spec: ModelSpec) -> ModelAdapter:
    from otfparsl.models import load_adapter

    return load_adapter(spec)


def _check_device(where: str, value: str, must_exist_here: bool) -> None:
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ConfigurationError(
            f"{where} = {value!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if not must_exist_here or device.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if (device.index or 0) >= count:
        raise ConfigurationError(
            f"{where} = {value!r} but this machine sees {count} CUDA GPU(s); set {where}: cpu "
            "(chain updates can still use a GPU through model.chain_device)"
        )


# ----------------------------------------------------------------------------- MD
def check_md(md: MDSettings, atoms: Atoms) -> None:
    """Check every segment of the temperature programme and that the structure suits it."""
    from otfparsl.md.dynamics import Segment, check_ensemble_structure

    for i, seg in enumerate(md.segments):
        where = f"md.segments[{i}] ({seg.ensemble})"
        try:
            Segment(**seg.model_dump())
            check_ensemble_structure(seg.ensemble, atoms)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None


# ----------------------------------------------------------------------------- labeller
def check_labeler(labeler: LabelerSettings, atoms: Atoms) -> None:
    """Build the labeller of the first try and of every retry override; check it suits ``atoms``."""
    for where, options in _attempts(labeler):
        try:
            built = make_labeler(labeler.kind, **options)
            check_labeler_structure(built, atoms)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None


def _attempts(labeler: LabelerSettings) -> list[tuple[str, dict[str, Any]]]:
    """(where, options) of the first try and of every distinct retry override."""
    out = [("labeler.options", labeler.attempt_options(0))]
    if isinstance(labeler.retries, list):
        out += [
            (f"labeler.retries[{k - 1}] (retry {k})", labeler.attempt_options(k))
            for k in range(1, labeler.n_retries + 1)
        ]
    return out


def check_labeler_structure(labeler: Any, atoms: Atoms) -> None:
    """Raise ConfigurationError when ``labeler`` cannot label ``atoms``.

    PySCF handles molecules only, and its charge and spin (2S) must fit the electron count;
    VASP needs a fully periodic cell.
    """
    periodic = bool(np.all(atoms.pbc))
    if isinstance(labeler, PySCFLabeler):
        if np.any(atoms.pbc):
            raise ConfigurationError(
                f"the 'pyscf' labeller handles molecules only; the structure has "
                f"pbc={atoms.pbc.tolist()} ({atoms.get_chemical_formula()}). Use labeler.kind "
                "'vasp' or 'ase' (GPAW, CP2K, Quantum ESPRESSO) for a periodic cell, or give a "
                "molecule without a cell"
            )
        _check_electrons(labeler, atoms)
    elif isinstance(labeler, VaspLabeler) and not periodic:
        raise ConfigurationError(
            f"the 'vasp' labeller needs a periodic cell; the structure has pbc={atoms.pbc.tolist()} "
            f"({atoms.get_chemical_formula()}). Put the molecule in a box with pbc=True (e.g. an "
            "extxyz with a Lattice and pbc=\"T T T\"), or use labeler.kind 'pyscf'"
        )


def _check_electrons(labeler: PySCFLabeler, atoms: Atoms) -> None:
    n_electrons = int(atoms.numbers.sum()) - labeler.charge
    if n_electrons < 1:
        raise ConfigurationError(
            f"charge={labeler.charge} leaves {n_electrons} electrons in "
            f"{atoms.get_chemical_formula()} (sum of Z = {int(atoms.numbers.sum())}); fix "
            "labeler.options.charge"
        )
    if labeler.spin > n_electrons or (n_electrons - labeler.spin) % 2:
        allowed = "0, 2, 4, ..." if n_electrons % 2 == 0 else "1, 3, 5, ..."
        raise ConfigurationError(
            f"spin (2S) = {labeler.spin} does not fit {n_electrons} electrons "
            f"({atoms.get_chemical_formula()}, charge={labeler.charge}); allowed: {allowed}; "
            "fix labeler.options.spin or labeler.options.charge"
        )


# ----------------------------------------------------------------------------- DFT environment
def check_labeler_environment(
    kind: str, options: Mapping[str, Any], symbols: Iterable[str]
) -> None:
    """Check what a labeller needs from the environment it runs in (run it on a `dft` worker).

    - ``pyscf``: the pyscf package is importable;
    - ``vasp``: the VASP command is set and its program is on PATH; the POTCAR family folder
      exists and holds ``<El><suffix>/POTCAR`` for every element of ``symbols``;
    - ``ase``: the calculator class can be imported.

    Parameters
    ----------
    kind, options
        As ``labeler.kind`` and the options of one attempt (``labeler.attempt_options(k)``).
    symbols
        Chemical symbols of the structure (repeats allowed).

    Raises
    ------
    ConfigurationError, MissingDependencyError
        With a message that says what to install or set.
    """
    labeler = make_labeler(kind, **dict(options))
    if isinstance(labeler, PySCFLabeler):
        if importlib.util.find_spec("pyscf") is None:
            raise MissingDependencyError("pyscf", "dft", "The PySCF labeler")
    elif isinstance(labeler, VaspLabeler):
        labeler.resolve_command()
        _check_potcars(labeler, labeler.resolve_pp_folder(), symbols)
    elif isinstance(labeler, ASECalculatorLabeler):
        resolve_calculator_class(labeler.name)


def _check_potcars(labeler: VaspLabeler, folder: Path, symbols: Iterable[str]) -> None:
    from ase.calculators.vasp.create_input import get_pp_setup

    try:
        setups, _ = get_pp_setup(labeler.setups)
    except (KeyError, TypeError, AttributeError):
        raise ConfigurationError(
            f"VASP setups {labeler.setups!r} not understood; use None, 'minimal', "
            "'recommended', 'gw' or a dict such as {'Mn': '_pv'}"
        ) from None
    missing = []
    for symbol in sorted(set(symbols)):
        suffix = setups.get(symbol, "")
        potcar = folder / f"{symbol}{suffix}" / "POTCAR"
        if not (potcar.is_file() or potcar.with_name("POTCAR.Z").is_file()):
            missing.append(str(potcar))
    if missing:
        raise ConfigurationError(
            f"no POTCAR for {len(missing)} element(s): {', '.join(missing)} does not exist. "
            "Check pp, setups and VASP_PP_PATH/pp_path (each element needs "
            "<pp_path>/<family>/<El><setup>/POTCAR)"
        )


def check_labeler_environments(labeler: LabelerSettings, symbols: Iterable[str]) -> None:
    """Run :func:`check_labeler_environment` here for the first try and every retry override."""
    symbols = list(symbols)
    for where, options in _attempts(labeler):
        try:
            check_labeler_environment(labeler.kind, options, symbols)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
