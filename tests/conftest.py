"""Shared fixtures: a tiny MACE as the "foundation" model and a few small structures."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# Two xdist workers share the cores (pyproject.toml): one OpenMP/BLAS thread each (PySCF, numpy),
# set before numpy and PySCF are imported; CP2K gets its threads from the labeller's options.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402

from otfparsl.models.base import ModelSpec  # noqa: E402

# Test tensors are tiny: one intra-op thread avoids OpenMP spin contention (measured 45x faster
# for CHGNet on a loaded 2-core machine) and makes results independent of the core count.
torch.set_num_threads(1)

#: CI sets this (``.ci/run``): a test that would skip because a component is missing fails
#: instead, since CI installed every component and a skip there hides a broken install. Without
#: it (a developer's machine without Slurm, Chromium or CP2K) the skips stay skips.
NO_SKIPS_ENV = "OTFPARSL_TEST_NO_SKIPS"
#: The only markers whose tests may still skip under it: CI has no GPU and no internet.
MAY_SKIP = ("gpu", "network")


#: The EquiformerV2 tests need fairchem-core, which lives in its own environment (README, "A
#: second environment") without the main extras. Each environment collects only its own tests, so
#: neither counts the other's as skips: there ``pytest -m equiformer`` finds only them (and none,
#: exit code 5, if fairchem is missing); here they are not collected.
EQUIFORMER_TESTS = "test_models_equiformer.py"
EQUIFORMER_ENV = bool(importlib.util.find_spec("fairchem")) and not importlib.util.find_spec("mace")


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return (collection_path.name == EQUIFORMER_TESTS) != EQUIFORMER_ENV or None


def _no_skips() -> bool:
    return os.environ.get(NO_SKIPS_ENV, "") not in ("", "0")


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _skip_reason(report)
    report.outcome = "failed"
    report.longrepr = (f"skipped ({reason}), but {NO_SKIPS_ENV} is set: CI installed this "
                       "component, so this skip would hide a broken install")  # fmt: skip


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and _no_skips() and not hasattr(report, "wasxfail")
            and not any(item.get_closest_marker(m) for m in MAY_SKIP)):  # fmt: skip
        _fail_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()  # a module that skipped as a whole (importorskip at its top)
    if report.skipped and _no_skips():
        _fail_skip(report)


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
