"""The learner's two remote jobs as named objects: DFT labels and chain updates by role.

:class:`DFTLabels` is the oracle's ``label(atoms, attempt)``: it numbers the DFT working
directories, reads back a label finished before an interruption and submits the rest to the
`dft` role. :class:`ChainUpdates` is the posterior's
:class:`~otfparsl.learning.posterior.ChainUpdater`: one :class:`~otfparsl.training.ChainJob` per
chain on the `chains` role, and the new samples read from the chain files. Both only need a
:class:`~otfparsl.workflow.submit.Submitter` (thread pools or a Parsl site).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from ase import Atoms

from otfparsl.models.base import ModelSpec
from otfparsl.run.chains import load_samples
from otfparsl.run.checkpoint import LabelCounter
from otfparsl.run.directory import RunDirectory
from otfparsl.run.label_cache import label_key, load_label
from otfparsl.settings import LabelerSettings
from otfparsl.training import ChainJob
from otfparsl.workflow.submit import Submitter, gather
from otfparsl.workflow.tasks import label_structure, update_chain

log = logging.getLogger(__name__)


@dataclass
class DFTLabels:
    """``label(atoms, attempt) -> Future[Atoms]`` on the `dft` role, cached per working directory."""

    submitter: Submitter
    rd: RunDirectory
    labeler: LabelerSettings
    counter: LabelCounter

    def __call__(self, atoms: Atoms, attempt: int) -> Future:
        """Submit the label of ``atoms`` with the options of retry ``attempt`` (0: first try)."""
        workdir = self.rd.dft / f"label_{self.counter.next():05d}"
        options = self.labeler.attempt_options(attempt)
        cached = load_label(workdir, atoms, label_key(atoms, self.labeler.kind, options))
        if cached is not None:
            log.info("DFT label %s was finished before the interruption: reused", workdir.name)
            return completed(cached)
        return self.submitter.submit("dft", label_structure, atoms, self.labeler.kind, options, str(workdir))


@dataclass(frozen=True)
class ChainSetup:
    """What every chain update of a run shares (a frozen value)."""

    model: ModelSpec
    energy_sigma_eV: float
    divergence_retries: int


@dataclass
class ChainUpdates:
    """The M chain updates on the `chains` role (:class:`~otfparsl.learning.ChainUpdater`)."""

    submitter: Submitter
    rd: RunDirectory
    chain_paths: Sequence[Path]
    setup: ChainSetup

    def update(self, n_labels: int, generation: int, energy_offset_eV: float) -> Future:
        """Submit one update per chain; the future holds the list of per-chain statistics."""
        jobs = [
            ChainJob(
                index=k, chain_path=str(path), labels_path=str(self.rd.labels), n_labels=n_labels,
                model=self.setup.model, energy_offset_eV=energy_offset_eV,
                energy_sigma_eV=self.setup.energy_sigma_eV, generation=generation,
                divergence_retries=self.setup.divergence_retries,
            )  # fmt: skip
            for k, path in enumerate(self.chain_paths)
        ]
        return gather([self.submitter.submit("chains", update_chain, job) for job in jobs])

    def samples(self) -> list[dict]:
        """Read every chain's current sample."""
        return load_samples(self.chain_paths)


def completed(value: object) -> Future:
    """A future that is already done with ``value``."""
    future: Future = Future()
    future.set_result(value)
    return future
