"""Chain training: create a run's chain files, update one from the labelled data set.

These plain functions are what a chain-update task runs, in the orchestrator's threads or on a
GPU worker far away: they take paths and small frozen values and exchange weights only as CPU
files (a chain file is replaced atomically by a complete new one). Where the files live and how
their versions are kept is :mod:`otfparsl.run.chains`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from otfparsl.bayes.chain import Chain
from otfparsl.bayes.heads import SigmaHead
from otfparsl.bayes.model import BayesianModel
from otfparsl.bayes.prior import TransferPrior
from otfparsl.bayes.sghmc import SGHMCConfig
from otfparsl.data import read_labels
from otfparsl.errors import ConfigurationError
from otfparsl.models import cached_adapter, copy_core
from otfparsl.models.base import ModelAdapter, ModelSpec, attach_labels
from otfparsl.run.chains import chain_path, find_done_update, keep_previous
from otfparsl.structures import structures_digest
from otfparsl.units import FORCE_SIGMA_BASE_EV_PER_A, STRESS_SIGMA_EV_PER_A3

log = logging.getLogger(__name__)


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
        model = build_bayesian_model(adapter, copy_core(adapter))
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        chain = Chain(model, TransferPrior(params, sigma_tl), config, seed=seed + k)
        path = chain_path(chains_dir, k)
        chain.save(path)
        paths.append(path)
    return paths


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
    generation
        The chain's update count after this update, or None. With it the update is idempotent:
        a chain file already at ``generation`` after the same inputs (a retried task whose first
        worker died after saving, a resumed run) is returned as is instead of being updated twice.
    divergence_retries
        Repeats of a diverged update (NaN/inf) with half the step size each time.
    """

    index: int
    chain_path: str
    labels_path: str
    n_labels: int
    model: ModelSpec
    energy_offset_eV: float
    energy_sigma_eV: float
    stress_sigma_eV_per_A3: float = STRESS_SIGMA_EV_PER_A3
    generation: int | None = None
    divergence_retries: int = 1


def update_chain_file(job: ChainJob) -> dict:
    """Run one SGHMC cycle of one chain on the labelled data and replace its file.

    The file before the update is kept as ``chain_K.prev.pt`` (a hard link where the file
    system allows it), so that a resumed run can go back to the generation of its checkpoint.

    Returns
    -------
    dict
        The chain's update statistics (steps, losses, wall time) plus ``chain``; ``reused`` is
        True when an identical earlier update was found instead of being recomputed.
    """
    frames = read_labels(job.labels_path, job.n_labels)
    inputs = {"n_labels": int(job.n_labels), "energy_offset_eV": float(job.energy_offset_eV), "labels_sha256": structures_digest(frames, results=True)}
    path = Path(job.chain_path)
    if job.generation is not None:
        done = find_done_update(path, job.generation, inputs)
        if done is not None:
            return {**done, "reused": True}
    spec = replace(job.model, device=resolve_device(job.model.device))
    adapter = cached_adapter(spec)
    model = build_bayesian_model(adapter, copy_core(adapter))
    chain = Chain.load(path, model)
    if job.generation is not None and chain.n_updates != job.generation - 1:
        raise ConfigurationError(
            f"chain file {path} is at update {chain.n_updates}, but the run asked for update "
            f"{job.generation}; the chain files do not belong to this run state (restore them "
            "from chain_K.prev.pt or restart the run from scratch)."
        )
    dataset = [attach_labels(adapter.prepare(a), a, job.energy_offset_eV) for a in frames]
    periodic = any(bool(np.all(a.pbc)) for a in frames)
    with _reproducible(chain.device):
        stats = chain.update(
            dataset,
            adapter.collate,
            energy_sigma_eV=job.energy_sigma_eV,
            stress_sigma_eV_per_A3=job.stress_sigma_eV_per_A3,
            compute_stress=periodic,
            max_retries=job.divergence_retries,
        )
    result = {"chain": job.index, **asdict(stats)}
    keep_previous(path)
    chain.save(path, meta={**inputs, "stats": result})
    return {**result, "reused": False}


@contextlib.contextmanager
def _reproducible(device: torch.device) -> Iterator[None]:
    """On CUDA: deterministic kernels and no TorchScript re-optimisation, so that a resumed
    chain (a fresh process) continues bit-identically (measured on an H100: without them the
    first update of a fresh process differs by ~4e-15 from a warm one). A no-op on CPU, which is
    deterministic already. Deterministic mode is process-wide: a GPU chain worker owns its process.
    """
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    with torch.jit.optimized_execution(False):
        yield


