"""The per-atom force-sigma head on rotation-invariant features (method.md section 1)."""

from __future__ import annotations

import torch
from torch import nn

from otfparsl.errors import ConfigurationError


class SigmaHead(nn.Module):
    """Learned per-atom force standard deviation ``sigma_i = base_sigma * exp(h(v_i))``.

    ``h`` is an MLP with SiLU hidden activations whose weights and biases are all initialised to
    zero, so a fresh head predicts ``sigma_i = base_sigma`` for every atom.

    Parameters
    ----------
    n_features
        Number of invariant per-atom features ``F`` (MACE-MP-0 medium: 256).
    hidden
        Hidden layer sizes, e.g. ``(64, 16)`` for MACE; ``()`` gives a single linear layer.
    base_sigma
        Force sigma of the zero-initialised head in eV/Å
        (:data:`otfparsl.units.FORCE_SIGMA_BASE_EV_PER_A`, 0.1 kcal/mol/Å).

    Notes
    -----
    Rensmeyer et al., Digital Discovery 2026, section on the likelihood: one sigma per atom,
    shared by its x, y and z force components.
    """

    def __init__(self, n_features: int, hidden: tuple[int, ...], base_sigma: float) -> None:
        super().__init__()
        if n_features < 1 or any(h < 1 for h in hidden):
            raise ConfigurationError(
                f"SigmaHead sizes must be positive; got n_features={n_features}, "
                f"hidden={hidden}. Pass the adapter's n_features and e.g. hidden=(64, 16)."
            )
        if not base_sigma > 0.0:
            raise ConfigurationError(
                f"base_sigma must be > 0 eV/Å; got {base_sigma}. "
                "Use otfparsl.units.FORCE_SIGMA_BASE_EV_PER_A."
            )
        sizes = (int(n_features), *(int(h) for h in hidden), 1)
        layers: list[nn.Module] = []
        for k in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[k], sizes[k + 1]))
            if k < len(sizes) - 2:
                layers.append(nn.SiLU())
        self.mlp = nn.Sequential(*layers)
        self.n_features = int(n_features)
        self.base_sigma = float(base_sigma)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the per-atom force sigma.

        Parameters
        ----------
        features
            ``(n_atoms, n_features)`` invariant per-atom features.

        Returns
        -------
        torch.Tensor
            ``(n_atoms,)`` force sigma in eV/Å.
        """
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ConfigurationError(
                f"SigmaHead expects features of shape (n_atoms, {self.n_features}); got "
                f"{tuple(features.shape)}. Build the head with the adapter's n_features."
            )
        return self.base_sigma * torch.exp(self.mlp(features).squeeze(-1))
