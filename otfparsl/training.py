"""Chain files of a run: create them, update one from the labelled data set, read samples.

These plain functions are what a chain-update task runs, in the orchestrator's threads or on a
GPU worker far away: they take paths and small frozen values and exchange weights only as CPU
files (a chain file is replaced atomically by a complete new one).
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from otfparsl.bayes.chain import Chain, load_sample
from otfparsl.bayes.heads import SigmaHead
from otfparsl.bayes.model import BayesianModel
from otfparsl.bayes.prior import TransferPrior
from otfparsl.bayes.sghmc import SGHMCConfig
from otfparsl.data import read_labels
from otfparsl.models import load_adapter
from otfparsl.models.base import ModelAdapter, ModelSpec, attach_labels
from otfparsl.units import FORCE_SIGMA_BASE_EV_PER_A, STRESS_SIGMA_EV_PER_A3


def build_bayesian_model(adapter: ModelAdapter, core: torch.nn.Module | None = None) -> BayesianModel:
    """Put a zero-initialised sigma head on a foundation model (method.md section 1).

    Parameters
    ----------
    adapter
        The foundation model; its ``core`` is used unless ``core`` is given.
    core
        A private copy of the core (chains must not share weights).
    """
    core = adapter.core if core is None else core
    reference = next(core.parameters())
    head = SigmaHead(adapter.n_features, adapter.defaults.head_hidden, FORCE_SIGMA_BASE_EV_PER_A)
    head = head.to(dtype=reference.dtype, device=reference.device)
    return BayesianModel(core, head)


@functools.lru_cache(maxsize=4)
def cached_adapter(spec: ModelSpec) -> ModelAdapter:
    """Load a foundation model once per process (chain tasks reuse it; weights are copied)."""
    return load_adapter(spec)


def resolve_device(device: str) -> str:
    """Map ``"auto"`` to ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def init_chain_files(
    adapter: ModelAdapter,
    chains_dir: str | os.PathLike,
    n_chains: int,
    seed: int,
    config: SGHMCConfig,
    sigma_tl: float,
) -> list[Path]:
    """Write M chain files, all at the pretrained weights (method.md section 3, 'Eight chains').

    Chain k gets seed ``seed + k``. The prior mean is a clone of the pretrained weights (and 0
    for the zero-initialised sigma head).
    """
    chains_dir = Path(chains_dir)
    chains_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n_chains):
        model = build_bayesian_model(adapter, copy.deepcopy(adapter.core))
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        chain = Chain(model, TransferPrior(params, sigma_tl), config, seed=seed + k)
        path = chain_path(chains_dir, k)
        chain.save(path)
        paths.append(path)
    return paths


def chain_path(chains_dir: str | os.PathLike, index: int) -> Path:
    """Return the file of chain ``index``."""
    return Path(chains_dir) / f"chain_{index}.pt"


@dataclass(frozen=True)
class ChainJob:
    """One chain update, as a picklable value (what a `chains` task receives).

    Attributes
    ----------
    index
        Chain number k.
    chain_path
        The chain file, replaced atomically by the updated chain.
    labels_path
        ``labels.extxyz`` of the run.
    n_labels
        Use the first ``n_labels`` structures (a consistent snapshot of the growing data set).
    model
        How to build the foundation model in the worker process.
    energy_offset_eV
        c of method.md section 6, added to every DFT energy.
    energy_sigma_eV
        sigma_E = 0.1 K.
    stress_sigma_eV_per_A3
        sigma_S.
    """

    index: int
    chain_path: str
    labels_path: str
    n_labels: int
    model: ModelSpec
    energy_offset_eV: float
    energy_sigma_eV: float
    stress_sigma_eV_per_A3: float = STRESS_SIGMA_EV_PER_A3


def update_chain_file(job: ChainJob) -> dict:
    """Run one SGHMC cycle of one chain on the labelled data and replace its file.

    Returns
    -------
    dict
        The chain's update statistics (steps, losses, wall time) plus ``chain``.
    """
    spec = replace(job.model, device=resolve_device(job.model.device))
    adapter = cached_adapter(spec)
    model = build_bayesian_model(adapter, copy.deepcopy(adapter.core))
    chain = Chain.load(job.chain_path, model)
    frames = read_labels(job.labels_path, job.n_labels)
    dataset = [attach_labels(adapter.prepare(a), a, job.energy_offset_eV) for a in frames]
    periodic = any(bool(np.all(a.pbc)) for a in frames)
    stats = chain.update(
        dataset,
        adapter.collate,
        energy_sigma_eV=job.energy_sigma_eV,
        stress_sigma_eV_per_A3=job.stress_sigma_eV_per_A3,
        compute_stress=periodic,
    )
    chain.save(job.chain_path)
    return {"chain": job.index, **asdict(stats)}


def load_samples(paths: Sequence[str | os.PathLike]) -> list[dict[str, torch.Tensor]]:
    """Read the current weight sample of each chain file (CPU tensors)."""
    return [load_sample(p) for p in paths]
