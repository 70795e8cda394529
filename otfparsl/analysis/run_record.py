"""Everything a report shows, read from a run directory's files (no Parsl, no torch).

:func:`read_run` collects the files of a run (``run.yaml``, ``events.jsonl``,
``calibration.json``, ``summary.json``, ``checkpoint.json``, ``audit/audit.json``) into a
:class:`RunRecord`; the functions below derive the numbers the report shows, each with the file
it rests on: the headline counts, the calibration replayed label by label, and the time split.
A run that is still going or was interrupted is read as far as its files go (a line of
``events.jsonl`` cut by a crash is skipped and counted).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otfparsl.analysis.metrics import binomial_interval
from otfparsl.calibration import Calibrator
from otfparsl.errors import ConfigurationError
from otfparsl.run.directory import RunDirectory, read_event_file
from otfparsl.run.final_model import final_calibration
from otfparsl.settings import RunSettings

#: Calibrator fields that are settings (the statistics S, n, ... start from zero in a replay).
_CALIBRATION_SETTINGS = (
    "energy_threshold_eV", "a", "b", "confidence_level", "skip_first_steps", "ema_decay",
)  # fmt: skip


@dataclass(frozen=True)
class RunRecord:
    """The files of one run directory, parsed.

    Attributes
    ----------
    rd
        The run directory.
    settings
        ``run.yaml`` (the fully resolved settings the run was made with).
    steps, labels, updates, failures
        The ``step``, ``label``, ``update`` and ``label_failed`` events of ``events.jsonl``.
    heldout
        Its ``heldout`` events: the in-run held-out checks (otfparsl/learning/heldout.py).
    calibration
        ``calibration.json`` (Gamma prior, S, n, energy offset), or None before the first label.
    summary
        ``summary.json`` (written when a run ends), or None.
    checkpoint
        ``done``, ``wall_s`` and the learner's timers of ``checkpoint.json``, or None.
    audit
        ``audit/audit.json`` (``otfparsl audit``), or None when the run was not audited.
    skipped_lines
        Lines of ``events.jsonl`` that were not valid JSON: 1 when a crash or a full disk cut its
        last line, else 0 (a damaged line before the last one is an error).
    """

    rd: RunDirectory
    settings: RunSettings
    steps: list[dict]
    labels: list[dict]
    updates: list[dict]
    failures: list[dict]
    calibration: dict | None
    summary: dict | None
    checkpoint: dict | None
    audit: dict | None
    skipped_lines: int = 0
    heldout: list[dict] = field(default_factory=list)
    _by_key: dict[tuple[int, int], dict] = field(default_factory=dict, repr=False)

    @property
    def threshold_eV(self) -> float:
        """K, eV (run.yaml)."""
        return float(self.settings.calibration.energy_threshold_eV)

    @property
    def finished(self) -> bool:
        """True when the last checkpoint says the whole temperature programme was run."""
        return bool(self.checkpoint and self.checkpoint.get("done"))

    @property
    def status(self) -> str:
        """One sentence: finished, or how far the files go."""
        if self.finished:
            return "finished (checkpoint.json: done)"
        last = max((s["time_fs"] for s in self.steps), default=0.0)
        return (
            f"not finished: interrupted, failed or still running; the files go up to MD time "
            f"{last:g} fs of {self.programme_duration_fs:g} fs (resume with `otfparsl resume "
            f"{self.rd.path}`)"
        )

    @property
    def programme_duration_fs(self) -> float:
        """Simulated time of the whole temperature programme, fs."""
        return sum(_n_steps(s) * s.timestep_fs for s in self.settings.md.segments)

    def step_event(self, walker: int, step: int) -> dict | None:
        """The step event of ``step`` of ``walker`` (None if the files do not reach it)."""
        return self._by_key.get((walker, step))

    def time_fs(self, walker: int, step: int) -> float:
        """MD time (fs) of ``step`` of ``walker``: its step event, else the programme's clock."""
        if (walker, step) in self._by_key:
            return float(self._by_key[(walker, step)]["time_fs"])
        t, left = 0.0, step
        for segment in self.settings.md.segments:
            n = min(left, _n_steps(segment))
            t, left = t + n * segment.timestep_fs, left - n
        return t + left * self.settings.md.segments[-1].timestep_fs


