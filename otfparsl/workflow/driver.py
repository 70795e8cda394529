"""The on-the-fly run: MD walkers driven by the OnTheFlyCalculator, work submitted by role.

``run(settings, submitter)`` builds the foundation model, the M chain files, the ensemble, the
calibrator and the data set in a run directory, then runs the temperature programme of each
walker. The submitter decides where DFT (`dft`) and chain updates (`chains`) run: thread pools
(:class:`~otfparsl.workflow.submit.ThreadSubmitter`, the default) or a Parsl site
(the :class:`~otfparsl.workflow.site.Site` that ``open_site`` yields). An MD step that needs no DFT never touches
the submitter.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from otfparsl.analysis.metrics import binomial_interval, heldout_figures
from otfparsl.calculators.ensemble import EnsembleCalculator
from otfparsl.calibration import Calibrator
from otfparsl.data import LabelledDataset
from otfparsl.errors import ConfigurationError
from otfparsl.fileio import atomic_write_text
from otfparsl.from_settings import (
    energy_sigma_eV,
    make_calibrator,
    model_spec,
    programme,
    sampler_config,
)
from otfparsl.learning import Learner, LearnerState, Oracle, Posterior
from otfparsl.learning.heldout import HeldOutPlan
from otfparsl.learning.rule import DecisionRule
from otfparsl.models import load_adapter
from otfparsl.preflight import check_labeler_environments, check_run, check_run_dir_writable
from otfparsl.run.chains import chain_path
from otfparsl.run.checkpoint import Checkpointer, LabelCounter, prepare_resume, read_checkpoint
from otfparsl.run.directory import LOCK_NAME, EventLog, RunDirectory, read_events, save_json
from otfparsl.run.guard import (
    check_new_run_dir,
    check_restartable,
    check_run_dir_location,
    foreign_entries,
    move_to_trash,
)
from otfparsl.run.lock import run_lock
from otfparsl.settings import RunSettings
from otfparsl.structures import read_structure, split_frame
from otfparsl.training import init_chain_files
from otfparsl.workflow.jobs import ChainSetup, ChainUpdates, DFTLabels
from otfparsl.workflow.submit import Submitter, ThreadSubmitter
from otfparsl.workflow.walkers import StepInfo, WalkerContext, run_walkers

log = logging.getLogger(__name__)


NOT_AUDITED = "not audited: run `otfparsl audit RUN_DIR` to measure the accuracy on frames the run never labelled"


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
    calibration_counted: int = 0
    heldout_audit: dict | None = None  # what `otfparsl audit` added to summary.json, once made
    heldout_in_run: dict = field(default_factory=dict)  # the run's own held-out checks (heldout_figures)

    def as_dict(self) -> dict:
        """Return the result as a JSON-ready dict."""
        return {
            "run_dir": str(self.run_dir), "n_steps": self.n_steps, "dft_calls": self.dft_calls,
            "label_failures": self.label_failures,
            "interventions_checked": self.interventions_checked,
            "interventions_above_threshold": self.interventions_above_threshold,
            "fraction_above_threshold": self.fraction_above_threshold,
            "fraction_above_threshold_ci95": list(binomial_interval(self.interventions_above_threshold, self.interventions_checked)),
            "calibration_basis": self.calibration_basis,
            "heldout_in_run": self.heldout_in_run,
            "heldout_audit": self.heldout_audit or NOT_AUDITED,
            "wall_s": self.wall_s, **self.timers,
        }  # fmt: skip

    @property
    def calibration_basis(self) -> str:
        """What the claimed confidence rests on: measured errors, or the Gamma prior alone."""
        if self.calibration_counted:
            return f"{self.calibration_counted} counted interventions (measured errors at labelled steps)"
        return ("prior only: no counted intervention, so every confidence the run claimed rests on the "
                "Gamma prior (a, b) and the ensemble std, not on a measured error; audit before trusting it")

    @property
    def interventions_checked(self) -> int:
        """Interventions whose error was measured: all but the first (it fixes the offset)."""
        return max(self.dft_calls - 1, 0)

    @property
    def fraction_above_threshold(self) -> float | None:
        """Fraction of checked interventions with |e| > K; None when there is none."""
        checked = self.interventions_checked
        return self.interventions_above_threshold / checked if checked else None


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
    """Run on-the-fly fine-tuning MD as the settings say; continue the run if one exists.

    Parameters
    ----------
    settings
        The validated run settings.
    submitter
        Where `dft` and `chains` work runs; default: thread pools in this process (the CLI
        uses :func:`~otfparsl.workflow.submit.local_submitter`: chain worker processes).
    run_dir
        Run directory; default ``settings.run_dir`` or ``runs/NAME``.
    restart_from_scratch
        Start over: an existing run in ``run_dir`` is moved to a dated sibling folder
        ``RUN_DIR.trash-YYYYmmdd-HHMMSS`` first (a directory that holds anything but a run is
        refused). Without it an existing run is resumed
        from its last checkpoint (its settings must match, except the labeller's).
    on_step
        Called after every MD step of every walker (progress display).
    structure
        Starting structure (ASE Atoms); default: read ``settings.structure``.
    """
    rd = RunDirectory(Path(run_dir) if run_dir else default_run_dir(settings))
    settings = settings.resolve_paths(Path.cwd())  # a no-op for settings read from a YAML
    check_run_dir_writable(rd.path)  # permissions and free space
    check_run_dir(rd.path, settings, restart_from_scratch, structure_given=structure is not None)
    atoms = check_run(settings, structure)  # every input checked before the directory is touched
    if rd.exists() and not restart_from_scratch:
        check_same_run(rd, settings, atoms)
    with _submitter(submitter) as sub:
        check_labeler_on_workers(settings, atoms, sub)
        with run_lock(rd.path, "run"):  # from the first write on; checked again under the lock
            if rd.exists() and not restart_from_scratch:
                check_same_run(rd, settings, atoms)
                atomic_write_text(rd.run_yaml, settings.to_yaml())  # the labeller may have changed
                state = read_checkpoint(rd)
                if state is not None and state["done"]:
                    return _summarise_done(rd, state)
                return _continue(rd, RunSettings.from_yaml(rd.run_yaml), sub, atoms, on_step, state)
            check_run_dir(rd.path, settings, restart_from_scratch, structure_given=structure is not None)
            if restart_from_scratch:
                move_to_trash(rd.path)
            _make_run_dir(rd)
            atomic_write_text(rd.run_yaml, settings.to_yaml())
            atomic_write_text(rd.path / "structure.extxyz", _extxyz(atoms))
            return _run(settings, sub, rd, atoms, on_step, checkpoint=None)


def check_run_dir(
    run_dir: Path, settings: RunSettings, restart_from_scratch: bool, run_yaml: Path | None = None,
    structure_given: bool = False,
) -> None:  # fmt: skip
    """Refuse a run directory where a run would mix with, or clear, the user's other files.

    The run directory may not be (or contain) the current directory, the run YAML or the
    structure file; a new run needs a new, empty or run-only directory; ``--restart-from-scratch``
    needs a directory that holds a run (:mod:`otfparsl.run.guard`).
    """
    structure = [] if structure_given else [split_frame(settings.structure)[0]]
    check_run_dir_location(run_dir, [Path.cwd(), *([run_yaml] if run_yaml else []), *structure])
    if restart_from_scratch:
        check_restartable(run_dir)
    elif not RunDirectory(run_dir).exists():
        check_new_run_dir(run_dir)


def resume(
    run_dir: str | Path,
    submitter: Submitter | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    structure: Atoms | None = None,
) -> RunResult:
    """Continue a run from its last checkpoint (``otfparsl resume RUN_DIR``).

    With one walker the continuation is the uninterrupted run, bit for bit, on the same
    hardware and thread counts (README, "When things go wrong"). A run killed before its first
    checkpoint starts again from the beginning, reusing every DFT label already finished.
    The run directory's lock is held from the checkpoint's reading on.
    """
    rd = RunDirectory(Path(run_dir))
    if not rd.exists():
        raise ConfigurationError(f"{str(rd.path)!r} holds no run (no run.yaml); start one with `otfparsl run RUN.yaml`.")
    settings = RunSettings.from_yaml(rd.run_yaml)
    atoms = structure if structure is not None else _starting_structure(rd, settings)
    atoms = check_run(settings, atoms)
    with run_lock(rd.path, "resume"):
        state = read_checkpoint(rd)
        if state is not None and state["done"]:
            return _summarise_done(rd, state)  # no thread pools, no DFT environment needed
        with _submitter(submitter) as sub:
            check_labeler_on_workers(settings, atoms, sub)
            return _continue(rd, settings, sub, atoms, on_step, state)


def _continue(
    rd: RunDirectory,
    settings: RunSettings,
    submitter: Submitter,
    atoms: Atoms,
    on_step: Callable[[StepInfo], None] | None,
    state: dict | None,
) -> RunResult:
    """Continue the run in ``rd`` from checkpoint ``state`` (lock held, labeller checked).

    Without a checkpoint (``state`` None) the run starts over, keeping the finished DFT labels.
    """
    if state is None:
        _clear_partial_run(rd)
    return _run(settings, submitter, rd, atoms, on_step, checkpoint=state)


@contextlib.contextmanager
def _submitter(submitter: Submitter | None) -> Iterator[Submitter]:
    if submitter is not None:
        yield submitter
        return
    with ThreadSubmitter() as local:
        yield local


def check_same_run(rd: RunDirectory, settings: RunSettings, atoms: Atoms | None = None) -> None:
    """Refuse to continue the run in ``rd`` with other settings (the labeller's may change).

    The starting structure is compared by its atoms (the run's ``structure.extxyz`` against
    ``atoms``, default: read ``settings.structure``), not by its path, so a project moved or
    copied to another machine continues its runs.
    """
    try:
        saved = RunSettings.from_yaml(rd.run_yaml).model_dump(mode="json")
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"run directory {str(rd.path)!r} already holds a run.yaml that otfparsl cannot resume "
            f"({exc}); choose another --run-dir or start over with --restart-from-scratch"
        ) from None
    new = settings.model_dump(mode="json")
    ignored = ("labeler", "run_dir", "name", "structure")
    changed = [k for k in new if k not in ignored and new[k] != saved.get(k)]
    if not _same_structure(rd, settings, atoms):
        changed.insert(0, "structure")
    if changed:
        raise ConfigurationError(
            f"run directory {str(rd.path)!r} holds a run with other settings ({', '.join(changed)} "
            "differ); resume it with `otfparsl resume`, start over with --restart-from-scratch or "
            "choose another --run-dir"
        )


def _same_structure(rd: RunDirectory, settings: RunSettings, atoms: Atoms | None) -> bool:
    saved = rd.path / "structure.extxyz"
    if not saved.is_file():  # killed before it was written: the run starts over anyway
        return True
    if atoms is None:
        try:
            atoms = read_structure(settings.structure)
        except ConfigurationError:
            return False
    mine = read_structure(saved)
    return (
        mine.get_chemical_symbols() == atoms.get_chemical_symbols()
        and np.allclose(mine.positions, atoms.positions, atol=1e-8)
        and np.allclose(mine.cell.array, atoms.cell.array, atol=1e-8)
        and bool((mine.pbc == atoms.pbc).all())
    )


def _starting_structure(rd: RunDirectory, settings: RunSettings) -> Atoms:
    saved = rd.path / "structure.extxyz"
    return read_structure(saved) if saved.is_file() else read_structure(settings.structure)


def _extxyz(atoms: Atoms) -> str:
    import io

    import ase.io

    buffer = io.StringIO()
    ase.io.write(buffer, atoms, format="extxyz")
    return buffer.getvalue()


def check_labeler_on_workers(settings: RunSettings, atoms: Atoms, submitter: Submitter) -> None:
    """Check the DFT code's environment where DFT runs (the `dft` role), before the run starts."""
    symbols = sorted(set(atoms.get_chemical_symbols()))
    submitter.submit("dft", check_labeler_environments, settings.labeler, symbols).result()


def _make_run_dir(rd: RunDirectory) -> None:
    for sub in (rd.path, rd.chains, rd.dft):
        sub.mkdir(parents=True, exist_ok=True)


def _clear_partial_run(rd: RunDirectory) -> None:
    """Remove what a run killed before its first checkpoint wrote, but its DFT labels.

    Only the files a run writes are removed (never a file the user put there); the settings,
    the starting structure, finished DFT labels and Parsl's runinfo/ stay.
    """
    keep = {"runinfo", "dft", "run.yaml", "structure.extxyz", LOCK_NAME}
    foreign = set(foreign_entries(rd.path))
    for child in rd.path.iterdir():
        if child.name in keep or child.name in foreign or f"{child.name}/" in foreign:
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    _make_run_dir(rd)


def _run(
    settings: RunSettings,
    submitter: Submitter,
    rd: RunDirectory,
    atoms: Atoms,
    on_step: Callable[[StepInfo], None] | None,
    checkpoint: dict | None,
) -> RunResult:
    adapter = load_adapter(model_spec(settings.model))
    chain_paths = _chain_files(settings, rd, adapter, checkpoint)
    energy_sigma = energy_sigma_eV(settings.calibration)
    ensemble = EnsembleCalculator.from_chain_files(
        adapter, chain_paths, energy_sigma, variance_ddof=settings.bayes.variance_ddof
    )
    calibrator = Calibrator.from_dict(checkpoint["calibration"]) if checkpoint else make_calibrator(settings, adapter.defaults)
    events = EventLog(rd.events)
    counter = LabelCounter(checkpoint["label_counter"] if checkpoint else 0)
    rule = DecisionRule(calibrator)
    journal = RunEvents(events, rd, rule)
    setup = ChainSetup(model_spec(settings.model, device=settings.model.chain_device), energy_sigma,
                       settings.bayes.divergence_retries)  # fmt: skip
    learner = Learner(
        Posterior(ensemble, ChainUpdates(submitter, rd, chain_paths, setup)),
        rule,
        Oracle(DFTLabels(submitter, rd, settings.labeler, counter), settings.labeler.n_retries,
               settings.labeler.max_consecutive_failures, journal),
        LabelledDataset(rd.labels),
        journal,
        heldout=(_heldout_plan(settings), LabelledDataset(rd.heldout)),
    )  # fmt: skip
    if checkpoint is not None:
        learner.restore(LearnerState(**checkpoint["learner"]))
        events.write({"event": "resume", "step": [w["step"] for w in checkpoint["walkers"]], "generation": learner.generation})
    checkpointer = Checkpointer(rd, learner, events, counter, settings.md.checkpoint_interval, previous=checkpoint)
    try:
        ctx = WalkerContext(programme(settings.md), settings, learner, rd, events.write, on_step, checkpointer)
        n_steps = run_walkers(ctx, atoms, {w["walker"]: w for w in checkpoint["walkers"]} if checkpoint else None)
        checkpointer.commit(done=True)
    finally:
        events.close()
    result = _summarise(rd, learner.timers, n_steps, checkpointer.wall_s)
    save_json(rd.summary, result.as_dict())
    return result


def _heldout_plan(settings: RunSettings) -> HeldOutPlan:
    """The in-run held-out checks: ``heldout.labels`` per walker (at most ``max_fraction`` of its steps)."""
    total = programme(settings.md).total_steps
    return HeldOutPlan(settings.heldout.n_checks(total), total, settings.md.seed)


def _chain_files(settings: RunSettings, rd: RunDirectory, adapter, checkpoint: dict | None) -> list[Path]:
    """New chain files for a new run; the checkpoint's generation of them for a resumed one."""
    if checkpoint is None:
        sigma_tl = settings.bayes.sigma_tl or adapter.defaults.sigma_tl
        config = sampler_config(settings.bayes, adapter.defaults)
        return init_chain_files(adapter, rd.chains, settings.bayes.n_chains, settings.bayes.seed, config, sigma_tl)
    paths = [chain_path(rd.chains, k) for k in range(settings.bayes.n_chains)]
    prepare_resume(rd, checkpoint, paths)
    return paths


@dataclass
class RunEvents:
    """The learner's event sink: ``events.jsonl``, and ``calibration.json`` after every label."""

    log: EventLog
    rd: RunDirectory
    rule: DecisionRule

    def __call__(self, event: dict) -> None:
        """Write ``event``; refresh the calibration file when it is a label."""
        self.log.write(event)
        if event["event"] == "label":
            save_json(self.rd.calibration, self.rule.state())


def _summarise(rd: RunDirectory, timers: dict[str, float], n_steps: int, wall_s: float) -> RunResult:
    events = read_events(rd.events)
    labels = [e for e in events if e["event"] == "label"]
    above = sum(bool(e["exceeds_threshold"]) for e in labels)  # the first label has error 0
    timers = dict(timers)
    timers["md_other_s"] = wall_s - sum(timers.values())
    calibration = RunSettings.from_yaml(rd.run_yaml).calibration
    checks = heldout_figures([e for e in events if e["event"] == "heldout"], calibration.energy_threshold_eV,
                             calibration.confidence)  # fmt: skip
    return RunResult(
        run_dir=rd.path, n_steps=n_steps, dft_calls=len(labels),
        label_failures=sum(e["event"] == "label_failed" for e in events),
        interventions_above_threshold=int(above), wall_s=wall_s, timers=timers,
        calibration_counted=sum(bool(e.get("counted")) for e in labels), heldout_in_run=checks,
    )  # fmt: skip


def _summarise_done(rd: RunDirectory, state: dict) -> RunResult:
    log.warning("run %s is already complete; nothing to resume", rd.path)
    n_steps = sum(int(w["calc"]["step_count"]) for w in state["walkers"])
    result = _summarise(rd, state["learner"]["timers"], n_steps, state["wall_s"])
    result.heldout_audit = _recorded_audit(rd)  # running the same command again loses nothing
    save_json(rd.summary, result.as_dict())
    return result


def _recorded_audit(rd: RunDirectory) -> dict | None:
    """The held-out audit that ``summary.json`` already holds (``otfparsl audit`` wrote it)."""
    try:
        audit = json.loads(rd.summary.read_text()).get("heldout_audit")
    except (OSError, ValueError):
        return None
    return audit if isinstance(audit, dict) else None
