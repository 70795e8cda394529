"""A tiny linear "foundation model" and its data items, for the Bayesian-machinery tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from otfparsl.bayes.types import Batch, Prediction

DTYPE = torch.float64


class LinearCore(nn.Module):
    """Energy ``x_s · w + shift``, forces ``A_i w``, stress ``C_s w``, fixed features.

    The likelihood is Gaussian in ``w`` for fixed force sigma, so its posterior is known.
    ``shift`` is a buffer (not sampled, not under the prior). Set ``nan_calls`` to make the
    first that many forward calls return NaN energies (divergence tests).
    """

    def __init__(self, w0: torch.Tensor, nan_calls: int = 0) -> None:
        super().__init__()
        self.w = nn.Parameter(w0.clone().to(DTYPE))
        self.register_buffer("shift", torch.zeros((), dtype=DTYPE))
        self.nan_calls = nan_calls
        self.n_calls = 0

    def forward(self, inputs: dict, compute_stress: bool, training: bool) -> Prediction:
        self.n_calls += 1
        energy = inputs["x"] @ self.w + self.shift
        if self.n_calls <= self.nan_calls:
            energy = energy * float("nan")
        forces = inputs["desc"] @ self.w
        stress = inputs["sdesc"] @ self.w if compute_stress else None
        return Prediction(energy=energy, forces=forces, stress=stress, features=inputs["feat"])


@dataclass
class ToyItem:
    """One toy structure: descriptors and labels."""

    x: torch.Tensor  # (P,)
    desc: torch.Tensor  # (n_atoms, 3, P)
    sdesc: torch.Tensor  # (3, 3, P)
    feat: torch.Tensor  # (n_atoms, F)
    energy: float
    forces: torch.Tensor  # (n_atoms, 3)
    stress: torch.Tensor | None  # (3, 3)


def collate(items: Sequence[ToyItem]) -> Batch:
    """Concatenate toy items into a Batch."""
    index = [torch.full((it.desc.shape[0],), k, dtype=torch.long) for k, it in enumerate(items)]
    stress_known = any(it.stress is not None for it in items)
    return Batch(
        inputs={
            "x": torch.stack([it.x for it in items]),
            "desc": torch.cat([it.desc for it in items]),
            "sdesc": torch.stack([it.sdesc for it in items]),
            "feat": torch.cat([it.feat for it in items]),
        },
        structure_index=torch.cat(index),
        n_structures=len(items),
        energy=torch.tensor([it.energy for it in items], dtype=DTYPE),
        forces=torch.cat([it.forces for it in items]),
        stress=torch.stack(
            [it.stress if it.stress is not None else torch.zeros(3, 3, dtype=DTYPE)
             for it in items]
        ) if stress_known else None,
        stress_mask=torch.tensor([it.stress is not None for it in items])
        if stress_known else None,
    )


def make_items(
    n: int,
    w_true: torch.Tensor,
    n_atoms: int,
    energy_noise: float,
    force_noise: float,
    seed: int,
    n_features: int = 2,
) -> list[ToyItem]:
    """Draw ``n`` toy structures labelled by ``w_true`` plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    p = w_true.numel()
    items = []
    for _ in range(n):
        x = torch.randn(p, generator=g, dtype=DTYPE)
        desc = torch.randn(n_atoms, 3, p, generator=g, dtype=DTYPE)
        sdesc = torch.randn(3, 3, p, generator=g, dtype=DTYPE)
        feat = torch.randn(n_atoms, n_features, generator=g, dtype=DTYPE)
        energy = float(x @ w_true + energy_noise * torch.randn((), generator=g, dtype=DTYPE))
        forces = desc @ w_true + force_noise * torch.randn(n_atoms, 3, generator=g, dtype=DTYPE)
        items.append(ToyItem(x, desc, sdesc, feat, energy, forces, None))
    return items


@pytest.fixture
def toy():
    """Give the tests the toy core class, the item factory and the collate function."""

    class _Toy:
        Core = LinearCore
        make_items = staticmethod(make_items)
        collate = staticmethod(collate)

    return _Toy
