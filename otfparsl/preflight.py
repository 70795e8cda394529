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

import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ase import Atoms

from otfparsl.errors import ConfigurationError, OtfparslError
from otfparsl.from_settings import (
    make_calibrator,
    model_spec,
    sampler_config,
    segment_from_settings,
)
from otfparsl.labelers import make_labeler
from otfparsl.models import cached_adapter
from otfparsl.settings import LabelerSettings, MDSettings, ModelSettings, RunSettings
from otfparsl.structures import check_structure, read_structure, to_atoms


def check_run(settings: RunSettings, structure: Atoms | None = None) -> Atoms:
    """Check every input of a run that can be checked here; return the starting structure.

    The checks run in this order: the structure (readable, one frame or a named one,
    atoms, periodicity, overlaps), the model (torch device, elements it knows), the SGHMC
    sampler configuration and the calibrator built as the run builds them (with the family's
    defaults), the temperature programme against the structure (NPT needs a fully periodic
    triangular cell), the labeller built from ``labeler.options`` and from every retry
    override, and the labeller's own ``check_structure`` (PySCF: molecules with a consistent
    charge and spin, a basis for every element; VASP: periodic cells). Nothing is written;
    the run directory is checked apart (:func:`check_run_dir_writable`).

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
    check_sampler_and_calibrator(settings)
    check_md(settings.md, atoms)
    if any(seg.ensemble == "npt" for seg in settings.md.segments):
        adapter = cached_adapter(model_spec(settings.model))
        if not getattr(adapter, "supports_stress", True):  # NPT needs the model's stress
            adapter.require_stress()
    check_labeler(settings.labeler, atoms)
    return atoms


# ----------------------------------------------------------------------------- model
def check_model(model: ModelSettings, atoms: Atoms) -> None:
    """Check the torch devices of the model settings and that the model knows every element."""
    _check_device("model.device", model.device, must_exist_here=True)
    if model.chain_device != "auto":
        _check_device("model.chain_device", model.chain_device, must_exist_here=False)
    cached_adapter(model_spec(model)).check_atoms(atoms)


def check_sampler_and_calibrator(settings: RunSettings) -> None:
    """Build the sampler configuration and the calibrator as the run will (family defaults filled).

    Raises
    ------
    ConfigurationError
        Naming the section (``bayes``, ``calibration``) of whatever they refuse; an error that
        is not an otfparsl error becomes a ConfigurationError too.
    """
    defaults = cached_adapter(model_spec(settings.model)).defaults
    builds: list[tuple[str, Callable[[], object]]] = [
        ("bayes", lambda: sampler_config(settings.bayes, defaults)),
        ("calibration", lambda: make_calibrator(settings, defaults)),
    ]
    for where, build in builds:
        try:
            build()
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        except OtfparslError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other refusal is a bad setting too
            raise ConfigurationError(
                f"{where}: the settings (with the {settings.model.family} family's defaults) were "
                f"refused: {type(exc).__name__}: {exc}; fix the {where} section of the run YAML"
            ) from None


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
    from otfparsl.md.dynamics import check_ensemble_structure

    for i, seg in enumerate(md.segments):
        where = f"md.segments[{i}] ({seg.ensemble})"
        try:
            segment_from_settings(seg)
            check_ensemble_structure(seg.ensemble, atoms)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None


# ----------------------------------------------------------------------------- labeller
def check_labeler(labeler: LabelerSettings, atoms: Atoms) -> None:
    """Build the labeller of the first try and of every retry override; check it suits ``atoms``."""
    for where, options in _attempts(labeler):
        try:
            built = make_labeler(labeler.kind, **options)
            built.check_structure(atoms)
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


# ----------------------------------------------------------------------------- DFT environment
def check_labeler_environment(
    kind: str, options: Mapping[str, Any], symbols: Iterable[str]
) -> None:
    """Check what a labeller needs from the environment it runs in (run it on a `dft` worker).

    Each labeller checks itself (``check_environment``): PySCF that pyscf imports; VASP that its
    command is set and on PATH and that every element of ``symbols`` has a POTCAR; ``ase`` that
    the calculator class imports.

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
    make_labeler(kind, **dict(options)).check_environment(list(symbols))


def check_labeler_environments(labeler: LabelerSettings, symbols: Iterable[str]) -> None:
    """Run :func:`check_labeler_environment` here for the first try and every retry override."""
    symbols = list(symbols)
    for where, options in _attempts(labeler):
        try:
            check_labeler_environment(labeler.kind, options, symbols)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None


# ----------------------------------------------------------------------------- run directory
#: Free space (MB) the file system of a run directory must have before a run starts.
MIN_FREE_MB = 10.0


def check_run_dir_writable(path: str | os.PathLike, min_free_mb: float = MIN_FREE_MB) -> None:
    """Check that the run directory (or its nearest existing parent) can be written.

    Nothing is created. The run directory, or the nearest of its parents that exists, must be a
    directory this process may write into, on a file system with at least ``min_free_mb`` MB
    free.

    Raises
    ------
    ConfigurationError
        With the folder, what is wrong and how to fix it.
    """
    target = Path(path).absolute()
    existing = next((p for p in (target, *target.parents) if p.exists()), Path(target.anchor))
    what = "the run directory" if existing == target else "its nearest existing parent"
    if not existing.is_dir():
        raise ConfigurationError(
            f"run directory {str(target)!r} cannot be created: {what}, {str(existing)!r}, is a "
            "file, not a folder; choose another run_dir (or --run-dir)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"run directory {str(target)!r} cannot be written: {what}, {str(existing)!r}, is not "
            "writable by this user; choose another run_dir (or --run-dir) or fix its permissions"
        )
    free_mb = shutil.disk_usage(existing).free / 1e6
    if free_mb < min_free_mb:
        raise ConfigurationError(
            f"run directory {str(target)!r}: its file system has {free_mb:.1f} MB free, a run "
            f"needs at least {min_free_mb:g} MB (trajectory, chain files, DFT outputs); free "
            "some space or choose another run_dir (or --run-dir)"
        )
