"""The Gaussian likelihood of energies, forces and stress (method.md section 1)."""

from __future__ import annotations

import math

import torch

from otfparsl.bayes.types import Batch, Prediction
from otfparsl.errors import ConfigurationError

_LOG_2PI = math.log(2.0 * math.pi)


def _gaussian_logpdf(x: torch.Tensor, mean: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Return ``log N(x; mean, sigma^2)`` element-wise, normalisation kept."""
    z = (x - mean) / sigma
    return -0.5 * z * z - torch.log(sigma) - 0.5 * _LOG_2PI


def log_likelihood(
    pred: Prediction,
    batch: Batch,
    energy_sigma_eV: float,
    stress_sigma_eV_per_A3: float,
) -> torch.Tensor:
    """Return the log-likelihood of each labelled structure of a batch.

    Parameters
    ----------
    pred
        Prediction of the Bayesian model: ``energy`` ``(S,)`` eV, ``forces`` ``(n_atoms, 3)``
        eV/Å, ``force_sigma`` ``(n_atoms,)`` eV/Å, ``stress`` ``(S, 3, 3)`` eV/Å^3 or None.
    batch
        The labelled batch (``energy``, ``forces``; ``stress`` where ``stress_mask``).
    energy_sigma_eV
        Fixed energy sigma per structure in eV (0.1 K).
    stress_sigma_eV_per_A3
        Fixed stress sigma in eV/Å^3, all 9 components.

    Returns
    -------
    torch.Tensor
        ``(S,)`` log-likelihood per structure (natural log, normalisation constants kept).

    Notes
    -----
    ``log p(y_s) = log N(E_s; Ê_s, σ_E²) + Σ_ij log N(F_sij; F̂_sij, σ_si²)
    [+ Σ_kl log N(S_skl; Ŝ_skl, σ_S²)]`` (Rensmeyer et al. 2026, method.md section 1); the
    stress term is added only where ``batch.stress_mask`` is True.
    """
    if batch.energy is None or batch.forces is None:
        raise ConfigurationError(
            "log_likelihood needs a labelled batch; batch.energy or batch.forces is None. "
            "Attach the DFT labels (attach_labels) before collating."
        )
    if pred.force_sigma is None:
        raise ConfigurationError(
            "the prediction has no force_sigma; evaluate it with BayesianModel, not the core."
        )
    if not (energy_sigma_eV > 0.0 and stress_sigma_eV_per_A3 > 0.0):
        raise ConfigurationError(
            f"sigmas must be > 0; got energy_sigma_eV={energy_sigma_eV}, "
            f"stress_sigma_eV_per_A3={stress_sigma_eV_per_A3}."
        )
    dtype, device = pred.energy.dtype, pred.energy.device
    sigma_e = torch.tensor(energy_sigma_eV, dtype=dtype, device=device)
    ll = _gaussian_logpdf(batch.energy.to(dtype), pred.energy, sigma_e)
    sigma_f = pred.force_sigma.unsqueeze(-1)
    ll_f_atom = _gaussian_logpdf(batch.forces.to(dtype), pred.forces, sigma_f).sum(dim=-1)
    ll = ll.index_add(0, batch.structure_index.to(device), ll_f_atom)
    stress_labels = batch.stress is not None and batch.stress_mask is not None
    if stress_labels and not torch.compiler.is_compiling():  # traced: no data-dependent branch
        stress_labels = bool(batch.stress_mask.any())
    if stress_labels:
        if pred.stress is None:
            raise ConfigurationError(
                "the batch has stress labels but the prediction has no stress; call the model "
                "with compute_stress=True for periodic, stress-labelled data."
            )
        sigma_s = torch.tensor(stress_sigma_eV_per_A3, dtype=dtype, device=device)
        ll_s = _gaussian_logpdf(batch.stress.to(dtype), pred.stress, sigma_s).sum(dim=(-2, -1))
        ll = ll + torch.where(batch.stress_mask.to(device), ll_s, torch.zeros_like(ll_s))
    return ll
