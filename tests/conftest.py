"""Shared fixtures: a tiny MACE as the "foundation" model and a few small structures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from otfparsl.models.base import ModelSpec

# Test tensors are tiny: one intra-op thread avoids OpenMP spin contention (measured 45x faster
# for CHGNet on a loaded 2-core machine) and makes results independent of the core count.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_mace_spec() -> ModelSpec:
    """A tiny in-process MACE (float64, seed 0; elements H C N O Al Ni Cu Pd Ag Pt Au)."""
    return ModelSpec(family="mace", source="tiny", dtype="float64", device="cpu", seed=0)


@pytest.fixture(scope="session")
def tiny_mace_adapter(tiny_mace_spec):
    """The adapter of ``tiny_mace_spec``, built once per session (treat as read-only)."""
    from otfparsl.models import load_adapter

    return load_adapter(tiny_mace_spec)


@pytest.fixture
def cu_cell() -> Atoms:
    """A 4-atom conventional fcc Cu cell (a = 3.61 Å), rattled by 0.05 Å (seed 1)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(stdev=0.05, seed=1)
    return atoms


@pytest.fixture
def al_cell() -> Atoms:
    """A 4-atom conventional fcc Al cell (a = 4.05 Å), slightly sheared and rattled (seed 2)."""
    atoms = bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.02 * np.array(
        [[0, 1, 0], [0, 0, 0], [0, 0, 0]])), scale_atoms=True)
    atoms.rattle(stdev=0.05, seed=2)
    return atoms


@pytest.fixture
def ethanol() -> Atoms:
    """Ethanol (9 atoms, no cell, no pbc) from ase.build.molecule."""
    return molecule("CH3CH2OH")


@pytest.fixture
def water() -> Atoms:
    """Water (3 atoms, no pbc)."""
    return molecule("H2O")
