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

from collections.abc import Iterable, Mapping
from typing import Any

from ase import Atoms

from otfparsl.errors import ConfigurationError
from otfparsl.from_settings import model_spec, segment_from_settings
from otfparsl.labelers import make_labeler
from otfparsl.models import cached_adapter
from otfparsl.settings import LabelerSettings, MDSettings, ModelSettings, RunSettings
from otfparsl.structures import check_structure, read_structure, to_atoms


def check_run(settings: RunSettings, structure: Atoms | None = None) -> Atoms:
    """Check every input of a run that can be checked here; return the starting structure.

    The checks run in this order: the structure (readable, atoms, periodicity, overlaps), the
    model (torch device, elements it knows), the temperature programme against the structure
    (NPT needs a fully periodic triangular cell), the labeller built from ``labeler.options``
    and from every retry override, and the labeller's own ``check_structure`` (PySCF:
    molecules with a consistent charge and spin; VASP: periodic cells). Nothing is written.

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
