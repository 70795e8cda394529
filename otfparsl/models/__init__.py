"""Foundation-model adapters behind one :class:`~otfparsl.models.base.ModelAdapter` protocol.

``load_adapter(spec)`` builds the adapter of a :class:`~otfparsl.models.base.ModelSpec`;
``family_defaults(family)`` gives the published method settings of a model family.
Optional dependencies (mace-torch, chgnet) are imported only when an adapter is built.
"""

from __future__ import annotations

import importlib
import importlib.util

from otfparsl.errors import ConfigurationError, MissingDependencyError
from otfparsl.models.base import (
    FamilyDefaults,
    ModelAdapter,
    ModelSpec,
    PreparedStructure,
    attach_labels,
    collate_labels,
    structure_index,
)

__all__ = [
    "FamilyDefaults",
    "ModelAdapter",
    "ModelSpec",
    "PreparedStructure",
    "attach_labels",
    "collate_labels",
    "family_defaults",
    "load_adapter",
    "structure_index",
]

#: Published settings per family (method.md sections 1, 2, 3 and 5).
#: CHGNet is not in the paper. Its values were chosen the paper's way on ethanol
#: (docs/study_spread.md): sigma_TL 0.2 (NequIP's) is the smallest shown to fit three labels;
#: gamma0 1e-3 is the largest step size measured stable there with held-out errors no worse
#: (3e-3 was stable too but worse), and gives 4x the member spread of NequIP's 1e-4; NequIP's
#: head; the calibration prior is the original code's (a=1.5, b=10).
_FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "mace": FamilyDefaults(sigma_tl=0.5, step_size=1e-3, head_hidden=(64, 16),
                           calibration_a=1.5, calibration_b=10.0),
    "nequip": FamilyDefaults(sigma_tl=0.2, step_size=1e-4, head_hidden=(32, 16),
                             calibration_a=3.0, calibration_b=10.0),
    "equiformer": FamilyDefaults(sigma_tl=0.02, step_size=1e-4, head_hidden=(64, 16),
                                 calibration_a=1.5, calibration_b=10.0),
    "chgnet": FamilyDefaults(sigma_tl=0.2, step_size=1e-3, head_hidden=(32, 16),
                             calibration_a=1.5, calibration_b=10.0),
}

# family -> (module, class, pip package, extra)
_ADAPTERS: dict[str, tuple[str, str, str, str]] = {
    "mace": ("otfparsl.models.mace", "MACEAdapter", "mace", "mace"),
    "chgnet": ("otfparsl.models.chgnet", "CHGNetAdapter", "chgnet", "chgnet"),
}


def family_defaults(family: str) -> FamilyDefaults:
    """Return the published method settings of a model family.

    Parameters
    ----------
    family
        ``"mace"``, ``"nequip"``, ``"equiformer"`` or ``"chgnet"``.

    Returns
    -------
    FamilyDefaults
        sigma_TL, gamma_0, sigma-head hidden sizes, calibration Gamma prior (a, b).
    """
    try:
        return _FAMILY_DEFAULTS[family]
    except KeyError:
        raise ConfigurationError(
            f"unknown model family {family!r}; allowed: {sorted(_FAMILY_DEFAULTS)}"
        ) from None


def load_adapter(spec: ModelSpec) -> ModelAdapter:
    """Build the adapter of a model spec (loads or builds the weights).

    Parameters
    ----------
    spec
        Which family, weights source, dtype, device and seed.

    Returns
    -------
    ModelAdapter
        The adapter; its ``core`` holds the foundation weights.

    Raises
    ------
    ConfigurationError
        For an unknown family (the message lists the allowed ones).
    MissingDependencyError
        When the family's package is not installed (the message gives the pip extra).
    """
    if spec.family not in _ADAPTERS:
        raise ConfigurationError(
            f"model family {spec.family!r} has no adapter; allowed: {sorted(_ADAPTERS)}. "
            "Set model.family to one of them."
        )
    module_name, class_name, package, extra = _ADAPTERS[spec.family]
    if importlib.util.find_spec(package) is None:
        raise MissingDependencyError(package, extra, f"the {spec.family!r} model family")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(spec)
