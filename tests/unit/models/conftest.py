"""Fixtures of the model tests: MACE-MP-0 medium's architecture with random weights, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from otfparsl.models.base import ModelSpec


@pytest.fixture(scope="session")
def mace_mp0_medium_file(tmp_path_factory) -> Path:
    """A ``.model`` file of MACE-MP-0 medium's exact architecture, random weights (seed 0), float32."""
    pytest.importorskip("mace")
    from otfparsl.testing import build_mace_mp0_medium_architecture

    folder = tmp_path_factory.mktemp("mace_mp0")
    return build_mace_mp0_medium_architecture(folder / "mace-mp-0-medium-architecture.model", seed=0)


@pytest.fixture(scope="session")
def mace_mp0_medium_spec(mace_mp0_medium_file) -> ModelSpec:
    """The spec of that file in float64 (the finite-difference checks need it)."""
    return ModelSpec(family="mace", source=str(mace_mp0_medium_file), dtype="float64")


@pytest.fixture(scope="session")
def mace_mp0_medium(mace_mp0_medium_spec):
    """The MACE adapter of the MP-0-medium-size file, loaded as ``mace-mp-0:medium`` is after
    its download (treat as read-only)."""
    from otfparsl.models import load_adapter

    return load_adapter(mace_mp0_medium_spec)
