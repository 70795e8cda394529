"""The posterior: M samples of the Bayesian network as one ensemble, updated on new labels.

:meth:`Posterior.predict` gives the ensemble's mean, spread and members for a structure
(method.md section 4). :meth:`Posterior.update` runs the M chain updates on the labels so far
(method.md sections 2-3) through an injected :class:`ChainUpdater` and swaps the new samples
into the ensemble. Updates are serialised, so each one sees every label that joined before it
started, and the posterior owns the generation counter (the number of updates applied).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Protocol

from ase import Atoms

from otfparsl.calculators.ensemble import EnsembleCalculator, summarise_members

EventFn = Callable[[dict], None]


class ChainUpdater(Protocol):
    """Runs the M chain updates somewhere (thread pool, Parsl executor) and reads the samples."""

    def update(self, n_labels: int, generation: int, energy_offset_eV: float) -> Future:
        """Update every chain on the first ``n_labels`` labels to its ``generation``-th sample.

        The future's result is one dict of statistics per chain.
        """
        ...

    def samples(self) -> Sequence[dict]:
        """Read the chains' current samples (trainable state dicts)."""
        ...


class Posterior:
    """The ensemble of posterior samples and its updates.

    Parameters
    ----------
    ensemble
        The current samples as an ASE calculator.
    chains
        Where the chain updates run.
    labels_seen
        Number of labels the current samples were trained on (0 for a new run).
    generation
        Number of updates applied so far (0 for a new run).
    """

    def __init__(
        self, ensemble: EnsembleCalculator, chains: ChainUpdater, labels_seen: int = 0, generation: int = 0
    ) -> None:
        self.ensemble, self._chains = ensemble, chains
        self.labels_seen, self.generation = labels_seen, generation
        self.predict_s = 0.0  # wall time of predictions, s
        self.update_s = 0.0  # wall time of updates (submission to reload), s
        self._predict_lock = threading.Lock()
        self._update_lock = threading.Lock()

    def predict(self, atoms: Atoms) -> dict:
        """Return the ensemble's results for ``atoms`` (thread-safe), ASE units."""
        start = time.perf_counter()
        with self._predict_lock:
            self.ensemble.adapter.check_atoms(atoms)
            members = self.ensemble.predict_members(atoms)
        results = summarise_members(
            members, self.ensemble.energy_sigma_eV, self.ensemble.stress_sigma_eV_per_A3,
            self.ensemble.variance_ddof,
        )  # fmt: skip
        self.predict_s += time.perf_counter() - start
        return results

    def update(self, n_labels: int, energy_offset_eV: float, latest: Callable[[], int]) -> dict | None:
        """Train every chain on all labels so far; return the ``update`` event, or None.

        Parameters
        ----------
        n_labels
            Labels the caller needs in the ensemble (its own label included).
        energy_offset_eV
            c of method.md section 6.
        latest
            Returns the current number of labels; read once the update lock is held, so labels
            that joined while another update ran are included.

        Returns
        -------
        dict or None
            The ``update`` event (generation, labels, seconds, per-chain statistics); None
            when an update that ran meanwhile had already seen the caller's label.
        """
        with self._update_lock:
            if self.labels_seen >= n_labels:
                return None
            count = latest()
            start = time.perf_counter()
            stats = self._chains.update(count, self.generation + 1, energy_offset_eV).result()
            samples = self._chains.samples()
            with self._predict_lock:
                self.ensemble.set_samples(samples)
            seconds = time.perf_counter() - start
            self.update_s += seconds
            self.generation += 1
            self.labels_seen = count
            return {"event": "update", "generation": self.generation, "n_labels": count,
                    "seconds": seconds, "chains": stats}  # fmt: skip


def divergence_events(update: dict) -> list[dict]:
    """The ``chain_diverged`` events of an ``update`` event (chains that needed retries)."""
    return [
        {"event": "chain_diverged", "generation": update["generation"], "chain": chain.get("chain"),
         "retries": chain["n_retries"], "step_size": chain.get("step_size")}
        for chain in update["chains"] if chain.get("n_retries")
    ]  # fmt: skip
