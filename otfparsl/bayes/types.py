"""Plain torch value types shared by the models and the Bayesian machinery (no ase, no parsl)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass
class Batch:
    """A collated batch of structures, ready for a model.

    Attributes
    ----------
    inputs
        Model-specific input (graph tensors); opaque to everything but the adapter's core.
    structure_index
        ``(n_atoms,)`` long, the structure each atom belongs to.
    n_structures
        Number of structures S.
    energy
        ``(S,)`` reference energies in eV (already offset), or None when unlabelled.
    forces
        ``(n_atoms, 3)`` reference forces in eV/Å, or None.
    stress
        ``(S, 3, 3)`` reference stress in eV/Å^3 (ASE sign convention), or None.
    stress_mask
        ``(S,)`` bool, True where a structure's stress is known (periodic and labelled).
    """

    inputs: Any
    structure_index: torch.Tensor
    n_structures: int
    energy: torch.Tensor | None = None
    forces: torch.Tensor | None = None
    stress: torch.Tensor | None = None
    stress_mask: torch.Tensor | None = None


@dataclass
class Prediction:
    """Output of a core model (and of the Bayesian model when ``force_sigma`` is set).

    Attributes
    ----------
    energy
        ``(S,)`` total energy per structure in eV.
    forces
        ``(n_atoms, 3)`` in eV/Å.
    stress
        ``(S, 3, 3)`` in eV/Å^3 (ASE convention), or None if not computed.
    features
        ``(n_atoms, n_features)`` rotation-invariant per-atom features for the sigma head.
    force_sigma
        ``(n_atoms,)`` learned per-atom force sigma in eV/Å (set by the Bayesian model).
    """

    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor | None
    features: torch.Tensor
    force_sigma: torch.Tensor | None = None

    def detached(self) -> Prediction:
        """The same prediction with every tensor detached from the autograd graph."""
        return Prediction(*(t.detach() if t is not None else None for t in (
            self.energy, self.forces, self.stress, self.features, self.force_sigma)))


class CoreModel(Protocol):
    """The torch module of a foundation model, as the Bayesian machinery sees it.

    It is a ``torch.nn.Module`` whose ``forward(inputs, compute_stress, training)`` returns a
    :class:`Prediction`. With ``training=True`` the forces and stress keep their graph
    (``create_graph=True``) so that a loss on them can be differentiated w.r.t. the weights.
    """

    def __call__(self, inputs: Any, compute_stress: bool, training: bool) -> Prediction: ...
