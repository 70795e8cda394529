"""Reference labels from any ASE calculator, chosen by name or import path.

Examples: ``ASECalculatorLabeler("gpaw", {"mode": {"name": "pw", "ecut": 400}, "xc": "PBE"})``,
``ASECalculatorLabeler("espresso", {...})``, ``ASECalculatorLabeler("cp2k", {...})``, or
``ASECalculatorLabeler("mypackage.calc:MyCalculator", {...})``. ``"emt"`` and ``"lj"`` are fast
stand-ins for tests only (they are not DFT).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms

from otfparsl.errors import ConfigurationError, LabelingFailed, SCFNotConverged
from otfparsl.labelers.base import LabelerKind, is_periodic, labelled_copy, prepare_workdir

logger = logging.getLogger(__name__)


def resolve_calculator_class(name: str) -> type:
    """Return the ASE calculator class for ``name``.

    Parameters
    ----------
    name
        An ASE calculator name known to :func:`ase.calculators.calculator.get_calculator_class`
        (``"emt"``, ``"gpaw"``, ``"espresso"``, ``"cp2k"``...), or ``"module.path:ClassName"``.
    """
    from ase.calculators.calculator import get_calculator_class

    try:
        if ":" in name:
            module_name, _, class_name = name.partition(":")
            return getattr(importlib.import_module(module_name), class_name)
        return get_calculator_class(name.lower())
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"cannot load the ASE calculator {name!r}: {exc}. Use an ASE calculator name "
            "(e.g. 'gpaw', 'espresso', 'cp2k', 'emt') with its package installed, or an "
            "import path 'package.module:ClassName'."
        ) from exc


def _accepts_directory(cls: type) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return "directory" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


@dataclass(frozen=True)
class ASECalculatorLabeler:
    """Label structures with an ASE calculator built fresh for every call.

    Parameters
    ----------
    name
        Calculator name or ``"module:Class"`` (see :func:`resolve_calculator_class`).
    kwargs
        Keyword arguments of the calculator's constructor. ``directory`` is set per call to the
        working directory and must not be given here.
    pass_directory
        Pass ``directory=workdir`` to the constructor (True for ASE calculators; set False for
        calculators that take no ``directory`` argument: they then write where they like).
    stress
        Compute the stress for fully periodic cells (when the calculator implements it).
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    pass_directory: bool = True
    stress: bool = True

    def __post_init__(self) -> None:
        if "directory" in self.kwargs:
            raise ConfigurationError(
                "do not set 'directory' in the calculator kwargs; got "
                f"directory={self.kwargs['directory']!r}. Every labelling call runs in its own "
                "working directory, chosen by the caller."
            )

    def check_structure(self, atoms: Atoms) -> None:
        """Accept any structure: the calculator itself decides what it can compute."""

    def check_environment(self, symbols: Iterable[str]) -> None:
        """Raise unless the calculator class can be imported here."""
        resolve_calculator_class(self.name)

    def make_calculator(self, workdir: Path) -> Any:
        """Return a new calculator instance that works in ``workdir``."""
        cls = resolve_calculator_class(self.name)
        kwargs = dict(self.kwargs)
        if self.pass_directory and _accepts_directory(cls):
            kwargs["directory"] = str(workdir)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigurationError(
                f"invalid arguments for the ASE calculator {self.name!r}: {exc}. "
                f"Got kwargs {sorted(kwargs)}."
            ) from exc

    def label(self, atoms: Atoms, workdir: Path) -> Atoms:
        """Run the calculator on ``atoms`` in ``workdir`` and return the labelled copy."""
        from ase.calculators.calculator import CalculatorError, SCFError

        path = prepare_workdir(workdir)
        start = time.perf_counter()
        calc = self.make_calculator(path)
        work = atoms.copy()
        work.calc = calc
        want_stress = (
            self.stress and is_periodic(atoms) and "stress" in calc.implemented_properties
        )
        try:
            energy = work.get_potential_energy()
            forces = work.get_forces()
            stress = work.get_stress(voigt=True) if want_stress else None
        except SCFError as exc:
            raise SCFNotConverged(
                f"{self.name} SCF did not converge in {path}: {exc}", output=str(path)
            ) from exc
        except CalculatorError as exc:
            raise LabelingFailed(f"{self.name} failed in {path}: {exc}", output=str(path)) from exc
        seconds = time.perf_counter() - start
        return labelled_copy(atoms, energy, forces, stress, seconds, self.name)


KIND = LabelerKind(
    name="ase", labeler=ASECalculatorLabeler,
    summary="any ASE calculator by name (gpaw, espresso, cp2k, emt, 'module:Class') with its kwargs",
)  # fmt: skip
