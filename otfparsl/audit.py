"""The audit of a run: how accurate its MD really was, measured against DFT on held-out frames.

``otfparsl audit RUN_DIR`` draws frames of the run's trajectory that were never labelled,
labels them with the run's own labeller (through the ``dft`` role, so on a cluster they run
where the run's DFT ran), and compares three predictions with DFT (plus the run's energy
offset) on each:

- ``recorded``: what the ensemble predicted at that MD step during the run (mean, std and the
  calibrated Student-t the decision used), read from the trajectory: the claim the run made;
- ``final``: the fine-tuned ensemble at the end of the run, with the final calibration;
- ``pretrained``: the foundation model before any fine-tuning (no uncertainty).

Audit labels never enter the training set: they live in ``RUN_DIR/audit/`` only. Each DFT
label is cached in its working directory (``label.json``), so an interrupted audit resumes.
This module does not import Parsl: labelling is an injected callable returning a future.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms

from otfparsl.analysis.metrics import audit_verdict, error_metrics, uncertainty_metrics
from otfparsl.calculators.ensemble import EnsembleCalculator
from otfparsl.calibration import Calibrator
from otfparsl.data import read_frames
from otfparsl.errors import ConfigurationError
from otfparsl.fileio import atomic_write_text
from otfparsl.run.directory import RunDirectory, read_events
from otfparsl.run.final_model import final_calibration
from otfparsl.run.label_cache import label_key, load_label
from otfparsl.run.lock import run_lock
from otfparsl.settings import RunSettings

log = logging.getLogger(__name__)

#: ``label(atoms, workdir) -> Future[Atoms]``: the raw DFT-labelled copy of ``atoms``.
LabelFn = Callable[[Atoms, str], Future]

PREDICTORS = ("recorded", "final", "pretrained")


@dataclass(frozen=True)
class HeldOutFrame:
    """One trajectory frame the run never labelled, with what the run claimed there."""

    walker: int
    step: int
    time_fs: float
    atoms: Atoms

    @property
    def name(self) -> str:
        """Name of its DFT working directory under ``audit/``."""
        return f"label_w{self.walker}_s{self.step:07d}"


def select_frames(rd: RunDirectory, n_frames: int, seed: int) -> list[HeldOutFrame]:
    """Draw up to ``n_frames`` unlabelled trajectory frames, spread over the run.

    The candidates (every written frame whose step was not an intervention, over all walkers,
    in time order) are cut into ``n_frames`` consecutive groups of equal size and one frame is
    drawn from each with ``numpy.random.default_rng(seed)``.
    """
    if n_frames < 1:
        raise ConfigurationError(f"--frames must be >= 1; got {n_frames}.")
    # trained on (label), or already checked while the run ran (heldout): DFT goes to new frames
    labelled = {(e["walker"], e["step"]) for e in read_events(rd.events) if e["event"] in ("label", "heldout")}
    candidates = []
    for path in sorted(rd.path.glob("trajectory*.extxyz")):
        for atoms in read_frames(path):  # a torn last frame (a crash) is left out
            key = (int(atoms.info["walker"]), int(atoms.info["step"]))
            if not atoms.info["intervened"] and key not in labelled:
                candidates.append(HeldOutFrame(*key, float(atoms.info["time_fs"]), atoms))
    if not candidates:
        raise ConfigurationError(
            f"{str(rd.path)!r} has no unlabelled trajectory frames to audit: every written frame was "
            "a DFT step (lower md.trajectory_interval, or run longer)."
        )
    candidates.sort(key=lambda f: (f.time_fs, f.walker))
    if len(candidates) < n_frames:
        log.warning("only %d unlabelled frames in the trajectory; auditing all of them", len(candidates))
    rng = np.random.default_rng(seed)
    groups = np.array_split(np.arange(len(candidates)), min(n_frames, len(candidates)))
    return [candidates[int(rng.choice(group))] for group in groups]


def label_frames(
    frames: list[HeldOutFrame], settings: RunSettings, label: LabelFn, root: Path
) -> list[Atoms]:
    """Label every frame (cached ones are read back), all submitted before any is awaited."""
    kind, options = settings.labeler.kind, settings.labeler.attempt_options(0)
    pending: list[Atoms | Future] = []
    for frame in frames:
        workdir = root / frame.name
        atoms = _bare(frame.atoms)
        cached = load_label(workdir, atoms, label_key(atoms, kind, options))
        pending.append(cached if cached is not None else label(atoms, str(workdir)))
    n_new = sum(isinstance(p, Future) for p in pending)
    log.info("audit: %d DFT labels to compute, %d cached", n_new, len(frames) - n_new)
    return [p.result() if isinstance(p, Future) else p for p in pending]


def audit_run(
    run_dir: str | os.PathLike,
    label: LabelFn,
    n_frames: int = 20,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Audit a run against DFT on held-out frames; write ``audit/``; return ``audit.json``'s content.

    Parameters
    ----------
    run_dir
        A finished (or stopped) run directory.
    label
        ``label(atoms, workdir) -> Future[Atoms]`` with the run's own labeller (the CLI sends it
        to the ``dft`` role of a site); it must write ``workdir/label.json`` (as
        :func:`otfparsl.workflow.tasks.label_structure` does) for the audit to resume.
    n_frames
        Held-out frames to draw (fewer if the trajectory has fewer unlabelled frames).
    seed
        Seed of the frame selection.
    device
        torch device of the ensembles (default: the run's).
    """
    rd = RunDirectory(run_dir)
    if not rd.exists():
        raise ConfigurationError(f"{str(rd.path)!r} holds no run (no run.yaml); give a run directory.")
    settings = RunSettings.from_yaml(rd.run_yaml)
    with run_lock(rd.path, "audit"):
        calibrator, offset = final_calibration(rd)
        threshold = settings.calibration.energy_threshold_eV
        frames = select_frames(rd, n_frames, seed)
        root = rd.audit
        root.mkdir(exist_ok=True)
        labelled = label_frames(frames, settings, label, root)
        final = EnsembleCalculator.from_run(rd.path, device=device)
        pretrained = _pretrained_ensemble(final)
        rows = [
            _frame_row(f, dft, offset, final, pretrained, calibrator)
            for f, dft in zip(frames, labelled, strict=True)
        ]
        result = {
            "run_dir": str(rd.path), "threshold_eV": threshold,
            "confidence_level": settings.calibration.confidence, "energy_offset_eV": offset,
            "n_frames_requested": n_frames, "seed": seed, "labeler": settings.labeler.kind,
            "predictions": {name: _summary(rows, name, threshold) for name in PREDICTORS},
            "frames": rows,
        }  # fmt: skip
        _write_labels(root / "labels.extxyz", frames, labelled, rows)
        atomic_write_text(root / "audit.json", json.dumps(result, indent=2))
        _add_to_summary(rd, result["predictions"]["recorded"], result["confidence_level"])
        return result


