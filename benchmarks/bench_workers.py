"""Which CPU worker setup updates chains fastest? Layouts measured side by side in one run.

Each layout runs ``workers`` chains at once (after a warm-up, released together by a barrier)
and reports the wall time per chain-step: (loop wall) / (workers x steps), so a layout that
runs 2 chains at once in 1.6x the time of one chain scores 0.8x. Layouts (2 cores):

* ``1x2 threads``: one chain, torch on 2 intra-op threads (what bench_core measures);
* ``2 threads x1``: 2 chains in 2 Python threads of one process, 1 torch thread (what
  ``otfparsl run`` without a site does today with ThreadSubmitter);
* ``2 procs x1``: 2 chains in 2 spawned processes, 1 torch thread each (ProcessSubmitter,
  Parsl HTEX workers);
* ``+fd``: ``torch.set_flush_denormal(True)`` in the chain worker; ``+je``: jemalloc as the
  worker's allocator (``LD_PRELOAD`` of Debian's libjemalloc2, where installed);
* ``ref``: the reference sampler (one tensor per parameter) instead of the flat one.

The layouts are run in turn, ``--repeat`` rounds; medians over the rounds are printed, with the
ratio to ``2 threads x1``. Usage::

    python benchmarks/bench_workers.py --model chgnet --system ethanol --dtype float32 --steps 40
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, replace

import torch
from _cost import Case, chain_step_times, jemalloc_path, load_case


@dataclass(frozen=True)
class Layout:
    """How chain updates are spread over the cores."""

    name: str
    kind: str  # "threads" or "processes"
    workers: int
    torch_threads: int
    flush_denormal: bool = False
    jemalloc: bool = False
    sampler: str = "flat"
    dtype: str | None = None  # None: the case's dtype


LAYOUTS = {
    "1x2 threads": Layout("1x2 threads", "threads", 1, 2),
    "2 threads x1": Layout("2 threads x1", "threads", 2, 1),
    "2 threads x1 +fd": Layout("2 threads x1 +fd", "threads", 2, 1, flush_denormal=True),
    "2 procs x1": Layout("2 procs x1", "processes", 2, 1),
    "2 procs x1 +fd": Layout("2 procs x1 +fd", "processes", 2, 1, flush_denormal=True),
    "2 procs x1 +fd+je": Layout("2 procs x1 +fd+je", "processes", 2, 1, True, True),
    "2 procs x1 ref": Layout("2 procs x1 ref", "processes", 2, 1, sampler="reference"),
    "2 procs x1 +fd ref": Layout("2 procs x1 +fd ref", "processes", 2, 1, True, sampler="reference"),
    # before and after issue 10 for MACE: float64, reference sampler, threads -> float32, flat,
    # processes, flush-denormal
    "before: f64 ref 2 threads x1": Layout(
        "before: f64 ref 2 threads x1", "threads", 2, 1, sampler="reference", dtype="float64"),
    "after: f32 flat 2 procs x1 +fd": Layout(
        "after: f32 flat 2 procs x1 +fd", "processes", 2, 1, True, dtype="float32"),
}
BASELINE = "2 threads x1"


def _chain_loop(case: Case, layout: Layout, n_steps: int, workdir: str, loaded, barrier,
                warmup: int = 3) -> tuple:
    """Warm up, wait for the other workers, run ``n_steps``; return wall and CPU clocks, median step."""
    if layout.flush_denormal:
        torch.set_flush_denormal(True)  # per thread (MXCSR): set in the thread that computes
    if layout.dtype is not None and layout.dtype != case.dtype:
        case, loaded = replace(case, dtype=layout.dtype), None
    adapter, dataset, periodic = loaded if loaded is not None else load_case(case, workdir)
    chain_step_times(adapter, dataset, periodic, warmup, layout.sampler, seed=case.seed)
    barrier.wait()
    start, cpu_start = time.perf_counter(), time.process_time()
    steps = chain_step_times(adapter, dataset, periodic, n_steps + 1, layout.sampler, seed=case.seed)
    return start, time.perf_counter(), cpu_start, time.process_time(), statistics.median(steps)


def _process_main(case, layout, n_steps, workdir, barrier, queue, warmup=3) -> None:
    torch.set_num_threads(layout.torch_threads)
    queue.put(_chain_loop(case, layout, n_steps, workdir, None, barrier, warmup))


def run_layout(
    case: Case, layout: Layout, n_steps: int, workdir: str, loaded, warmup: int = 3
) -> tuple[float, float]:
    """Return the wall and the CPU seconds per chain-step of ``layout`` (all its workers busy).

    CPU seconds are those of the processes doing the work (spin-waits included), summed: on a
    machine shared with other jobs they measure the work of a step better than the wall time.
    """
    if layout.kind == "threads":
        torch.set_num_threads(layout.torch_threads)
        barrier = threading.Barrier(layout.workers)
        results: list = [None] * layout.workers

        def work(k: int) -> None:
            results[k] = _chain_loop(replace(case, seed=k), layout, n_steps, workdir, loaded,
                                     barrier, warmup)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(layout.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        ctx = mp.get_context("spawn")
        barrier, queue = ctx.Barrier(layout.workers), ctx.Queue()
        env_before = os.environ.get("LD_PRELOAD")
        if layout.jemalloc:
            os.environ["LD_PRELOAD"] = jemalloc_path() or ""
        procs = [ctx.Process(target=_process_main,
                             args=(replace(case, seed=k), layout, n_steps, workdir, barrier, queue,
                                   warmup))
                 for k in range(layout.workers)]  # fmt: skip
        for p in procs:
            p.start()
        if env_before is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = env_before
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
    wall = max(r[1] for r in results) - min(r[0] for r in results)
    if layout.kind == "threads":  # process_time is process-wide: one window for all threads
        cpu = max(r[3] for r in results) - min(r[2] for r in results)
    else:
        cpu = sum(r[3] - r[2] for r in results)
    return wall / (layout.workers * n_steps), cpu / (layout.workers * n_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="chgnet")
    parser.add_argument("--system", default="ethanol")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=40, help="measured steps per worker")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all layouts")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    args = parser.parse_args()
    layouts = [LAYOUTS[n] for n in args.layouts]
    if any(lay.jemalloc for lay in layouts) and jemalloc_path() is None:
        print("jemalloc not installed (apt install libjemalloc2): +je layouts skipped")
        layouts = [lay for lay in layouts if not lay.jemalloc]
    case = Case(model=args.model, system=args.system, dtype=args.dtype)
    walls: dict[str, list[float]] = {lay.name: [] for lay in layouts}
    cpus: dict[str, list[float]] = {lay.name: [] for lay in layouts}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as workdir:
        loaded = load_case(case, workdir)  # shared by the thread layouts (each chain copies the core)
        for _ in range(args.repeat):
            for lay in layouts:
                wall, cpu = run_layout(case, lay, args.steps, workdir, loaded)
                walls[lay.name].append(wall)
                cpus[lay.name].append(cpu)
                loads.append(os.getloadavg()[0])
                print(f"  {lay.name:22s} wall {wall * 1e3:9.2f}  cpu {cpu * 1e3:9.2f} ms/chain-step"
                      f"  (load {loads[-1]:.2f})", flush=True)  # fmt: skip
    print(f"\n{args.model} {args.system} {args.dtype}, {args.steps} steps x workers, "
          f"{args.repeat} rounds, {os.cpu_count()} cores, 1-min load average during the run "
          f"{min(loads):.2f}-{max(loads):.2f} (median {statistics.median(loads):.2f})")  # fmt: skip
    print(f"| layout | wall ms per chain-step | CPU ms per chain-step | speed-up vs {BASELINE}: wall | CPU |")
    print("|---|---|---|---|---|")
    base_w = statistics.median(walls[BASELINE]) if BASELINE in walls else None
    base_c = statistics.median(cpus[BASELINE]) if BASELINE in cpus else None
    for name in walls:
        w, c = statistics.median(walls[name]), statistics.median(cpus[name])
        rw = f"{base_w / w:.2f}x" if base_w else "-"
        rc = f"{base_c / c:.2f}x" if base_c else "-"
        print(f"| {name} | {w * 1e3:.1f} ({min(walls[name]) * 1e3:.0f}-{max(walls[name]) * 1e3:.0f}) "
              f"| {c * 1e3:.1f} ({min(cpus[name]) * 1e3:.0f}-{max(cpus[name]) * 1e3:.0f}) | {rw} | {rc} |")


if __name__ == "__main__":
    main()
