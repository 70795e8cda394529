"""Reference (DFT) labelers: one structure in, a labelled copy out.

A DFT code is one module of this package that declares ``KIND = LabelerKind(...)`` (its name,
labeller class and a summary); the labeller class holds its options as dataclass fields and its
own checks (``check_structure``, ``check_environment``). Nothing else lists the codes:
``kinds()`` collects the declarations, ``make_labeler("pyscf", xc="b3lyp", basis="6-31g")``
builds one and rejects unknown options with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import pkgutil
from typing import Any

from otfparsl.errors import ConfigurationError
from otfparsl.labelers.base import Labeler, LabelerKind, labelled_copy, prepare_workdir

__all__ = [
    "Labeler",
    "LabelerKind",
    "kinds",
    "labelled_copy",
    "make_labeler",
    "prepare_workdir",
]

_NOT_KINDS = frozenset({"base"})


@functools.lru_cache(maxsize=1)
def kinds() -> dict[str, LabelerKind]:
    """Return every labeller kind declared in this package, by name."""
    found: dict[str, LabelerKind] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_KINDS or info.name.startswith("_"):
            continue
        kind = getattr(importlib.import_module(f"{__name__}.{info.name}"), "KIND", None)
        if isinstance(kind, LabelerKind):
            found[kind.name] = kind
    return dict(sorted(found.items()))


def make_labeler(kind: str, **options: Any) -> Labeler:
    """Return the labeler of the given kind built from its options.

    Parameters
    ----------
    kind
        A name of :func:`kinds` (``"pyscf"``, ``"pyscf_pbc"``, ``"cp2k"``, ``"vasp"``, ``"ase"``).
    **options
        Fields of that kind's labeller class.
    """
    declared = kinds().get(kind.lower())
    if declared is None:
        raise ConfigurationError(
            f"unknown labeler kind {kind!r}; allowed: {sorted(kinds())}. Use 'ase' with "
            "name=... for other ASE calculators (gpaw, espresso, emt)."
        )
    _check_option_names(kind, declared.labeler, options)
    try:
        return declared.labeler(**options)
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
