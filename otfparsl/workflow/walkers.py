"""MD walkers: each runs the temperature programme with its own OnTheFlyCalculator.

Several walkers (replicas with other seeds or temperatures) share one Learner: a walker waiting
for DFT blocks only its own thread, the others keep stepping with the ensemble.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from otfparsl.calculators.otf import OnTheFlyCalculator
from otfparsl.fileio import raise_disk_full
from otfparsl.learning import Learner
from otfparsl.md import TemperatureProgramme
from otfparsl.md.state import capture_md_state, restore_md_state
from otfparsl.run.directory import RunDirectory
from otfparsl.settings import RunSettings

if TYPE_CHECKING:
    from otfparsl.run.checkpoint import Checkpointer

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
    energy_scale_eV: float
    dof: float
    intervened: bool
    generation: int
    n_labels: int
    heldout: bool = False
    heldout_checked: int = 0
    heldout_above: int = 0


@dataclass(frozen=True)
class WalkerContext:
    """What every walker of a run shares."""

    programme: TemperatureProgramme
    settings: RunSettings
    learner: Learner
    rd: RunDirectory
    write_event: Callable[[dict], None]
    on_step: Callable[[StepInfo], None] | None = None
    checkpointer: Checkpointer | None = None


def run_walkers(ctx: WalkerContext, atoms: Atoms, starts: dict[int, dict] | None = None) -> int:
    """Run every walker to the end of the programme; return the total number of MD steps.

    ``starts`` holds the walker snapshots of a checkpoint to continue from (resume).
    """
    n_walkers = ctx.settings.md.walkers
    counts = [0] * n_walkers
    errors: list[BaseException] = []

    def target(w: int) -> None:
        try:
            counts[w] = _run_walker(w, atoms.copy(), ctx, (starts or {}).get(w))
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


def _run_walker(w: int, atoms: Atoms, ctx: WalkerContext, start: dict | None) -> int:
    seed = ctx.settings.md.seed + w * WALKER_SEED_STRIDE
    calc = OnTheFlyCalculator(ctx.learner, walker=w)
    atoms.calc = calc
    programme = ctx.programme
    if start is None:
        from otfparsl.structures import keep_input_velocities  # the structure's own velocities

        if not keep_input_velocities(atoms, w):
            programme.initialize_velocities(atoms, seed)
        first, last_step = 0, -1
    elif start["finished"]:
        return int(start["calc"]["step_count"])
    else:
        first, last_step = int(start["segment"]), int(start["step"])
    recorder = _StepRecorder(ctx, w, atoms, calc, last_step)
    for index in range(first, len(programme.segments)):
        dyn = programme.make_dynamics(atoms, index, seed)
        if start is not None and index == first:
            restore_md_state(atoms, dyn, start["md"])
            calc.restore(atoms, start["calc"])
        dyn.attach(recorder.observe, interval=1, dyn=dyn, index=index)
        dyn.run(programme.segments[index].n_steps - dyn.nsteps)
    return calc.step_count


class _StepRecorder:
    """Logs, writes and checkpoints each MD step of one walker (attached to its dynamics)."""

    def __init__(self, ctx: WalkerContext, w: int, atoms: Atoms, calc: OnTheFlyCalculator, last_step: int) -> None:
        self.ctx, self.w, self.atoms, self.calc, self.last_step = ctx, w, atoms, calc, last_step
        segments = ctx.programme.segments
        self.offsets_fs = np.cumsum([0.0] + [s.n_steps * s.timestep_fs for s in segments])

    def observe(self, dyn, index: int) -> None:
        """Record the step the calculator just took (once, even if the integrator calls twice)."""
        step = self.calc.step_count - 1
        if step == self.last_step or self.calc.last is None:
            return
        self.last_step = step
        segment = self.ctx.programme.segments[index]
        time_fs = self.offsets_fs[index] + dyn.nsteps * segment.timestep_fs
        info = _step_info(self.w, step, index, time_fs, self.atoms, self.calc, self.ctx.learner)
        _record_step(self.ctx, self.w, info, self.atoms, self.calc)
        if self.ctx.checkpointer is not None:
            done = index == len(self.ctx.programme.segments) - 1 and dyn.nsteps == segment.n_steps
            snapshot = self.snapshot(step, index, dyn, done)
            called_dft = bool(self.calc.last.intervened or self.calc.last.heldout)
            self.ctx.checkpointer.step_done(self.w, snapshot, called_dft)
        if self.ctx.on_step is not None:
            self.ctx.on_step(info)

    def snapshot(self, step: int, index: int, dyn, finished: bool) -> dict:
        """This walker's state after ``step`` (MD, calculator, trajectory size) for a checkpoint.

        The trajectory is named relative to the run directory, so that a run resumes from any
        working directory, after a move or on another machine.
        """
        traj = trajectory_path(self.ctx.rd, self.w)
        return {
            "walker": self.w, "step": step, "segment": index, "finished": finished,
            "md": capture_md_state(self.atoms, dyn), "calc": self.calc.snapshot(),
            "trajectory": traj.name, "trajectory_bytes": traj.stat().st_size if traj.is_file() else 0,
        }  # fmt: skip


def _record_step(ctx: WalkerContext, w: int, info: StepInfo, atoms: Atoms, calc: OnTheFlyCalculator) -> None:
    ctx.write_event({"event": "step", **asdict(info)})
    if info.step % ctx.settings.md.trajectory_interval == 0:
        _write_frame(trajectory_path(ctx.rd, w), atoms, calc, info)


def _step_info(w, step, segment, time_fs, atoms, calc, learner) -> StepInfo:
    outcome = calc.last
    return StepInfo(
        walker=w, step=step, segment=segment, time_fs=float(time_fs),
        temperature_K=float(atoms.get_temperature()),
        energy=float(outcome.results["energy"]),
        energy_std=float(outcome.prediction["energy_std"]),
        confidence=float(outcome.confidence), energy_scale_eV=float(outcome.energy_scale_eV),
        dof=float(outcome.dof), intervened=bool(outcome.intervened),
        generation=int(outcome.generation), n_labels=learner.n_labels, heldout=bool(outcome.heldout),
        heldout_checked=learner.heldout.n, heldout_above=learner.heldout.above,
    )  # fmt: skip


def _write_frame(path: Path, atoms: Atoms, calc: OnTheFlyCalculator, info: StepInfo) -> None:
    """Append one frame; uncertainties are copied into info/arrays (extxyz drops unknown keys).

    Not fsynced here: the checkpoint that records the file's size fsyncs it first. A full disk
    raises :class:`~otfparsl.errors.DiskFull` (the cut frame is dropped on resume).
    """
    frame = atoms.copy()
    results = calc.last.results
    frame.calc = SinglePointCalculator(
        frame, energy=results["energy"], forces=results["forces"], stress=results.get("stress")
    )
    frame.info.update({k: v for k, v in asdict(info).items() if k != "energy"})
    frame.arrays["forces_std"] = np.asarray(calc.last.prediction["forces_std"])
    if "stress_std" in calc.last.prediction:
        frame.info["stress_std"] = np.asarray(calc.last.prediction["stress_std"])
    with raise_disk_full(path):
        ase.io.write(path, frame, format="extxyz", append=True)
