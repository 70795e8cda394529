"""Production MD with the fine-tuned ensemble frozen (the paper's production runs, method.md 7).

After an on-the-fly run, ``otfparsl md RUN_DIR`` runs MD with the run's final ensemble and no
DFT: several independent runs with their own seeds, each logging at every step the ensemble's
energy std and the confidence the run's final calibration gives it. A step whose confidence is
below the run's level is outside what the run promised (the structure is off the fine-tuned
model's training distribution): a warning line says so when a run enters such a stretch, and
every run's summary counts those steps. Each run's trajectory is analysed by
:mod:`otfparsl.analysis.msd`. No Parsl; the run directory's lock is held throughout.

Layout: ``RUN_DIR/md/NAME_seedS/`` with ``trajectory.extxyz``, ``steps.jsonl``, ``summary.json``;
``RUN_DIR/md/NAME.json`` gathers the runs and their MSD per element.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from otfparsl.analysis.msd import msd_by_element
from otfparsl.data import read_frames
from otfparsl.errors import ConfigurationError
from otfparsl.from_settings import programme
from otfparsl.md import TemperatureProgramme
from otfparsl.run.directory import EventLog, RunDirectory, save_json
from otfparsl.run.final_model import FrozenModel
from otfparsl.run.lock import run_lock
from otfparsl.settings import MDSettings, RunSettings
from otfparsl.structures import read_structure

log = logging.getLogger(__name__)


def starting_structure(rd: RunDirectory, start: str) -> Atoms:
    """``"last"``: the run's last trajectory frame; ``"initial"``: its starting structure; else a file."""
    if start == "last":
        if not rd.trajectory.is_file():
            raise ConfigurationError(f"{rd.trajectory} does not exist; use --start initial or a structure file")
        frame = read_frames(rd.trajectory)[-1]  # the last whole frame
        return Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    if start == "initial":
        return read_structure(rd.path / "structure.extxyz")
    return read_structure(start)


def production_md(
    run_dir: str | Path,
    md: MDSettings,
    seeds: Sequence[int],
    name: str = "production",
    start: str = "last",
    device: str | None = None,
) -> dict:
    """Run one production MD per seed with the frozen ensemble; return the gathered summary.

    Parameters
    ----------
    run_dir
        A run directory with at least one label (its final ensemble and calibration).
    md
        The temperature programme (segments in fs and K) and trajectory interval; ``md.seed``
        is ignored, each run uses its own of ``seeds``.
    seeds
        One independent run per seed (initial velocities and thermostat noise).
    name
        The runs go to ``RUN_DIR/md/NAME_seedS/``.
    start
        ``"last"`` (the run's last frame), ``"initial"`` or a structure file.
    device
        torch device of the ensemble (default: the run's ``model.device``).
    """
    rd = RunDirectory(run_dir)
    if not rd.exists():
        raise ConfigurationError(f"{str(rd.path)!r} holds no run (no run.yaml); give a run directory.")
    level = RunSettings.from_yaml(rd.run_yaml).calibration.confidence
    with run_lock(rd.path, f"otfparsl md {rd.path}"):
        model = FrozenModel.from_run(rd, device)
        atoms = starting_structure(rd, start)
        model.ensemble.adapter.check_atoms(atoms)
        temperatures = programme(md)
        runs = []
        for seed in seeds:
            out = rd.production / f"{name}_seed{seed}"
            runs.append(_one_run(model, atoms.copy(), temperatures, md.trajectory_interval, seed, level, out))
        summary = {"name": name, "start": start, "confidence_level": level, "md": md.model_dump(mode="json"),
                   "runs": runs}  # fmt: skip
        save_json(rd.production / f"{name}.json", summary)
        return summary