def read_audit(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Return the content of ``RUN_DIR/audit/audit.json``, or None if the run was not audited."""
    path = RunDirectory(run_dir).audit / "audit.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _add_to_summary(rd: RunDirectory, recorded: dict[str, Any], confidence_level: float) -> None:
    """Put the held-out figures into ``summary.json`` next to the run's own (if it has one)."""
    if not rd.summary.is_file():
        return
    summary = json.loads(rd.summary.read_text())
    summary["heldout_audit"] = {
        "frames": recorded["n_frames"], "above_threshold": recorded["n_above_threshold"],
        "fraction_above_threshold": recorded["fraction_above_threshold"],
        "fraction_above_threshold_ci95": recorded["fraction_above_threshold_ci95"],
        "rms_z_calibrated": recorded["rms_z_calibrated"], "energy_rmse_eV": recorded["energy_rmse_eV"],
        "verdict": audit_verdict(recorded, confidence_level).sentence(),
    }  # fmt: skip
    atomic_write_text(rd.summary, json.dumps(summary, indent=2))


def _bare(atoms: Atoms) -> Atoms:
    """The structure only (numbers, positions, cell, pbc): what DFT sees."""
    return Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


def _pretrained_ensemble(final: EnsembleCalculator) -> EnsembleCalculator:
    """The foundation model alone: one member with the pretrained weights (and a zero head)."""
    from otfparsl.training import build_bayesian_model

    pretrained = build_bayesian_model(final.adapter).trainable_state()
    return EnsembleCalculator(final.adapter, [pretrained], final.energy_sigma_eV)


def _claim(atoms: Atoms) -> tuple[float, float]:
    """The calibrated Student-t (scale, dof) the run's decision used at this frame's step."""
    info = atoms.info
    if "energy_scale_eV" in info and math.isfinite(float(info["energy_scale_eV"])):
        return float(info["energy_scale_eV"]), float(info["dof"])
    raise ConfigurationError(
        "the trajectory does not record the calibrated predictive (energy_scale_eV, dof): the run "
        "was made by an older otfparsl. Audit a run made by this version."
    )


def _frame_row(frame, dft, offset, final, pretrained, calibrator: Calibrator) -> dict[str, Any]:
    reference = float(dft.get_potential_energy()) + offset
    ref_forces = np.asarray(dft.get_forces(), dtype=float)
    atoms = frame.atoms
    scale, dof = _claim(atoms)
    recorded = {
        "energy": float(atoms.get_potential_energy()), "energy_std": float(atoms.info["energy_std"]),
        "energy_scale_eV": scale, "dof": dof, "confidence": float(atoms.info["confidence"]),
        "forces_error": (np.asarray(atoms.get_forces()) - ref_forces),
    }  # fmt: skip
    now = _predict(final, atoms)
    fine = {
        "energy": now["energy"], "energy_std": now["energy_std"],
        "energy_scale_eV": now["energy_std"] * calibrator.scale_factor, "dof": calibrator.nu,
        "confidence": calibrator.energy_confidence(now["energy_std"]),
        "forces_error": now["forces"] - ref_forces,
    }  # fmt: skip
    base = _predict(pretrained, atoms)
    before = {"energy": base["energy"], "forces_error": base["forces"] - ref_forces}
    row: dict[str, Any] = {
        "walker": frame.walker, "step": frame.step, "time_fs": frame.time_fs,
        "energy_dft_offset": reference, "dft_seconds": dft.info.get("label_seconds"),
    }  # fmt: skip
    for name, pred in zip(PREDICTORS, (recorded, fine, before), strict=True):
        forces_error = pred.pop("forces_error")
        row[name] = {
            **pred, "error_eV": pred["energy"] - reference,
            "forces_rmse_eV_per_A": float(np.sqrt(np.mean(forces_error**2))),
            "forces_mae_eV_per_A": float(np.mean(np.abs(forces_error))),
            "forces_sq_sum": float(np.sum(forces_error**2)), "forces_abs_sum": float(np.sum(np.abs(forces_error))),
            "n_force_components": int(forces_error.size),
        }  # fmt: skip
    return row


def _predict(ensemble: EnsembleCalculator, atoms: Atoms) -> dict[str, Any]:
    ensemble.calculate(_bare(atoms), ("energy", "forces"))
    res = ensemble.results
    return {"energy": float(res["energy"]), "energy_std": float(res["energy_std"]),
            "forces": np.asarray(res["forces"], dtype=float)}  # fmt: skip


def _summary(rows: list[dict[str, Any]], name: str, threshold: float) -> dict[str, Any]:
    preds = [row[name] for row in rows]
    errors = np.array([p["error_eV"] for p in preds])
    n_comp = sum(p["n_force_components"] for p in preds)
    out = {
        **error_metrics(errors, threshold),
        "forces_rmse_eV_per_A": math.sqrt(sum(p["forces_sq_sum"] for p in preds) / n_comp),
        "forces_mae_eV_per_A": sum(p["forces_abs_sum"] for p in preds) / n_comp,
    }
    if "energy_std" in preds[0]:
        out.update(
            uncertainty_metrics(
                errors, np.array([p["energy_std"] for p in preds]),
                np.array([p["energy_scale_eV"] for p in preds]), np.array([p["dof"] for p in preds]),
                threshold,
            )
        )  # fmt: skip
    return out


def _write_labels(path: Path, frames, labelled, rows) -> None:
    import io

    from ase.calculators.singlepoint import SinglePointCalculator

    buffer = io.StringIO()
    for frame, dft, row in zip(frames, labelled, rows, strict=True):
        out = _bare(frame.atoms)
        out.calc = SinglePointCalculator(out, energy=dft.get_potential_energy(), forces=dft.get_forces())
        out.info.update(walker=frame.walker, step=frame.step, time_fs=frame.time_fs,
                        energy_dft_offset=row["energy_dft_offset"])  # fmt: skip
        for name in PREDICTORS:
            out.info[f"{name}_energy"] = row[name]["energy"]
            if "energy_std" in row[name]:
                out.info[f"{name}_energy_std"] = row[name]["energy_std"]
        ase.io.write(buffer, out, format="extxyz")
    atomic_write_text(path, buffer.getvalue())


__all__ = ["PREDICTORS", "HeldOutFrame", "audit_run", "read_audit", "select_frames"]
