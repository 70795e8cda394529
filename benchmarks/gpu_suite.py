"""Measure every open GPU row of docs/performance.md in one command (issue 26, item 6).

``python benchmarks/gpu_suite.py --out DIR`` measures, within its time budget (``--budget-s``,
420 s, checked before each row: about 8 minutes with the start-up on one GPU; a cold inductor
compilation can overrun it, a second run finds inductor's cache warm), side by side in one
process:

* **label cost** (section 1's GPU rows): for CHGNet 0.3.0, SevenNet-0 and MACE-MP-0 medium's
  architecture (random weights, built by
  :func:`otfparsl.testing.build_mace_mp0_medium_architecture`, nothing downloaded) on Si 64
  (diamond 2x2x2) and CaZrS3 + 2 H (162 atoms, the repo's ``workflows/cazrs3_proton/POSCAR``),
  both rattled, float32 and float64: one forward (energy, forces,
  stress) on a prebuilt graph, one ensemble prediction of M = 8 members
  (:class:`~otfparsl.calculators.ensemble.EnsembleCalculator`), one chain-step (autograd) and
  the 8-chain x 2000-step update **extrapolated** from the measured steps (8 x 2000 x
  chain-step: the chains one after another on the GPU);
* **gradients and kernels** (sections 4 and 6): MP-0-medium chain-steps with compiled
  gradients (``SGHMCConfig.gradients="compiled"``, inductor; the first step holds the
  compilation and the check against autograd) in float32 and float64, and with cuEquivariance
  kernels (mace-torch's ``convert_e3nn_cueq``) where ``cuequivariance`` imports;
* **8 chains on one GPU** (section 4): MP-0-medium, 162 atoms, float32, autograd and
  compiled: 8 x one chain-step (one after another) vs 8 chains at once in one process (8
  Python threads, one CUDA stream each; 4, 2, ... at once in waves where 8 run out of memory),
  measured while all chains are busy;
* **goals** (section 4): the best 8-chain update of the above against the issue's 3 minutes;
  CUDA graphs (no such path in otfparsl: the row says so).

Every chain-step is timed inside a real :meth:`otfparsl.bayes.Chain.update` (minibatch of the 5
labelled rattled copies = the whole set, forward, forces, stress, double backward, flat SGHMC
sampler; ``benchmarks/_cost.py``), the first step (lazy set-up, compilation) left out; each
measurement gets ``--row-budget-s`` of timed steps. The cheap rows run first, compilations
last (:func:`plan`); a row that fails (out of memory, a missing package) or that the budget
leaves no time for is recorded with its reason and the suite goes on. Writes
``DIR/gpu_suite.json`` and ``DIR/gpu_suite.md`` (after every row) and prints one line per row
with the elapsed time.

``--device cpu --quick`` runs the same code paths with a minimal tiny MACE in place of
MP-0-medium, 4- and 8-atom Cu cells, M = 2, few steps and compiled gradients traced without
code generation (``backend="eager"``): a smoke run of about a minute on 2 cores
(tests/unit/test_gpu_suite.py). Usage::

    python benchmarks/gpu_suite.py --out /tmp/gpu_suite
    python benchmarks/gpu_suite.py --out /tmp/gpu_suite --only "8 chains"   # a subset
    python benchmarks/gpu_suite.py --device cpu --quick --out /tmp/gpu_suite_quick
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import ase.io
import numpy as np
import torch
from _cost import (
    ENERGY_SIGMA_EV,
    STRESS_SIGMA_EV_PER_A3,
    Case,
    chain_update_times,
    labelled_set,
    median_time,
    spec_of,
    system_atoms,
)
from ase import Atoms
from ase.build import bulk
from bench_compiled import _Checks

from otfparsl.bayes import functional
from otfparsl.bayes.chain import Chain
from otfparsl.bayes.prior import TransferPrior
from otfparsl.bayes.sghmc import SGHMCConfig
from otfparsl.calculators.ensemble import EnsembleCalculator
from otfparsl.errors import MissingDependencyError
from otfparsl.models import load_adapter
from otfparsl.models.base import ModelSpec, torch_dtype
from otfparsl.training import build_bayesian_model

ROOT = Path(__file__).resolve().parents[1]
CAZRS3_POSCAR = ROOT / "workflows" / "cazrs3_proton" / "POSCAR"
MP0 = "mace-mp0-medium-arch"
NAMES = {MP0: "MP-0-medium arch.", "chgnet": "CHGNet 0.3.0", "sevennet": "SevenNet-0"}
SLOTS = ("64", "162")
DTYPES = ("float32", "float64")
HOW = ("one after another", "at once")
UPDATE_CHAINS, UPDATE_STEPS = 8, 2000  # one label's update (method.md section 3)
GOAL_MIN = 3.0
#: --quick stands in for MP-0-medium with the smallest tiny MACE (its compiled trace is ~15 s)
QUICK_MACE = (("channels", 4), ("correlation", 1), ("max_ell", 1), ("num_interactions", 1))
#: mace-torch's cuEquivariance converter needs correlation 2 or 3
QUICK_MACE_CUEQ = (("channels", 4), ("correlation", 2), ("max_ell", 1), ("num_interactions", 1))


@dataclass(frozen=True)
class Settings:
    """Sizes and limits of one suite run."""

    device: str
    quick: bool
    budget_s: float
    row_budget_s: float
    members: int
    n_data: int
    max_steps: int
    repeat: int
    only: tuple[str, ...]


@dataclass
class Row:
    """One row of the report: what it measures, its numbers, or why it has none."""

    table: str
    model: str
    slot: str
    dtype: str
    variant: str
    system: str = ""
    value: float | None = None
    unit: str = ""
    reason: str | None = None
    note: str = ""
    metrics: dict = field(default_factory=dict)
    elapsed_s: float | None = None

    @property
    def id(self) -> str:
        parts = (self.table, self.model, self.slot, self.dtype, self.variant)
        return " | ".join(p for p in parts if p)


def plan() -> list[Row]:
    """Return every row, in the order they are measured.

    The cheap rows come first, so that a long cold compilation cannot crowd them out of the
    budget; then compiled gradients, float32 before float64.
    """
    rows = [Row("label cost", MP0, s, "float32", "autograd") for s in SLOTS]
    rows += [Row("8 chains", MP0, "162", "float32", f"autograd, {how}") for how in HOW]
    rows += [Row("label cost", MP0, s, "float64", "autograd") for s in SLOTS]
    rows += [Row("label cost", m, s, d, "autograd")
             for m in ("chgnet", "sevennet") for d in DTYPES for s in SLOTS]
    rows += [Row("gradients", MP0, s, "float32", "compiled") for s in SLOTS]
    rows += [Row("8 chains", MP0, "162", "float32", f"compiled, {how}") for how in HOW]
    rows += [Row("gradients", MP0, s, "float32", "cuEquivariance") for s in SLOTS]
    rows += [Row("gradients", MP0, s, "float64", "compiled") for s in SLOTS]
    rows += [Row("goals", MP0, "162", "float32", f"8-chain update <= {GOAL_MIN:g} min"),
             Row("goals", "", "", "", "CUDA graphs")]
    return rows


def structure(slot: str, quick: bool) -> tuple[str, Atoms]:
    """Return the name and the (rattled) structure of a system slot ("64" or "162" atoms)."""
    if quick:  # 4 and 8 atoms: periodic (the stress path); one compiled graph serves both
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((1 if slot == "64" else 2, 1, 1))
        name = f"Cu ({len(atoms)}), --quick stand-in for {slot} atoms"
    elif slot == "64":
        atoms, name = system_atoms("si64"), "Si (64)"
    else:
        atoms, name = ase.io.read(CAZRS3_POSCAR, format="vasp"), "CaZrS3 + 2 H (162)"
    atoms.rattle(0.03, seed=0)
    return name, atoms


def model_spec(model: str, dtype: str, s: Settings, workdir: str) -> ModelSpec:
    """Return the spec of a benchmark model (--quick: a minimal tiny MACE for MP-0-medium)."""
    if s.quick and model == MP0:
        return ModelSpec(family="mace", source="tiny", dtype=dtype, device=s.device,
                         options=QUICK_MACE)
    return spec_of(Case(model, "", dtype, device=s.device), workdir)


def cueq_spec(spec: ModelSpec, workdir: str) -> ModelSpec:
    """Return ``spec`` converted to cuEquivariance kernels (mace-torch's converter, a new file)."""
    try:
        import cuequivariance  # noqa: F401
        import cuequivariance_torch  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"cuequivariance ({exc.name} does not import); pip install cuequivariance-torch "
            "cuequivariance-ops-torch-cu12 (mace-torch's cuEquivariance kernels)"
        ) from exc
    from mace.cli.convert_e3nn_cueq import run as to_cueq

    from otfparsl.models.mace import build_tiny_mace, load_mace_model_file

    if spec.source == "tiny":
        model = build_tiny_mace(spec.seed, torch_dtype(spec), **dict(spec.options))
    else:
        model = load_mace_model_file(spec.source)
    default = torch.get_default_dtype()
    try:  # the converter sets the default dtype to the model's
        converted = to_cueq(model, device="cuda" if spec.device.startswith("cuda") else "cpu")
    finally:
        torch.set_default_dtype(default)
    path = Path(workdir) / f"cueq-{spec.dtype}.model"
    torch.save(converted.to("cpu"), path)
    return replace(spec, source=str(path))


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predict_times(adapter, atoms: Atoms, s: Settings) -> tuple[float, float]:
    """Return (one forward, one M-member ensemble prediction) in seconds, medians."""
    device = torch.device(adapter.spec.device)
    periodic = bool(np.all(atoms.pbc))
    inputs = adapter.collate([adapter.prepare(atoms)]).inputs  # a prebuilt graph
    base = build_bayesian_model(adapter).trainable_state()
    gen = torch.Generator().manual_seed(0)
    samples = [{k: v + 1e-3 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
                for k, v in base.items()} for _ in range(s.members)]  # fmt: skip
    ensemble = EnsembleCalculator(adapter, samples, energy_sigma_eV=ENERGY_SIGMA_EV)
    properties = ["energy", "forces", "stress"] if periodic else ["energy", "forces"]

    def single() -> None:
        adapter.core(inputs, periodic, False)
        sync(device)

    def predict() -> None:
        ensemble.calculate(atoms.copy(), properties)  # results come back to the host: synced

    return median_time(single, s.repeat), median_time(predict, max(1, s.repeat // 2))


def chain_step(adapter, data, periodic: bool, gradients: str, s: Settings) -> dict:
    """Time chain-steps: a probe update, then ``--row-budget-s`` worth of steps (at most max)."""
    probe = chain_update_times(adapter, data, periodic, 1 + min(2, s.max_steps), "flat",
                               gradients=gradients)
    first, steps = probe[0], probe[1:]
    n = min(s.max_steps, max(1, int(s.row_budget_s / statistics.median(steps))))
    if n > len(steps):
        steps = chain_update_times(adapter, data, periodic, n + 1, "flat", gradients=gradients)[1:]
    return {"first_step_s": first, "chain_step_ms": 1e3 * statistics.median(steps),
            "steps_measured": len(steps)}


def chains_at_once(adapter, data, periodic: bool, gradients: str, n_chains: int,
                   n_steps: int) -> float:
    """Run ``n_chains`` chain updates at once (threads, one CUDA stream each); return s/chain-step.

    The figure is measured while every chain is busy (after each chain's first step, before
    the first chain ends): (window) / (chain-steps completed in it).
    """
    device = torch.device(adapter.spec.device)
    cfg = SGHMCConfig(n_steps=n_steps, noise_off_steps=0, noise_ramp_steps=0,
                      step_size=adapter.defaults.step_size, gradients=gradients)
    stamps: list[list[float]] = [[] for _ in range(n_chains)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_chains)

    def work(k: int) -> None:
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                model = build_bayesian_model(adapter, copy.deepcopy(adapter.core))
                chain = Chain(model, TransferPrior.from_model(model, adapter.defaults.sigma_tl),
                              cfg, seed=k)

                def tick(_: int) -> None:
                    if stream is not None:
                        stream.synchronize()
                    stamps[k].append(time.perf_counter())

                barrier.wait()
                chain.update(data, adapter.collate, ENERGY_SIGMA_EV, STRESS_SIGMA_EV_PER_A3,
                             periodic, max_retries=0, callback=tick)
        except BaseException as exc:  # noqa: BLE001  (reported by the caller)
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_chains)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if errors:
        raise (real or errors)[0]
    start, end = max(s[0] for s in stamps), min(s[-1] for s in stamps)
    done = sum(sum(1 for t in s if start < t <= end) for s in stamps)
    if end > start and done >= n_chains:
        return (end - start) / done
    wall = max(s[-1] for s in stamps) - min(s[0] for s in stamps)
    return wall / sum(len(s) - 1 for s in stamps)


def quick_skip(row: Row) -> str | None:
    """Return why --quick leaves a row out (its float32 twin runs the same code), or None."""
    if row.dtype == "float64" and (row.variant == "compiled" or row.model != MP0):
        return ("not measured with --quick: the float32 row runs the same code (keeps the smoke "
                "run near a minute)")
    return None


def needs_s(row: Row) -> float:
    """Return the seconds of budget a row needs left to start (full sizes on a GPU)."""
    if row.table == "label cost":
        return 25.0
    if row.variant == "compiled":  # a cold inductor compilation of MP-0-medium
        return 150.0
    if row.variant == "cuEquivariance":  # converting and loading MP-0-medium: ~80 s on a CPU
        return 120.0
    if row.variant.endswith("at once"):
        return 40.0
    return 0.0


def update_text(seconds: float) -> str:
    """Return a duration in minutes (below 2 h) or hours."""
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


class Suite:
    """Measures the rows of :func:`plan` in order and writes the report after each."""

    def __init__(self, settings: Settings, out: Path, workdir: str) -> None:
        self.s = settings
        self.out = out
        self.workdir = workdir
        self.rows = plan()
        self.start = time.perf_counter()
        self.device = torch.device(settings.device)
        self.checks = _Checks()
        self.meta = machine_meta(settings)
        self._adapters: dict[tuple[str, str, str], object] = {}
        self._data: dict[tuple, tuple] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def find(self, table: str, slot: str, dtype: str, variant: str, model: str = MP0) -> Row:
        return next(r for r in self.rows if r.id == Row(table, model, slot, dtype, variant).id)

    def run(self) -> None:
        for row in self.rows:
            self.run_row(row)
            self.write()

    def run_row(self, row: Row) -> None:
        """Measure one row; record any failure as its reason."""
        need = needs_s(row) / (10 if self.s.quick else 1)
        left = self.s.budget_s - self.elapsed()
        if self.s.only and not any(p in row.id for p in self.s.only):
            row.reason = "not selected (--only)"
        elif self.s.quick and quick_skip(row):
            row.reason = quick_skip(row)
        elif left < need:
            row.reason = (f"skipped: {left:.0f} s of the {self.s.budget_s:.0f} s budget left, this "
                          f"row needs about {need:.0f} s; rerun with --only '{row.id}'")
        else:
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            try:
                self.measure(row)
            except torch.cuda.OutOfMemoryError as exc:
                row.reason = f"out of GPU memory: {str(exc).splitlines()[0][:160]}"
            except (MissingDependencyError, ImportError) as exc:
                row.reason = f"not installed: {str(exc).splitlines()[0][:200]}"
            except Exception as exc:  # noqa: BLE001  (the suite goes on)
                row.reason = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            derived = row.table == "goals" or "one after another" in row.variant
            if self.device.type == "cuda" and not derived:
                row.metrics["peak_gpu_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        if row.value is not None and not math.isfinite(row.value):
            row.reason, row.value = row.reason or f"not finite: {row.value}", None
        row.elapsed_s = self.elapsed()
        print(f"[{row.elapsed_s:7.1f} s] {row.id}: {summary(row)}", flush=True)

    def measure(self, row: Row) -> None:
        if row.table == "label cost":
            self.label_cost(row)
        elif row.variant == "compiled":
            self.compiled(row)
        elif row.variant == "cuEquivariance":
            self.cueq(row)
        elif row.table == "8 chains":
            self.eight_chains(row)
        elif row.variant == "CUDA graphs":
            row.reason = ("not measured: otfparsl has no CUDA-graph path (compiled gradients use "
                          "torch.compile(dynamic=True) without mode='reduce-overhead')")
        else:
            self.goal(row)

    def loaded(self, model: str, dtype: str, slot: str, kernels: str = "e3nn"):
        """Return ``(adapter, labelled set, periodic, atoms, system name)``, built once each."""
        key = (model, dtype, kernels)
        if key not in self._adapters:
            spec = model_spec(model, dtype, self.s, self.workdir)
            if kernels == "cueq":
                if self.s.quick:
                    spec = replace(spec, options=QUICK_MACE_CUEQ)
                spec = cueq_spec(spec, self.workdir)
            self._adapters[key] = load_adapter(spec)
        adapter = self._adapters[key]
        if (key, slot) not in self._data:
            name, atoms = structure(slot, self.s.quick)
            self._data[(key, slot)] = (name, atoms, labelled_set(adapter, atoms, self.s.n_data, 0))
        name, atoms, data = self._data[(key, slot)]
        return adapter, data, bool(np.all(atoms.pbc)), atoms, name

    def label_cost(self, row: Row, kernels: str = "e3nn") -> None:
        loaded = self.loaded(row.model, row.dtype, row.slot, kernels)
        adapter, data, periodic, atoms, row.system = loaded
        forward, ensemble = predict_times(adapter, atoms, self.s)
        row.metrics.update(forward_ms=1e3 * forward, ensemble_ms=1e3 * ensemble,
                           ensemble_over_forward=ensemble / forward)
        self.steps(row, adapter, data, periodic, "autograd")
        row.metrics["step_over_forward"] = row.metrics["chain_step_ms"] / row.metrics["forward_ms"]

    def steps(self, row: Row, adapter, data, periodic: bool, gradients: str) -> None:
        row.metrics.update(chain_step(adapter, data, periodic, gradients, self.s))
        update_s = UPDATE_CHAINS * UPDATE_STEPS * row.metrics["chain_step_ms"] / 1e3
        row.metrics["update_s"] = update_s
        row.value, row.unit = row.metrics["chain_step_ms"], "ms per chain-step"

    def compiled(self, row: Row) -> None:
        functional.reset_fallback()
        cache = functional.use_persistent_cache()
        warm = cache.is_dir() and any(cache.iterdir())
        self.checks.lines.clear()
        adapter, data, periodic, _, row.system = self.loaded(row.model, row.dtype, row.slot)
        self.steps(row, adapter, data, periodic, "compiled")
        fell_back = functional.compiled_disabled_reason()
        if Chain.compile_backend == "inductor":
            row.note = f"inductor, its cache {'warm' if warm else 'cold'} ({cache})"
        else:
            row.note = f"backend {Chain.compile_backend}: traced, no generated code"
        row.note += "".join(f"; {line}" for line in self.checks.lines[:1])
        if fell_back:  # the numbers are autograd's: kept in metrics, not as the row's value
            row.reason = f"compiled gradients fell back to autograd: {fell_back}"
            row.value = None
        self.versus_autograd(row)

    def cueq(self, row: Row) -> None:
        start = time.perf_counter()
        self.loaded(row.model, row.dtype, row.slot, "cueq")  # converts once per dtype
        row.metrics["setup_s"] = time.perf_counter() - start
        self.label_cost(row, kernels="cueq")
        self.versus_autograd(row)
        m, e3nn = row.metrics, self.find("label cost", row.slot, row.dtype, "autograd").metrics
        setup = f" (conversion and loading {m['setup_s']:.0f} s)" if m["setup_s"] >= 1 else ""
        row.note = (f"mace-torch convert_e3nn_cueq{setup}, autograd chain gradients; one forward "
                    f"{m['forward_ms']:.1f} ms, ensemble {m['ensemble_ms']:.1f} ms")
        if "ensemble_ms" in e3nn:
            row.note += f" (e3nn: {e3nn['forward_ms']:.1f} and {e3nn['ensemble_ms']:.1f} ms)"

    def versus_autograd(self, row: Row) -> None:
        base = self.find("label cost", row.slot, row.dtype, "autograd")
        if base.value is not None and row.value is not None:
            row.metrics["speedup_vs_autograd"] = base.value / row.value

    def eight_chains(self, row: Row) -> None:
        gradients, how = row.variant.split(", ")
        source = self.find(*(("label cost", row.slot, row.dtype, "autograd")
                             if gradients == "autograd"
                             else ("gradients", row.slot, row.dtype, "compiled")))
        if source.value is None:
            row.reason = f"needs the row '{source.id}', which has none ({source.reason})"
            return
        row.system = source.system
        if how == "one after another":
            row.metrics.update(chain_step_ms=source.value, update_s=source.metrics["update_s"],
                               steps_measured=source.metrics["steps_measured"])
            row.note = f"{UPDATE_CHAINS} x the chain-step of '{source.id}'"
        else:
            self.at_once(row, gradients, source.value)
        row.value, row.unit = row.metrics["chain_step_ms"], "ms per chain-step"

    def at_once(self, row: Row, gradients: str, one_ms: float) -> None:
        """Run the chains at once; on out-of-memory, half as many at once (in waves)."""
        adapter, data, periodic, _, _ = self.loaded(row.model, row.dtype, row.slot)
        chains, oom = self.s.members, ""
        while True:
            n = min(self.s.max_steps, max(1, int(self.s.row_budget_s * 1e3 / (chains * one_ms))))
            try:
                per_step = chains_at_once(adapter, data, periodic, gradients, chains, n + 1)
                break
            except torch.cuda.OutOfMemoryError:
                if chains == 1:
                    raise
                oom += f"{chains} at once: out of GPU memory; "
                chains //= 2
                gc.collect()
                torch.cuda.empty_cache()
        row.metrics.update(chain_step_ms=1e3 * per_step, steps_measured=n, chains_at_once=chains,
                           update_s=UPDATE_CHAINS * UPDATE_STEPS * per_step,
                           speedup_vs_one_after_another=one_ms / (1e3 * per_step))
        row.note = (f"{oom}{chains} Python threads in one process, one CUDA stream each, "
                    f"{_steps(n)} per chain" + (" (in waves)" if chains < UPDATE_CHAINS else ""))

    def goal(self, row: Row) -> None:
        candidates = [r for r in self.rows if r.model == MP0 and r.slot == row.slot
                      and r.dtype == row.dtype and r.value is not None and "update_s" in r.metrics]
        if not candidates:
            row.reason = "no MP-0-medium 162-atom float32 row was measured"
            return
        best = min(candidates, key=lambda r: r.metrics["update_s"])
        row.system = best.system
        row.value, row.unit = best.metrics["update_s"] / 60, "min (extrapolated)"
        verdict = "reached" if row.value <= GOAL_MIN else "not reached"
        row.note = f"{verdict}: best is '{best.id}' on {self.meta['device']}"
        if "H100" not in self.meta["device"]:
            row.note += " (the goal names one H100)"
        if self.s.quick:
            row.note += " (--quick: not the goal's model or system)"

    def write(self) -> None:
        report = {"meta": {**self.meta, "elapsed_s": self.elapsed()},
                  "rows": [{"id": r.id, **asdict(r)} for r in self.rows]}
        tmp = self.out / "gpu_suite.json.tmp"
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(self.out / "gpu_suite.json")
        (self.out / "gpu_suite.md").write_text(markdown(self.rows, report["meta"]))


def summary(row: Row) -> str:
    """Return the one-line progress text of a row."""
    m = row.metrics
    parts = [f"{k} {m[k]:.4g}" for k in ("forward_ms", "ensemble_ms", "chain_step_ms",
                                          "first_step_s", "speedup_vs_one_after_another") if k in m]
    if "update_s" in m:
        parts.append(f"{UPDATE_CHAINS}-chain update {_update(row)}")
    if row.table == "goals" and row.value is not None:
        parts.append(f"{row.value:.2f} {row.unit}; {row.note}")
    if row.reason:
        parts.append(row.reason)
    return ", ".join(parts)


def machine_meta(s: Settings) -> dict:
    """Return what the numbers rest on: device, versions, date, sizes."""
    if s.device.startswith("cuda"):
        device = f"{torch.cuda.get_device_name(torch.device(s.device))} (CUDA {torch.version.cuda})"
    else:
        device = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    return {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "commit": commit, "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0], "settings": asdict(s),
            "n_rows": len(plan()), "update": f"{UPDATE_CHAINS} chains x {UPDATE_STEPS} steps"}


def _num(row: Row, key: str, fmt: str = "{:.1f}") -> str:
    return fmt.format(row.metrics[key]) if key in row.metrics else "-"


def _steps(n: int | None) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def _update(row: Row) -> str:
    if "update_s" not in row.metrics:
        return "-"
    steps = row.metrics.get("steps_measured")
    return f"{update_text(row.metrics['update_s'])} (extrapolated from {_steps(steps)})"


def _why(row: Row) -> str:
    return "; ".join(p for p in (row.reason, row.note) if p).replace("|", "\\|")


def _row_label_cost(r: Row) -> str:
    ens = f"{_num(r, 'ensemble_ms')} ({_num(r, 'ensemble_over_forward', '{:.1f}x')})"
    return (f"| {NAMES[r.model]} | {r.system or r.slot} | {r.dtype} | {_num(r, 'forward_ms')} | "
            f"{ens} | {_num(r, 'chain_step_ms')} | {_update(r)} | "
            f"{_num(r, 'step_over_forward', '{:.1f}x')} | {_num(r, 'peak_gpu_gib', '{:.2f}')} | "
            f"{_why(r)} |")


def _row_gradients(r: Row) -> str:
    return (f"| {NAMES[r.model]} | {r.system or r.slot} | {r.dtype} | {r.variant} | "
            f"{_num(r, 'first_step_s', '{:.2f}')} | {_num(r, 'chain_step_ms')} | {_update(r)} | "
            f"{_num(r, 'speedup_vs_autograd', '{:.2f}x')} | {_num(r, 'peak_gpu_gib', '{:.2f}')} | "
            f"{_why(r)} |")


def _row_chains(r: Row) -> str:
    return (f"| {NAMES[r.model]} | {r.system or r.slot} | {r.dtype} | {r.variant} | "
            f"{_num(r, 'chain_step_ms')} | {_update(r)} | "
            f"{_num(r, 'speedup_vs_one_after_another', '{:.2f}x')} | "
            f"{_num(r, 'peak_gpu_gib', '{:.2f}')} | {_why(r)} |")


def _row_goal(r: Row) -> str:
    result = f"{r.value:.2f} {r.unit}" if r.value is not None else "-"
    where = f"{NAMES.get(r.model, 'all')} {r.system} {r.dtype}".strip()
    return f"| {r.variant} | {where} | {result} | {_why(r)} |"


TABLES = (
    ("label cost", "Section 1: what one label costs (GPU rows)",
     "| model | system | dtype | one forward ms | ensemble of M ms (x forward) | chain-step ms | "
     "8-chain x 2000-step update, one after another | chain-step / forward | peak GPU GiB | "
     "note |", 10, _row_label_cost),
    ("gradients", "Sections 4 and 6: compiled gradients and cuEquivariance",
     "| model | system | dtype | variant | first step s | chain-step ms (median) | 8-chain x "
     "2000-step update | vs autograd | peak GPU GiB | note |", 10, _row_gradients),
    ("8 chains", "Section 4: 8 chains on one GPU, one after another vs at once in one process",
     "| model | system | dtype | gradients, how | chain-step ms (wall, all chains busy) | "
     "8-chain x 2000-step update | vs one after another | peak GPU GiB | note |", 9, _row_chains),
    ("goals", "Section 4: goals", "| goal | configuration | result | note |", 4, _row_goal),
)


def markdown(rows: list[Row], meta: dict) -> str:
    """Return the report as markdown tables whose rows are docs/performance.md's open GPU rows."""
    s = meta["settings"]
    quick = "; **--quick smoke run: stand-in models and systems, not figures**"
    lines = [
        "# GPU rows of docs/performance.md (benchmarks/gpu_suite.py)", "",
        f"Device: {meta['device']}; torch {meta['torch']}, Python {meta['python']}; "
        f"{meta['date_utc']} UTC; commit {meta['commit'] or 'unknown'}; "
        f"{meta['elapsed_s']:.0f} s of a {s['budget_s']:.0f} s budget"
        + (quick if s["quick"] else ""),
        "", f"Ensemble of M = {s['members']} members; update = {meta['update']}. Chain-steps are "
        f"timed in a real Chain.update on {s['n_data']} labelled rattled copies (batch of 5 "
        "draws: the whole set), median of the measured steps after the first; an update is "
        f"{UPDATE_CHAINS} x {UPDATE_STEPS} x that median (extrapolated).",
    ]
    for table, title, header, n_cols, fmt in TABLES:
        lines += ["", f"## {title}", "", header, "|" + "---|" * n_cols]
        lines += [fmt(r) for r in rows if r.table == table]
    return "\n".join(lines) + "\n"


def settings_from(args: argparse.Namespace) -> Settings:
    if args.quick:
        return Settings(args.device, True, args.budget_s, 0.0, 2, 2, 1, 1, tuple(args.only))
    return Settings(args.device, False, args.budget_s, args.row_budget_s, 8, 5, 200, 10,
                    tuple(args.only))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of gpu_suite.json and .md")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few steps (smoke run)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="time budget (checked before each row; a row is not interrupted)")
    parser.add_argument("--row-budget-s", type=float, default=4.0,
                        help="seconds of timed chain-steps per measurement")
    parser.add_argument("--only", nargs="+", default=[], help="measure rows whose id contains one")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; --device cpu --quick runs the smoke version")
    if args.device == "cpu":
        torch.set_num_threads(1)  # small kernels: one intra-op thread per chain, as chain workers
    warnings.filterwarnings("ignore", module=r"(e3nn|mace|chgnet|sevenn|torch)(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning)
    settings = settings_from(args)
    Chain.compile_backend = "eager" if args.quick else "inductor"
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        suite = Suite(settings, args.out, workdir)
        log = logging.getLogger("otfparsl")
        log.addHandler(suite.checks)  # the compiled gradient's check against autograd
        warn = logging.StreamHandler()
        warn.setLevel(logging.WARNING)
        log.addHandler(warn)
        log.setLevel(logging.INFO)
        log.propagate = False  # mace's converter configures the root logger
        print(f"gpu_suite: {suite.meta['device']}, torch {suite.meta['torch']}, "
              f"{len(suite.rows)} rows, budget {settings.budget_s:.0f} s -> {args.out}", flush=True)
        suite.run()
    print(f"wrote {args.out / 'gpu_suite.json'} and {args.out / 'gpu_suite.md'} "
          f"({suite.elapsed():.0f} s)")


if __name__ == "__main__":
    main()
