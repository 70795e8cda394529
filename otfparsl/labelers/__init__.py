"""Reference (DFT) labelers: one structure in, a labelled copy out.

``make_labeler("pyscf", xc="b3lyp", basis="6-31g")``, ``make_labeler("vasp", incar={...},
kpts=(2, 2, 2))``, ``make_labeler("ase", name="gpaw", kwargs={...})``.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from otfparsl.errors import ConfigurationError
from otfparsl.labelers.ase_generic import ASECalculatorLabeler, resolve_calculator_class
from otfparsl.labelers.base import Labeler, labelled_copy, prepare_workdir
from otfparsl.labelers.pyscf import PySCFLabeler
from otfparsl.labelers.vasp import VaspLabeler

__all__ = [
    "ASECalculatorLabeler",
    "Labeler",
    "PySCFLabeler",
    "VaspLabeler",
    "labelled_copy",
    "make_labeler",
    "prepare_workdir",
    "resolve_calculator_class",
]

_KINDS: dict[str, type] = {
    "pyscf": PySCFLabeler,
    "vasp": VaspLabeler,
    "ase": ASECalculatorLabeler,
}


def make_labeler(kind: str, **options: Any) -> Labeler:
    """Return the labeler of the given kind built from its options.

    Parameters
    ----------
    kind
        ``"pyscf"``, ``"vasp"`` or ``"ase"``.
    **options
        Constructor arguments of :class:`PySCFLabeler`, :class:`VaspLabeler` or
        :class:`ASECalculatorLabeler`.
    """
    cls = _KINDS.get(kind.lower())
    if cls is None:
        raise ConfigurationError(
            f"unknown labeler kind {kind!r}; allowed: {sorted(_KINDS)}. Use 'ase' with "
            "name=... for other ASE calculators (gpaw, espresso, cp2k, emt)."
        )
    _check_option_names(kind, cls, options)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigurationError(f"invalid options for the {kind!r} labeler: {exc}") from exc


def _check_option_names(kind: str, cls: type, options: dict[str, Any]) -> None:
    allowed = sorted(f.name for f in dataclasses.fields(cls))
    for key in sorted(options):
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(
                f"unknown option {key!r} (= {options[key]!r}) of the {kind!r} labeler.{hint} "
                f"Allowed: {', '.join(allowed)}."
            )
