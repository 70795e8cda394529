"""Foundation-model adapters behind one :class:`~otfparsl.models.base.ModelAdapter` protocol.

A model family is one module of this package that declares ``FAMILY = ModelFamily(...)`` (its
name, adapter class, package, pip extra, published defaults and sources); nothing else lists
the families. ``families()`` collects the declarations, ``load_adapter(spec)`` builds the
adapter of a :class:`~otfparsl.models.base.ModelSpec`, ``family_defaults(family)`` gives the
published method settings. Optional dependencies (mace-torch, chgnet, ...) are imported only
when an adapter is built.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import pkgutil
import threading

from otfparsl.errors import ConfigurationError, MissingDependencyError
from otfparsl.models.base import (
    FamilyDefaults,
    ModelAdapter,
    ModelFamily,
    ModelSpec,
    PreparedStructure,
    attach_labels,
    collate_labels,
    structure_index,
)

__all__ = [
    "FamilyDefaults",
    "ModelAdapter",
    "ModelFamily",
    "ModelSpec",
    "PreparedStructure",
    "attach_labels",
    "collate_labels",
    "copy_core",
    "families",
    "family_defaults",
    "get_family",
    "load_adapter",
    "structure_index",
]

_NOT_FAMILIES = frozenset({"base"})


@functools.lru_cache(maxsize=1)
def families() -> dict[str, ModelFamily]:
    """Return every model family declared in this package, by name."""
    found: dict[str, ModelFamily] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_FAMILIES or info.name.startswith("_"):
            continue
        family = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
        if isinstance(family, ModelFamily):
            found[family.name] = family
    return dict(sorted(found.items()))


def get_family(name: str) -> ModelFamily:
    """Return the declaration of model family ``name``.

    Raises
    ------
    ConfigurationError
        For an unknown family; the message lists the allowed ones.
    """
    known = families()
    if name not in known:
        raise ConfigurationError(
            f"unknown model family {name!r}; allowed: {sorted(known)}. Set model.family to one of them."
        )
    return known[name]


def family_defaults(family: str) -> FamilyDefaults:
    """Return the published method settings of a model family.

    Returns
    -------
    FamilyDefaults
        sigma_TL, gamma_0, sigma-head hidden sizes, calibration Gamma prior (a, b).
    """
    return get_family(family).defaults


def load_adapter(spec: ModelSpec) -> ModelAdapter:
    """Build the adapter of a model spec (loads or builds the weights).

    Raises
    ------
    ConfigurationError
        For an unknown family (the message lists the allowed ones).
    MissingDependencyError
        When the family's package is not installed (the message gives the pip extra).
    """
    family = get_family(spec.family)
    if importlib.util.find_spec(family.package) is None:
        raise MissingDependencyError(family.package, family.extra, f"the {spec.family!r} model family")
    module = importlib.import_module(f"{__name__}.{spec.family}")
    with _BUILD_LOCK:
        return getattr(module, family.adapter)(spec)


#: One model build or copy at a time per process. Building or copying a model scripts TorchScript
#: (e3nn's code generation, through ``ast.parse``), and CPython 3.11 corrupts the AST converter's recursion
#: count when two threads do that at once (CPython gh-106905): chain updates in threads then failed
#: later, anywhere, with "SystemError: AST constructor recursion depth mismatch".
_BUILD_LOCK = threading.RLock()


@functools.lru_cache(maxsize=4)
def _cached_adapter(spec: ModelSpec) -> ModelAdapter:
    return load_adapter(spec)


def copy_core(adapter: ModelAdapter):
    """A deep copy of the adapter's core model, for one chain (under the build lock: a copy
    scripts e3nn's generated code again)."""
    with _BUILD_LOCK:
        return copy.deepcopy(adapter.core)


def cached_adapter(spec: ModelSpec) -> ModelAdapter:
    """Return one adapter per spec and process (the one adapter cache: chain workers, preflight).

    Threads asking at once get the same adapter, built once."""
    with _BUILD_LOCK:
        return _cached_adapter(spec)