def read_run(run_dir: str | os.PathLike) -> RunRecord:
    """Read the files of a run directory into a :class:`RunRecord`.

    Raises
    ------
    ConfigurationError
        When ``run_dir`` holds no run (no ``run.yaml`` or no ``events.jsonl``).
    """
    rd = RunDirectory(run_dir)
    if not rd.run_yaml.is_file() or not rd.events.is_file():
        raise ConfigurationError(
            f"{str(rd.path)!r} is not a run directory that has started (it needs run.yaml and "
            "events.jsonl); give the directory of a run made by `otfparsl run`."
        )
    events, skipped = _read_events(rd.events)
    by_kind: dict[str, list[dict]] = {"step": [], "label": [], "update": [], "label_failed": [], "heldout": []}
    for event in events:
        by_kind.setdefault(event.get("event", ""), []).append(event)
    steps = by_kind["step"]
    checkpoint = _read_json(rd.checkpoint)
    return RunRecord(
        rd=rd,
        settings=RunSettings.from_yaml(rd.run_yaml),
        steps=steps,
        labels=by_kind["label"],
        updates=by_kind["update"],
        failures=by_kind["label_failed"],
        calibration=_read_json(rd.calibration),
        summary=_read_json(rd.summary),
        checkpoint=(
            {k: checkpoint.get(k) for k in ("done", "wall_s", "learner")} if checkpoint else None
        ),
        audit=_read_json(rd.audit / "audit.json"),
        skipped_lines=skipped,
        heldout=by_kind["heldout"],
        _by_key={(s["walker"], s["step"]): s for s in steps},
    )


def _read_events(path: Path) -> tuple[list[dict], int]:
    """The events and the number of lines skipped: 1 when a crash cut the last line, else 0."""
    events, torn_at = read_event_file(path)
    return events, int(torn_at is not None)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _n_steps(segment) -> int:
    return int(round(segment.duration_fs / segment.timestep_fs))


@dataclass(frozen=True)
class Headline:
    """The run's own measures of itself, each counted from ``events.jsonl``.

    Attributes
    ----------
    dft_calls
        Label events (DFT labels that entered the training set).
    label_failures
        ``label_failed`` events (attempts that failed; a structure may be retried).
    md_steps
        Step events per walker (the initial force call is step 0).
    md_time_fs
        Last MD time reached per walker, fs.
    checked, above
        Interventions after the first (the first fixes the energy offset, its error is 0 by
        construction) and how many of them had |error| > K.
    above_ci95
        Clopper-Pearson 95 % interval of ``above / checked``.
    counted
        Interventions whose z-score entered the calibration (``counted`` in the label event).
    """

    dft_calls: int
    label_failures: int
    md_steps: dict[int, int]
    md_time_fs: dict[int, float]
    checked: int
    above: int
    above_ci95: tuple[float, float]
    counted: int


def headline(record: RunRecord) -> Headline:
    """Count the headline numbers of a run from its events."""
    checked = record.labels[1:]
    above = sum(bool(lb["exceeds_threshold"]) for lb in checked)
    steps: dict[int, int] = {}
    times: dict[int, float] = {}
    for s in record.steps:
        steps[s["walker"]] = steps.get(s["walker"], 0) + 1
        times[s["walker"]] = max(times.get(s["walker"], 0.0), float(s["time_fs"]))
    return Headline(
        dft_calls=len(record.labels), label_failures=len(record.failures),
        md_steps=dict(sorted(steps.items())), md_time_fs=dict(sorted(times.items())),
        checked=len(checked), above=above, above_ci95=binomial_interval(above, len(checked)),
        counted=sum(bool(lb.get("counted")) for lb in record.labels),
    )  # fmt: skip


@dataclass(frozen=True)
class CalibrationPoint:
    """The calibration right after one label (replayed from the label events).

    Attributes
    ----------
    time_fs
        MD time of the label, fs.
    scale_factor
        ``sqrt((b + S/2)/(a + n/2))``: the predictive scale in units of the ensemble's std.
    dof
        ``2a + n`` of the Student-t.
    n
        Counted interventions so far (effective number with an EMA).
    """

    time_fs: float
    scale_factor: float
    dof: float
    n: float


