"""The oracle: DFT labels with retries and a budget of consecutive failures.

A failed label (SCF not converged, a crashed code, a lost worker) is retried up to ``retries``
times, each attempt numbered so the caller can change the DFT settings between attempts; then
the structure is skipped. After ``max_consecutive_failures`` skipped structures in a row the run
stops cleanly (:class:`~otfparsl.errors.TooManyLabelFailures`). A wrong setting
(:class:`~otfparsl.errors.ConfigurationError`) or a missing package stops the run at once:
retrying cannot fix it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future

from ase import Atoms

from otfparsl.errors import (
    ConfigurationError,
    DiskFull,
    LabelingFailed,
    MissingDependencyError,
    TooManyLabelFailures,
)

log = logging.getLogger(__name__)

#: ``label(atoms, attempt) -> Future[Atoms]``: the DFT-labelled structure (raw DFT values).
LabelFn = Callable[[Atoms, int], Future]
EventFn = Callable[[dict], None]


def _ignore(event: dict) -> None:
    """Drop an event (the default event sink)."""


class Oracle:
    """DFT labelling with retries and a failure budget.

    Parameters
    ----------
    label
        ``label(atoms, attempt) -> Future[Atoms]``; ``attempt`` counts the tries of this
        structure (0 first).
    retries
        Extra attempts after a failed label before the structure is skipped.
    max_consecutive_failures
        Skipped structures in a row after which the run stops.
    events
        Receives one ``label_failed`` event per failed attempt.
    """

    def __init__(
        self, label: LabelFn, retries: int = 1, max_consecutive_failures: int = 3, events: EventFn = _ignore
    ) -> None:
        self._label, self._events = label, events
        self.retries, self.max_consecutive_failures = retries, max_consecutive_failures
        self.consecutive_failures = 0
        self.seconds = 0.0  # wall time spent waiting for DFT, s

    def label(self, atoms: Atoms, step: int, walker: int) -> Atoms | None:
        """Return the labelled copy of ``atoms``, or None when every attempt failed (skipped)."""
        for attempt in range(self.retries + 1):
            start = time.perf_counter()
            try:
                labelled = self._label(atoms.copy(), attempt).result()
            except (ConfigurationError, MissingDependencyError, DiskFull):
                raise  # retrying cannot fix a wrong setting, a missing package or a full disk
            except Exception as exc:  # noqa: BLE001 - a crashed code or a lost worker is a failed label
                self.seconds += time.perf_counter() - start
                self._failed(exc, step, walker, attempt)
                continue
            self.seconds += time.perf_counter() - start
            self.consecutive_failures = 0
            return labelled
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.max_consecutive_failures:
            raise TooManyLabelFailures(
                f"{self.consecutive_failures} structures in a row could not be labelled; "
                "the run stops here. See the label_failed events in events.jsonl and the output in dft/, fix "
                "the labeler section of the run directory's run.yaml (e.g. retries with more SCF "
                "cycles), then `otfparsl resume RUN_DIR`"
            )
        return None

    def _failed(self, exc: Exception, step: int, walker: int, attempt: int) -> None:
        if not isinstance(exc, LabelingFailed):
            exc = LabelingFailed(f"{type(exc).__name__}: {exc}")
        self._events(
            {
                "event": "label_failed", "step": step, "walker": walker, "attempt": attempt,
                "error": type(exc).__name__, "message": str(exc),
                "output": getattr(exc, "output", "")[-2000:],
            }
        )  # fmt: skip
        log.warning("DFT failed at step %d (attempt %d): %s", step, attempt + 1, exc)
