"""The ModelAdapter protocol: what otfparsl needs from a foundation model.

An adapter turns ASE structures into model input (neighbour lists built once per structure, in
:meth:`ModelAdapter.prepare`), concatenates prepared structures into a :class:`Batch`
(:meth:`ModelAdapter.collate`), and exposes a torch module ``core`` whose
``forward(inputs, compute_stress, training)`` returns a :class:`Prediction` (energy in eV,
forces = -dE/dr in eV/Å, stress in eV/Å^3 for periodic cells, per-atom invariant features).
The trainable parameters of ``core`` are what the SGHMC chains sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from ase import Atoms

from otfparsl.bayes.types import Batch


@dataclass(frozen=True)
class ModelSpec:
    """How to (re)build a foundation model in any process.

    Attributes
    ----------
    family
        A name of :func:`otfparsl.models.families` (``"chgnet"``, ``"mace"``, ``"sevennet"``, ...).
    source
        Family-specific (each family's ``FAMILY.sources``): for MACE ``"tiny"``,
        ``"mace-mp-0:medium"`` (downloads) or a path to a ``.model`` file; for CHGNet ``"0.3.0"``
        and for SevenNet ``"7net-0"`` (weights ship in the wheels).
    dtype
        ``"float32"`` or ``"float64"``.
    device
        torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    seed
        Seed of the weights of in-process models (``source="tiny"``).
    options
        Extra family-specific keyword arguments (e.g. tiny-model sizes), as sorted pairs.
    """

    family: str
    source: str
    dtype: str = "float64"
    device: str = "cpu"
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)


#: The floating-point types a model may run in, by their ``ModelSpec.dtype`` name.
TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def torch_dtype(spec: ModelSpec) -> torch.dtype:
    """Return the torch dtype named by ``spec.dtype``; ConfigurationError for any other name."""
    if spec.dtype not in TORCH_DTYPES:
        from otfparsl.errors import ConfigurationError

        raise ConfigurationError(f"dtype must be one of {sorted(TORCH_DTYPES)}; got {spec.dtype!r}")
    return TORCH_DTYPES[spec.dtype]


@dataclass(frozen=True)
class FamilyDefaults:
    """Published method settings for one model family (method.md sections 1-3, 5).

    Attributes
    ----------
    sigma_tl
        Width of the transfer-learning prior (dimensionless, weight units).
    step_size
        gamma_0 of the cosine step-size cycle.
    head_hidden
        Hidden layer sizes of the sigma head MLP.
    calibration_a, calibration_b
        Shape and rate of the Gamma prior on the precision factor.
    """

    sigma_tl: float
    step_size: float
    head_hidden: tuple[int, ...]
    calibration_a: float = 1.5
    calibration_b: float = 10.0


@dataclass(frozen=True)
class ModelFamily:
    """Everything otfparsl knows about one model family, declared once in its own module.

    A family's module (``otfparsl/models/NAME.py``) defines ``FAMILY = ModelFamily(...)`` and
    imports its optional package only inside functions, so the registry
    (:func:`otfparsl.models.families`) can read every declaration without that package.

    Attributes
    ----------
    name
        The value of ``model.family`` in a run YAML.
    adapter
        Name of the adapter class in the same module (built by ``load_adapter``).
    package
        Importable package the adapter needs (checked before building, for the install hint).
    extra
        pip extra of otfparsl that installs ``package`` (``pip install "otfparsl[EXTRA]"``).
    defaults
        The method's published settings for this family.
    sources
        One line for the docs and errors: what ``model.source`` may be.
    """

    name: str
    adapter: str
    package: str
    extra: str
    defaults: FamilyDefaults
    sources: str


@dataclass
class PreparedStructure:
    """One structure, prepared once for a model (graph + labels), on CPU.

    Attributes
    ----------
    graph
        Adapter-specific input (neighbour list, cell, species), picklable, CPU tensors.
    n_atoms
        Number of atoms.
    periodic
        True when the cell is periodic in all three directions (stress is defined).
    energy
        Reference total energy in eV (already offset), or None when unlabelled.
    forces
        ``(n_atoms, 3)`` reference forces in eV/Å, or None.
    stress
        ``(3, 3)`` reference stress in eV/Å^3 (ASE sign), or None.
    """

    graph: Any
    n_atoms: int
    periodic: bool
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None


@runtime_checkable
class ModelAdapter(Protocol):
    """A foundation model as the Bayesian machinery and the calculators use it."""

    spec: ModelSpec
    core: torch.nn.Module
    n_features: int
    defaults: FamilyDefaults

    def check_atoms(self, atoms: Atoms) -> None:
        """Raise :class:`~otfparsl.errors.ModelError` if the model cannot handle ``atoms``."""
        ...

    def prepare(self, atoms: Atoms) -> PreparedStructure:
        """Build the model input of one structure (neighbour list once), without labels."""
        ...

    def collate(self, items: Sequence[PreparedStructure]) -> Batch:
        """Concatenate prepared structures into one batch on the adapter's device."""
        ...


def attach_labels(
    prepared: PreparedStructure, atoms: Atoms, energy_offset_eV: float = 0.0
) -> PreparedStructure:
    """Copy the reference labels of ``atoms`` (its calculator results) into ``prepared``.

    Parameters
    ----------
    prepared
        The structure prepared by an adapter.
    atoms
        A labelled structure: ``atoms.calc`` holds the DFT energy, forces and (periodic) stress.
    energy_offset_eV
        Added to the DFT energy (method.md section 6: c = E_pretrained - E_DFT at step 0).

    Returns
    -------
    PreparedStructure
        ``prepared`` with ``energy``, ``forces`` and, where known, ``stress`` set.
    """
    results = atoms.calc.results if atoms.calc is not None else {}
    if "energy" not in results or "forces" not in results:
        raise ValueError("a labelled structure needs DFT 'energy' and 'forces' in atoms.calc")
    prepared.energy = float(results["energy"]) + energy_offset_eV
    prepared.forces = np.asarray(results["forces"], dtype=float).reshape(-1, 3)
    stress = results.get("stress")
    if stress is not None and prepared.periodic:
        stress = np.asarray(stress, dtype=float)
        if stress.shape == (6,):
            from ase.stress import voigt_6_to_full_3x3_stress

            stress = voigt_6_to_full_3x3_stress(stress)
        prepared.stress = stress.reshape(3, 3)
    return prepared


def collate_labels(
    items: Sequence[PreparedStructure], dtype: torch.dtype, device: torch.device | str
) -> dict[str, torch.Tensor | None]:
    """Stack the labels of prepared structures into the label fields of a :class:`Batch`.

    Returns a dict with keys ``energy`` ``(S,)``, ``forces`` ``(n_atoms, 3)``, ``stress``
    ``(S, 3, 3)`` and ``stress_mask`` ``(S,)``; each is None when no structure is labelled.
    Adapters call this from ``collate``.
    """
    if not items or any(it.energy is None for it in items):
        return {"energy": None, "forces": None, "stress": None, "stress_mask": None}
    energy = torch.tensor([it.energy for it in items], dtype=dtype, device=device)
    forces = torch.as_tensor(
        np.concatenate([it.forces for it in items]), dtype=dtype, device=device
    )
    mask = [it.stress is not None for it in items]
    stress = torch.zeros((len(items), 3, 3), dtype=dtype, device=device)
    for k, it in enumerate(items):
        if it.stress is not None:
            stress[k] = torch.as_tensor(it.stress, dtype=dtype)
    return {
        "energy": energy,
        "forces": forces,
        "stress": stress if any(mask) else None,
        "stress_mask": torch.tensor(mask, device=device) if any(mask) else None,
    }


def structure_index(items: Sequence[PreparedStructure], device: torch.device | str) -> torch.Tensor:
    """Return ``(n_atoms,)`` long: the structure each atom of the concatenated batch belongs to."""
    counts = torch.tensor([it.n_atoms for it in items], device=device)
    return torch.repeat_interleave(torch.arange(len(items), device=device), counts)