def _one_run(
    model: FrozenModel, atoms: Atoms, temperatures: TemperatureProgramme, interval: int, seed: int, level: float, out: Path
) -> dict:
    """One production run into ``out``; return its summary (also written to ``out/summary.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("trajectory.extxyz", "steps.jsonl"):
        (out / stale).unlink(missing_ok=True)
    atoms.calc = model.ensemble
    temperatures.initialize_velocities(atoms, seed)
    watch = _Watch(model, level, seed, out, interval)
    start = time.perf_counter()
    try:
        first_step, start_fs = 0, 0.0
        for index, n_steps in temperatures:
            segment = temperatures.segments[index]
            dyn = temperatures.make_dynamics(atoms, index, seed)
            watch.segment(index, first_step, start_fs, segment.timestep_fs)
            dyn.attach(watch.observe, interval=1, dyn=dyn, atoms=atoms)
            dyn.run(n_steps)
            first_step, start_fs = first_step + n_steps, start_fs + n_steps * segment.timestep_fs
    finally:
        watch.close()
    frames = list(ase.io.read(out / "trajectory.extxyz", index=":", format="extxyz"))
    frame_fs = interval * temperatures.segments[-1].timestep_fs
    summary = {**watch.summary(), "seed": seed, "wall_s": time.perf_counter() - start, "directory": str(out),
               "msd": msd_by_element(frames, frame_fs) if len(frames) > 1 else {}}  # fmt: skip
    save_json(out / "summary.json", summary)
    return summary


class _Watch:
    """Logs every step of one production run and warns when it leaves the trusted region."""

    def __init__(self, model: FrozenModel, level: float, seed: int, out: Path, interval: int) -> None:
        self.model, self.level, self.seed, self.out, self.interval = model, level, seed, out, interval
        self.events = EventLog(out / "steps.jsonl")
        self.step, self.index, self.first_step, self.start_fs, self.dt_fs = -1, 0, 0, 0.0, 0.0
        self.below, self.stretches, self.min_confidence = 0, 0, 1.0
        self._inside = False

    def segment(self, index: int, first_step: int, start_fs: float, timestep_fs: float) -> None:
        """Start segment ``index``: its first global step, start time (fs) and time step (fs)."""
        self.index, self.first_step, self.start_fs, self.dt_fs = index, first_step, start_fs, timestep_fs

    def observe(self, dyn, atoms: Atoms) -> None:
        """Record the current step once (the dynamics also calls this at each segment's start)."""
        step = self.first_step + dyn.nsteps
        if step == self.step:
            return
        self.step = step
        results = self.model.ensemble.results
        confidence = self.model.confidence(results)
        self.min_confidence = min(self.min_confidence, confidence)
        self._check(confidence)
        event = {"step": step, "segment": self.index, "time_fs": self.start_fs + dyn.nsteps * self.dt_fs,
                 "temperature_K": float(atoms.get_temperature()), "energy": float(results["energy"]),
                 "energy_std": float(results["energy_std"]), "max_forces_std": float(np.max(results["forces_std"])),
                 "confidence": confidence}  # fmt: skip
        self.events.write(event)
        if step % self.interval == 0:
            _write_frame(self.out / "trajectory.extxyz", atoms, results, event)

    def _check(self, confidence: float) -> None:
        if confidence >= self.level:
            self._inside = False
            return
        self.below += 1
        if not self._inside:
            self._inside = True
            self.stretches += 1
            log.warning(
                "production MD seed %d, step %d: confidence %.3f is below the run's level %.2f: the "
                "structure is off the fine-tuned model's training distribution; steps here are not "
                "covered by the run's accuracy promise", self.seed, self.step, confidence, self.level,
            )  # fmt: skip

    def summary(self) -> dict:
        """Steps, steps below the confidence level (and their stretches), the lowest confidence."""
        n = self.step + 1
        return {"n_steps": n, "steps_below_level": self.below, "fraction_below_level": self.below / n if n else None,
                "stretches_below_level": self.stretches, "min_confidence": self.min_confidence}  # fmt: skip

    def close(self) -> None:
        """Flush and close the step log."""
        self.events.close()


def _write_frame(path: Path, atoms: Atoms, results: dict, event: dict) -> None:
    frame = atoms.copy()
    frame.calc = SinglePointCalculator(frame, energy=results["energy"], forces=results["forces"],
                                       stress=results.get("stress"))  # fmt: skip
    frame.info.update({k: v for k, v in event.items() if k != "energy"})
    frame.arrays["forces_std"] = np.asarray(results["forces_std"])
    ase.io.write(path, frame, format="extxyz", append=True)


def programme_from_yaml(path: str | Path, base: MDSettings) -> MDSettings:
    """Read an MD programme YAML: a mapping with ``segments`` (as a run YAML's ``md``) and options."""
    import yaml

    from otfparsl.settings import validate_section

    data = yaml.safe_load(Path(path).read_text()) or {}
    if isinstance(data, dict) and "md" in data:
        data = data["md"]
    return validate_section(MDSettings, {**base.model_dump(mode="json"), **data}, f"programme file {str(path)!r}")
