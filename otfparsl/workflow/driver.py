"""The on-the-fly run: MD walkers driven by the OnTheFlyCalculator, work submitted by role.

``run(settings, submitter)`` builds the foundation model, the M chain files, the ensemble, the
calibrator and the data set in a run directory, then runs the temperature programme of each
walker. The submitter decides where DFT (`dft`) and chain updates (`chains`) run: thread pools
(:class:`~otfparsl.workflow.submit.ThreadSubmitter`, the default) or a Parsl site
(the :class:`~otfparsl.workflow.site.Site` that ``open_site`` yields). An MD step that needs no DFT never touches
the submitter.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ase import Atoms

from otfparsl.bayes.sghmc import SGHMCConfig
from otfparsl.calculators.ensemble import EnsembleCalculator
from otfparsl.calculators.otf import Learner
from otfparsl.calibration import Calibrator
from otfparsl.data import LabelledDataset
from otfparsl.errors import ConfigurationError
from otfparsl.fileio import atomic_write_text
from otfparsl.models import load_adapter
from otfparsl.models.base import FamilyDefaults, ModelAdapter, ModelSpec
from otfparsl.settings import BayesSettings, ModelSettings, RunSettings
from otfparsl.structures import read_structure
from otfparsl.training import ChainJob, init_chain_files, load_samples
from otfparsl.workflow.state import EventLog, RunDirectory, save_json
from otfparsl.workflow.submit import Submitter, ThreadSubmitter, gather
from otfparsl.workflow.tasks import label_structure, update_chain
from otfparsl.workflow.walkers import StepInfo, run_walkers

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run reports (also written to ``summary.json``)."""

    run_dir: Path
    n_steps: int
    dft_calls: int
    label_failures: int
    interventions_above_threshold: int
    wall_s: float
    timers: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Return the result as a JSON-ready dict."""
        return {
            "run_dir": str(self.run_dir), "n_steps": self.n_steps, "dft_calls": self.dft_calls,
            "label_failures": self.label_failures,
            "interventions_above_threshold": self.interventions_above_threshold,
            "fraction_above_threshold": self.fraction_above_threshold, "wall_s": self.wall_s,
            **self.timers,
        }  # fmt: skip

    @property
    def fraction_above_threshold(self) -> float:
        """Fraction of interventions (after the first, which fixes the offset) with |e| > K."""
        counted = max(self.dft_calls - 1, 0)
        return self.interventions_above_threshold / counted if counted else 0.0


def model_spec(model: ModelSettings, device: str | None = None) -> ModelSpec:
    """Turn the model settings into a :class:`ModelSpec` (on ``device``, default the settings')."""
    return ModelSpec(
        family=model.family,
        source=model.source,
        dtype=model.dtype,
        device=device or model.device,
        seed=model.seed,
    )


def sampler_config(bayes: BayesSettings, defaults: FamilyDefaults) -> SGHMCConfig:
    """Build the SGHMC settings from the run settings and the family's published defaults."""
    return SGHMCConfig(
        n_steps=bayes.n_steps,
        batch_size=bayes.batch_size,
        step_size=bayes.step_size or defaults.step_size,
        noise_off_steps=bayes.noise_off_steps,
        noise_ramp_steps=bayes.noise_ramp_steps,
        priority=bayes.priority,
    )


def make_calibrator(settings: RunSettings, defaults: FamilyDefaults) -> Calibrator:
    """Build the calibrator from the settings (Gamma prior defaults from the model family)."""
    cal = settings.calibration
    return Calibrator(
        energy_threshold_eV=cal.energy_threshold_eV,
        a=cal.gamma_shape or defaults.calibration_a,
        b=cal.gamma_rate or defaults.calibration_b,
        confidence_level=cal.confidence,
        skip_first=cal.skip_first,
        ema_decay=cal.ema_decay,
        force_threshold_eV_per_A=cal.force_threshold_eV_per_A,
    )


def default_run_dir(settings: RunSettings) -> Path:
    """``settings.run_dir`` or ``runs/NAME`` in the current directory."""
    return Path(settings.run_dir) if settings.run_dir else Path("runs") / settings.name


def run(
    settings: RunSettings,
    submitter: Submitter | None = None,
    run_dir: str | Path | None = None,
    restart_from_scratch: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    structure: Atoms | None = None,
) -> RunResult:
    """Run on-the-fly fine-tuning MD as the settings say.

    Parameters
    ----------
    settings
        The validated run settings.
    submitter
        Where `dft` and `chains` work runs; default: thread pools in this process.
    run_dir
        Run directory; default ``settings.run_dir`` or ``runs/NAME``.
    restart_from_scratch
        Delete an existing run directory first (otherwise an existing run is an error).
    on_step
        Called after every MD step of every walker (progress display).
    structure
        Starting structure (ASE Atoms); default: read ``settings.structure``.
    """
    rd = _prepare_run_dir(Path(run_dir) if run_dir else default_run_dir(settings), restart_from_scratch)
    atoms = structure.copy() if structure is not None else read_structure(settings.structure)
    adapter = load_adapter(model_spec(settings.model))
    adapter.check_atoms(atoms)
    atomic_write_text(rd.run_yaml, settings.to_yaml())
    if submitter is None:
        with ThreadSubmitter() as local:
            return _run(settings, local, rd, adapter, atoms, on_step)
    return _run(settings, submitter, rd, adapter, atoms, on_step)


def _prepare_run_dir(path: Path, restart_from_scratch: bool) -> RunDirectory:
    rd = RunDirectory(path)
    if rd.exists() and not restart_from_scratch:
        raise ConfigurationError(
            f"run directory {str(path)!r} already holds a run; start over with "
            "--restart-from-scratch or choose another --run-dir (resuming is not implemented yet)"
        )
    if path.exists() and restart_from_scratch:
        for child in path.iterdir():  # keep Parsl's runinfo/: a site may already be running
            if child.name == "runinfo":
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    for sub in (rd.path, rd.chains, rd.dft):
        sub.mkdir(parents=True, exist_ok=True)
    return rd


def _run(
    settings: RunSettings,
    submitter: Submitter,
    rd: RunDirectory,
    adapter: ModelAdapter,
    atoms: Atoms,
    on_step: Callable[[StepInfo], None] | None,
) -> RunResult:
    start = time.perf_counter()
    defaults = adapter.defaults
    sigma_tl = settings.bayes.sigma_tl or defaults.sigma_tl
    chain_paths = init_chain_files(
        adapter, rd.chains, settings.bayes.n_chains, settings.bayes.seed,
        sampler_config(settings.bayes, defaults), sigma_tl,
    )  # fmt: skip
    energy_sigma = 0.1 * settings.calibration.energy_threshold_eV
    ensemble = EnsembleCalculator.from_chain_files(
        adapter, chain_paths, energy_sigma, variance_ddof=settings.bayes.variance_ddof
    )
    calibrator = make_calibrator(settings, defaults)
    events = EventLog(rd.events)
    learner = _make_learner(settings, submitter, rd, ensemble, calibrator, events, chain_paths)
    try:
        n_steps = run_walkers(settings, atoms, learner, rd, events.write, on_step)
    finally:
        events.close()
    result = _summarise(rd, learner, n_steps, time.perf_counter() - start)
    save_json(rd.summary, result.as_dict())
    return result


def _make_learner(settings, submitter, rd, ensemble, calibrator, events, chain_paths) -> Learner:
    counter = itertools.count()
    lock = threading.Lock()
    spec = model_spec(settings.model, device=settings.model.chain_device)
    labeler = settings.labeler

    def label(atoms: Atoms):
        with lock:
            workdir = rd.dft / f"label_{next(counter):05d}"
        return submitter.submit("dft", label_structure, atoms, labeler.kind, dict(labeler.options), str(workdir))

    def update(n_labels: int):
        jobs = [
            ChainJob(
                index=k, chain_path=str(path), labels_path=str(rd.labels), n_labels=n_labels,
                model=spec, energy_offset_eV=learner.energy_offset_eV,
                energy_sigma_eV=ensemble.energy_sigma_eV,
            )  # fmt: skip
            for k, path in enumerate(chain_paths)
        ]
        return gather([submitter.submit("chains", update_chain, job) for job in jobs])

    def on_event(event: dict) -> None:
        events.write(event)
        if event["event"] == "label":
            state = {**calibrator.to_dict(), "energy_offset_eV": learner.energy_offset_eV}
            save_json(rd.calibration, state)

    learner = Learner(
        ensemble, calibrator, LabelledDataset(rd.labels), label, update,
        lambda: load_samples(chain_paths), on_event,
        label_retries=labeler.retries, max_consecutive_failures=labeler.max_consecutive_failures,
    )  # fmt: skip
    return learner


def _summarise(rd: RunDirectory, learner: Learner, n_steps: int, wall_s: float) -> RunResult:
    from otfparsl.workflow.state import read_events

    events = read_events(rd.events)
    labels = [e for e in events if e["event"] == "label"]
    above = sum(bool(e["exceeds_threshold"]) for e in labels)  # the first label has error 0
    timers = learner.timers.as_dict()
    timers["md_other_s"] = wall_s - sum(timers.values())
    return RunResult(
        run_dir=rd.path, n_steps=n_steps, dft_calls=len(labels),
        label_failures=sum(e["event"] == "label_failed" for e in events),
        interventions_above_threshold=int(above), wall_s=wall_s, timers=timers,
    )  # fmt: skip
