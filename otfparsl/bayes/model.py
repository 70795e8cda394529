"""The Bayesian model: a foundation-model core plus the force-sigma head."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from otfparsl.bayes.heads import SigmaHead
from otfparsl.bayes.types import Batch, Prediction
from otfparsl.errors import ConfigurationError


class BayesianModel(nn.Module):
    """Core model (energy, forces, stress, features) with a learned per-atom force sigma.

    Parameters
    ----------
    core
        Torch module with ``forward(inputs, compute_stress, training) -> Prediction``.
    head
        The sigma head; it is moved to the dtype and device of the core's first parameter.
    """

    def __init__(self, core: nn.Module, head: SigmaHead) -> None:
        super().__init__()
        self.core = core
        reference = next(iter(core.parameters()), None)
        if reference is not None:
            head = head.to(dtype=reference.dtype, device=reference.device)
        self.head = head

    def forward(self, batch: Batch, compute_stress: bool, training: bool) -> Prediction:
        """Predict energy, forces, (stress) and the per-atom force sigma of a batch.

        Parameters
        ----------
        batch
            Collated structures.
        compute_stress
            Also compute the ``(S, 3, 3)`` stress in eV/Å^3 (periodic cells only).
        training
            Keep the graph of forces and stress so a loss on them can be differentiated.

        Returns
        -------
        Prediction
            The core's prediction with ``force_sigma`` ``(n_atoms,)`` in eV/Å set.
        """
        pred = self.core(batch.inputs, compute_stress, training)
        return dataclasses.replace(pred, force_sigma=self.head(pred.features))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Return detached CPU clones of every trainable parameter (core and head), by name."""
        return {
            name: p.detach().to("cpu", copy=True)
            for name, p in self.named_parameters()
            if p.requires_grad
        }

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy ``state`` (from :meth:`trainable_state`) into the trainable parameters in place.

        Raises
        ------
        ConfigurationError
            If the names or shapes do not match this model's trainable parameters.
        """
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        missing = sorted(set(params) - set(state))
        extra = sorted(set(state) - set(params))
        if missing or extra:
            raise ConfigurationError(
                f"trainable state does not match the model: missing {missing[:5]}, "
                f"unexpected {extra[:5]}. Load a state saved from the same model family/spec."
            )
        with torch.no_grad():
            for name, p in params.items():
                value = state[name]
                if value.shape != p.shape:
                    raise ConfigurationError(
                        f"parameter {name!r} has shape {tuple(p.shape)} in the model but "
                        f"{tuple(value.shape)} in the state. Use a state of the same model."
                    )
                p.copy_(value.to(device=p.device, dtype=p.dtype))
