"""MD walkers: each runs the temperature programme with its own OnTheFlyCalculator.

Several walkers (replicas with other seeds or temperatures) share one Learner: a walker waiting
for DFT blocks only its own thread, the others keep stepping with the ensemble.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from otfparsl.calculators.otf import Learner, OnTheFlyCalculator
from otfparsl.md import Segment, TemperatureProgramme
from otfparsl.settings import MDSettings, RunSettings
from otfparsl.workflow.state import RunDirectory

#: Seed stride between walkers (walker w uses seed + w * WALKER_SEED_STRIDE).
WALKER_SEED_STRIDE = 7919


@dataclass(frozen=True)
class StepInfo:
    """One MD step of one walker, as logged in ``events.jsonl``."""

    walker: int
    step: int
    segment: int
    time_fs: float
    temperature_K: float
    energy: float
    energy_std: float
    confidence: float
    intervened: bool
    generation: int
    n_labels: int


def programme_from_settings(md: MDSettings) -> TemperatureProgramme:
    """Turn the YAML temperature programme into MD segments."""
    return TemperatureProgramme([Segment(**seg.model_dump()) for seg in md.segments])


def run_walkers(
    settings: RunSettings,
    atoms: Atoms,
    learner: Learner,
    rd: RunDirectory,
    write_event: Callable[[dict], None],
    on_step: Callable[[StepInfo], None] | None = None,
) -> int:
    """Run every walker to the end of the programme; return the total number of MD steps."""
    n_walkers = settings.md.walkers
    programme = programme_from_settings(settings.md)
    counts = [0] * n_walkers
    errors: list[BaseException] = []

    def target(w: int) -> None:
        try:
            counts[w] = _run_walker(w, atoms.copy(), programme, settings, learner, rd, write_event, on_step)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    if n_walkers == 1:
        target(0)
    else:
        threads = [threading.Thread(target=target, args=(w,), name=f"walker-{w}") for w in range(n_walkers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return sum(counts)


def trajectory_path(rd: RunDirectory, walker: int) -> Path:
    """``trajectory.extxyz`` for walker 0, ``trajectory_w{k}.extxyz`` for the others."""
    return rd.trajectory if walker == 0 else rd.path / f"trajectory_w{walker}.extxyz"


def _run_walker(w, atoms, programme, settings, learner, rd, write_event, on_step) -> int:
    seed = settings.md.seed + w * WALKER_SEED_STRIDE
    calc = OnTheFlyCalculator(learner, walker=w)
    atoms.calc = calc
    programme.initialize_velocities(atoms, seed)
    traj = trajectory_path(rd, w)
    time_fs, logged = 0.0, [-1]
    for index, n_steps, dyn in programme.iter_dynamics(atoms, seed):
        segment = programme.segments[index]
        start_fs = time_fs

        def observe(dyn=dyn, index=index, start_fs=start_fs, segment=segment) -> None:
            step = calc.step_count - 1
            if step == logged[0] or calc.last is None:
                return
            logged[0] = step
            info = _step_info(w, step, index, start_fs + dyn.nsteps * segment.timestep_fs, atoms, calc, learner)
            write_event({"event": "step", **asdict(info)})
            if step % settings.md.trajectory_interval == 0:
                _write_frame(traj, atoms, calc, info)
            if on_step is not None:
                on_step(info)

        dyn.attach(observe, interval=1)
        dyn.run(n_steps)
        time_fs = start_fs + n_steps * segment.timestep_fs
    return calc.step_count


def _step_info(w, step, segment, time_fs, atoms, calc, learner) -> StepInfo:
    outcome = calc.last
    return StepInfo(
        walker=w, step=step, segment=segment, time_fs=float(time_fs),
        temperature_K=float(atoms.get_temperature()),
        energy=float(outcome.results["energy"]),
        energy_std=float(outcome.prediction["energy_std"]),
        confidence=float(outcome.confidence), intervened=bool(outcome.intervened),
        generation=int(outcome.generation), n_labels=learner.n_labels,
    )  # fmt: skip


def _write_frame(path: Path, atoms: Atoms, calc: OnTheFlyCalculator, info: StepInfo) -> None:
    """Append one frame; uncertainties are copied into info/arrays (extxyz drops unknown keys)."""
    frame = atoms.copy()
    results = calc.last.results
    frame.calc = SinglePointCalculator(
        frame, energy=results["energy"], forces=results["forces"], stress=results.get("stress")
    )
    frame.info.update({k: v for k, v in asdict(info).items() if k != "energy"})
    frame.arrays["forces_std"] = np.asarray(calc.last.prediction["forces_std"])
    if "stress_std" in calc.last.prediction:
        frame.info["stress_std"] = np.asarray(calc.last.prediction["stress_std"])
    ase.io.write(path, frame, format="extxyz", append=True)
