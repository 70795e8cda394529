"""The Gaussian transfer-learning prior centred on the pretrained weights (method.md section 2)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from otfparsl.errors import ConfigurationError


class TransferPrior:
    """``p(θ) = Π_k N(θ_k; θ_k^pre, σ_TL²)`` over every trainable parameter.

    The prior mean is a ``detach().clone()`` of the given values: it owns its storage and stays
    fixed when the parameters move (the original code kept ``detach()`` views, so on CPU its
    prior silently vanished).

    Parameters
    ----------
    named_params
        Parameter name -> pretrained value (the sigma head's zero-initialised values give it
        prior mean 0). Buffers must not be included.
    sigma_tl
        Prior standard deviation in weight units (MACE 0.5, NequIP 0.2, EquiformerV2 0.02).
    """

    def __init__(self, named_params: Mapping[str, torch.Tensor], sigma_tl: float) -> None:
        if not (sigma_tl > 0.0 and math.isfinite(sigma_tl)):
            raise ConfigurationError(
                f"sigma_tl must be a finite number > 0; got {sigma_tl}. MACE uses 0.5."
            )
        if not named_params:
            raise ConfigurationError("TransferPrior needs at least one parameter; got none.")
        self.sigma_tl = float(sigma_tl)
        self.mean: dict[str, torch.Tensor] = {
            name: value.detach().clone() for name, value in named_params.items()
        }

    @classmethod
    def from_model(cls, model: nn.Module, sigma_tl: float) -> TransferPrior:
        """Build the prior on the current values of ``model``'s trainable parameters."""
        return cls({n: p for n, p in model.named_parameters() if p.requires_grad}, sigma_tl)

    def to(self, device: torch.device | str) -> TransferPrior:
        """Move the prior mean to ``device`` (in place) and return ``self``."""
        self.mean = {n: m.to(device) for n, m in self.mean.items()}
        return self

    def n_parameters(self) -> int:
        """Return the number of scalar weights under the prior."""
        return sum(m.numel() for m in self.mean.values())

    def log_prob(self, named_params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Return ``log p(θ)`` (a scalar tensor, differentiable w.r.t. the parameters).

        Parameters
        ----------
        named_params
            Name -> current value; the names must equal those the prior was built with.

        Notes
        -----
        ``log p(θ) = Σ_k [-(θ_k - θ_k^pre)² / (2 σ_TL²) - ½ log(2π σ_TL²)]``.
        """
        if set(named_params) != set(self.mean):
            missing = sorted(set(self.mean) - set(named_params))[:5]
            extra = sorted(set(named_params) - set(self.mean))[:5]
            raise ConfigurationError(
                f"parameters do not match the prior: missing {missing}, unexpected {extra}. "
                "Build the prior from the same model (TransferPrior.from_model)."
            )
        inv_var = 1.0 / (self.sigma_tl * self.sigma_tl)
        total = torch.stack(
            [
                ((named_params[n] - m.to(named_params[n])) ** 2).sum()
                for n, m in self.mean.items()
            ]
        ).sum()
        const = self.n_parameters() * 0.5 * math.log(2.0 * math.pi * self.sigma_tl**2)
        return -0.5 * inv_var * total - const