def replay_calibration(record: RunRecord) -> tuple[list[CalibrationPoint], Calibrator | None]:
    """Replay the calibration label by label, as the run updated it.

    Each label event's prediction (``energy_pred``, ``energy_std``) and offset DFT energy
    (``energy_dft_offset``) are fed to a :class:`~otfparsl.calibration.Calibrator` with the
    run's prior (``calibration.json``), in the order of the events: the same updates the run
    made. Returns one point per label (a first point at t = 0 holds the prior) and the replayed
    calibrator, whose S and n should equal ``calibration.json``'s (None before the first label).
    """
    if record.calibration is None:
        return [], None
    calibrator = Calibrator(**{k: record.calibration[k] for k in _CALIBRATION_SETTINGS})
    points = [CalibrationPoint(0.0, calibrator.scale_factor, calibrator.nu, 0.0)]
    for label in record.labels:
        if not (math.isfinite(label["energy_pred"]) and math.isfinite(label["energy_std"])):
            continue  # a non-finite prediction never entered the statistics
        calibrator.update(label["step"], label["energy_pred"], label["energy_std"], label["energy_dft_offset"])
        time = record.time_fs(label["walker"], label["step"])
        points.append(CalibrationPoint(time, calibrator.scale_factor, calibrator.nu, calibrator.n))
    return points, calibrator


@dataclass(frozen=True)
class TimeSplit:
    """Where the wall time went.

    Attributes
    ----------
    parts_s
        Seconds per part: inference (ensemble predictions), DFT (labels, including retries),
        chain updates, other (MD integration, checkpoints, waiting), in that order.
    wall_s
        Wall time of the run (all sessions of a resumed run).
    basis
        The file the numbers come from.
    walkers
        MD walkers; with more than one the parts are summed over walkers running at once.
    """

    parts_s: dict[str, float]
    wall_s: float
    basis: str
    walkers: int


def time_split(record: RunRecord) -> TimeSplit | None:
    """The time split of ``summary.json`` (a finished run) or else of the last checkpoint."""
    names = {"inference_s": "inference", "label_s": "DFT", "update_s": "chain updates"}
    walkers = record.settings.md.walkers
    source = None
    if record.summary is not None and all(k in record.summary for k in (*names, "wall_s")):
        source = record.summary, "summary.json (written when the run ended)"
    elif record.checkpoint is not None and record.checkpoint.get("learner"):
        timers = {**record.checkpoint["learner"]["timers"], "wall_s": record.checkpoint["wall_s"]}
        source = timers, "checkpoint.json (the last checkpoint; the run did not finish)"
    if source is None:
        return None
    data, basis = source
    parts = {title: float(data[key]) for key, title in names.items()}
    wall = float(data["wall_s"])
    parts["other"] = wall - sum(parts.values())
    return TimeSplit(parts, wall, basis, walkers)


def final_student_t(record: RunRecord) -> tuple[float, float] | None:
    """(scale factor, dof) of the predictive the run ended with (``calibration.json``)."""
    if record.calibration is None:
        return None
    calibrator, _ = final_calibration(record.rd)
    return calibrator.scale_factor, calibrator.nu


def energy_offset_eV(record: RunRecord) -> float | None:
    """c of method.md section 6: offset DFT energy minus raw DFT energy (``calibration.json``)."""
    if record.calibration is None or record.calibration.get("energy_offset_eV") is None:
        return None
    return final_calibration(record.rd)[1]


def resolved_sampler(record: RunRecord) -> dict[str, Any]:
    """SGHMC settings as run: the YAML's, with family defaults read back from the run's files.

    ``step_size`` and ``sigma_tl`` left open in the YAML are the model family's defaults; the
    step size is read from the chain updates' records when there is one.
    """
    bayes = record.settings.bayes
    out: dict[str, Any] = bayes.model_dump()
    used = {c.get("step_size") for u in record.updates for c in u.get("chains", []) if not c.get("n_retries")}
    used.discard(None)
    if out["step_size"] is None and len(used) == 1:
        out["step_size"] = f"{used.pop():g} (family default, from the chain updates)"
    for key in ("step_size", "sigma_tl"):
        if out[key] is None:
            out[key] = _family_default(record.settings.model.family, key)
    return out


def _family_default(family: str, key: str) -> str:
    from otfparsl.models import family_defaults

    try:
        return f"{getattr(family_defaults(family), key):g} (the {family} family's default)"
    except ConfigurationError:
        return "family default (unknown family)"
