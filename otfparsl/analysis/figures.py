"""The report's figures of a run, drawn from a :class:`~otfparsl.analysis.run_record.RunRecord`.

Each function returns a matplotlib ``Figure`` (object API, no pyplot state) with a title that
says what it rests on; the captions in :mod:`otfparsl.analysis.page` say the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from otfparsl.analysis.pretrained import PretrainedErrors
from otfparsl.analysis.run_record import CalibrationPoint, Headline, RunRecord, TimeSplit
from otfparsl.units import KCAL_PER_MOL_EV

WIDTH_IN = 8.0
_SEGMENT_SHADES = ("#eef3fb", "#fbf1e6")


def time_unit(record: RunRecord) -> tuple[float, str]:
    """(factor from fs, unit) of the report's time axes: ps for programmes of 2 ps or more."""
    return (1e-3, "ps") if record.programme_duration_fs >= 2000 else (1.0, "fs")


def _figure(nrows: int = 1, ncols: int = 1, height_in: float = 3.0, **kwargs) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(WIDTH_IN, height_in * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    for ax in axes.flat:
        ax.grid(alpha=0.3, lw=0.5)
    return fig, axes


def _shade_segments(ax, record: RunRecord, label: bool = True) -> None:
    """Shade the temperature programme's segments and name each (target T, ensemble)."""
    factor, _ = time_unit(record)
    start = 0.0
    for index, segment in enumerate(record.settings.md.segments):
        end = start + round(segment.duration_fs / segment.timestep_fs) * segment.timestep_fs
        ax.axvspan(start * factor, end * factor, color=_SEGMENT_SHADES[index % 2], zorder=0, lw=0)
        if label:
            name = f"{segment.temperature_K:g} K {segment.ensemble}"
            if segment.ensemble == "npt":
                name += f", {segment.pressure_bar:g} bar"
            ax.text((start + end) / 2 * factor, 0.98, name, transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=8, color="#444")  # fmt: skip
        start = end


def _by_walker(events: Sequence[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for event in events:
        out.setdefault(event["walker"], []).append(event)
    return dict(sorted(out.items()))


def dft_calls_figure(record: RunRecord, head: Headline) -> Figure:
    """Cumulative DFT calls per walker over MD time, on the temperature programme."""
    factor, unit = time_unit(record)
    fig, ax = _figure(height_in=3.6)
    ax = ax[0, 0]
    temps = ax.twinx()
    _shade_segments(temps, record)  # under the calls: the calls axis is drawn on top, transparent
    for walker, steps in _by_walker(record.steps).items():
        t = np.array([s["time_fs"] for s in steps]) * factor
        calls = np.cumsum([bool(s["intervened"]) for s in steps])
        ax.step(t, calls, where="post", lw=2, label=f"DFT calls, walker {walker}")
        temps.plot(t, [s["temperature_K"] for s in steps], color="#c44", lw=0.7, alpha=0.6)
    for failure in record.failures:
        ax.plot(record.time_fs(failure["walker"], failure["step"]) * factor, 0, "rx", ms=6, clip_on=False)
    edges, targets, start = [], [], 0.0
    for segment in record.settings.md.segments:
        end = start + round(segment.duration_fs / segment.timestep_fs) * segment.timestep_fs
        edges += [start * factor, end * factor]
        targets += [segment.temperature_K] * 2
        start = end
    temps.plot(edges, targets, color="#7a1010", ls="--", lw=1.2, label="target T (right axis)")
    temps.plot([], [], color="#c44", lw=0.7, label="instantaneous T (right axis)")
    temps.set_ylabel("temperature (K)", color="#a33")
    temps.set_ylim(0, 1.25 * max(max(targets), max((s["temperature_K"] for s in record.steps), default=0.0)))
    ax.set_zorder(temps.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set(xlabel=f"MD time ({unit})", ylabel="DFT calls (cumulative)",
           xlim=(0, record.programme_duration_fs * factor), ylim=(0, max(head.dft_calls, 1) * 1.15))  # fmt: skip
    handles = ax.get_legend_handles_labels()[0] + temps.get_legend_handles_labels()[0]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=min(4, len(handles)), frameon=False)
    walkers = len(head.md_steps)
    ax.set_title(f"{head.dft_calls} DFT calls in {sum(head.md_steps.values())} MD steps "
                 f"({walkers} walker{'s' if walkers != 1 else ''})", fontsize=10)  # fmt: skip
    return fig


def _claimed_half_width(record: RunRecord, label: dict) -> float:
    """Half-width of the central interval (the run's confidence level) claimed at a label's step."""
    step = record.step_event(label["walker"], label["step"])
    if step is None or not np.isfinite(step.get("energy_scale_eV", np.nan)):
        return np.nan
    level = record.settings.calibration.confidence
    return float(step["energy_scale_eV"] * stats.t.ppf((1 + level) / 2, step["dof"]))


def errors_figure(record: RunRecord, head: Headline, pretrained: PretrainedErrors | None) -> Figure:
    """Signed energy error at each intervention (run and pretrained model) against +-K."""
    factor, unit = time_unit(record)
    k = record.threshold_eV
    fig, ax = _figure(height_in=3.6)
    ax = ax[0, 0]
    ax.axhspan(-k, k, color="#dff0d8", zorder=0, label=f"|error| <= K = {k:.4g} eV")
    ax.axhline(0, color="#888", lw=0.6)
    labels = record.labels
    t = np.array([record.time_fs(lb["walker"], lb["step"]) for lb in labels]) * factor
    err = np.array([lb["error_eV"] for lb in labels], dtype=float)
    half = np.array([_claimed_half_width(record, lb) for lb in labels])
    level = record.settings.calibration.confidence
    if len(labels) > 1:
        ax.errorbar(t[1:], err[1:], yerr=half[1:], fmt="o", color="#1f5fa8", ms=5, capsize=2, elinewidth=0.8,
                    label=f"run: ensemble before the label, bar = claimed {level:.0%} interval")  # fmt: skip
    if labels:
        ax.plot(t[:1], err[:1], "s", color="#888", ms=6, label="first label (fixes the offset: 0 by construction)")
    pre = []
    if pretrained is not None:
        pre = [(ti, pretrained.errors_eV.get((lb["walker"], lb["step"]), np.nan)) for ti, lb in zip(t, labels, strict=True)]
        ax.plot([p[0] for p in pre], [p[1] for p in pre], "D", mfc="none", color="#d2691e", ms=6,
                label="pretrained model at the same structure")  # fmt: skip
    shown = [abs(v) for v in (*err, *(err + half), *(err - half), *(p[1] for p in pre)) if np.isfinite(v)]
    if max(shown, default=0.0) > 8 * k:  # errors far beyond K: linear within +-K, logarithmic beyond
        ax.set_yscale("symlog", linthresh=k, linscale=1.5)
        ax.set_ylabel("E_pred - (E_DFT + c)  (eV, symmetric log)")
    else:
        ax.set_ylim(-1.3 * max(max(shown, default=k), k), 1.3 * max(max(shown, default=k), k))
        ax.secondary_yaxis("right", functions=(_to_kcal, _to_ev)).set_ylabel("kcal/mol")
        ax.set_ylabel("E_pred - (E_DFT + c)  (eV)")
    duration = record.programme_duration_fs * factor
    ax.set(xlim=(-0.02 * duration, 1.02 * duration), xlabel=f"MD time of the intervention ({unit})")
    low, high = head.above_ci95
    title = f"{head.above} of {head.checked} checked interventions above K (95 % CI {low:.2f}-{high:.2f})"
    if pretrained is not None:
        pre_above = sum(abs(pretrained.errors_eV.get((lb["walker"], lb["step"]), 0.0)) > k for lb in labels[1:])
        title += f"; pretrained: {pre_above} of {head.checked}"
    ax.set_title(title, fontsize=10)
    fig.legend(fontsize=7.5, loc="outside lower center", ncols=2, frameon=False)
    return fig


def _to_kcal(energy_eV):
    return energy_eV / KCAL_PER_MOL_EV


def _to_ev(energy_kcal):
    return energy_kcal * KCAL_PER_MOL_EV


def calibration_figure(
    record: RunRecord, points: list[CalibrationPoint], final: tuple[float, float] | None
) -> Figure:
    """(a) counted z-scores against the final Student-t; (b) the calibrated scale over MD time."""
    factor, unit = time_unit(record)
    fig, axes = _figure(1, 2, height_in=3.3)
    hist, scale = axes[0, 0], axes[0, 1]
    z = np.array([lb["z"] for lb in record.labels if lb.get("counted")], dtype=float)
    z = z[np.isfinite(z)]
    sf, dof = final if final is not None else (np.nan, np.nan)
    span = max(4.0, 1.2 * float(np.max(np.abs(z))) if z.size else 4.0, 3.5 * sf if np.isfinite(sf) else 0.0)
    grid = np.linspace(-span, span, 400)
    if z.size:
        hist.hist(z, bins=max(6, int(2 * np.sqrt(z.size))), range=(-span, span), density=True,
                  color="#9bbbe0", edgecolor="#1f5fa8", label=f"counted z ({z.size})")  # fmt: skip
    if final is not None:
        hist.plot(grid, stats.t.pdf(grid / sf, dof) / sf, color="#b22", lw=1.6,
                  label=f"final Student-t: scale {sf:.3g}, ν = {dof:g}")  # fmt: skip
    hist.plot(grid, stats.norm.pdf(grid), "k:", lw=1, label="N(0, 1): std taken at face value")
    hist.set(xlabel="z = (E_DFT + c - E_pred) / ensemble std", ylabel="density")
    hist.set_title(f"z-scores: {z.size} counted interventions" + ("" if z.size else " (none yet: prior only)"), fontsize=10)
    hist.legend(fontsize=7)
    if points:
        times = [p.time_fs * factor for p in points] + [record.programme_duration_fs * factor]
        values = [p.scale_factor for p in points] + [points[-1].scale_factor]
        scale.step(times, values, where="post", color="#b22", lw=1.6, label="sqrt((b + S/2) / (a + n/2))")
        scale.plot([p.time_fs * factor for p in points[1:]], [p.scale_factor for p in points[1:]], "o",
                   color="#b22", ms=3, label="after a label")  # fmt: skip
        scale.axhline(points[0].scale_factor, color="#888", ls=":", label=f"prior sqrt(b/a) = {points[0].scale_factor:.3g}")
        scale.set_ylim(0, 1.15 * max(values))
        scale.legend(fontsize=7, loc="lower right")
    scale.set(xlabel=f"MD time ({unit})", ylabel="scale / ensemble std", xlim=(0, record.programme_duration_fs * factor))
    scale.set_title("Calibrated scale factor over the run", fontsize=10)
    return fig


def traces_figure(record: RunRecord) -> Figure:
    """Potential energy, uncertainty against K, and the confidence at every MD step."""
    factor, unit = time_unit(record)
    fig, axes = _figure(3, 1, height_in=2.1, sharex=True)
    energy, spread, conf = axes[:, 0]
    k = record.threshold_eV
    for walker, steps in _by_walker(record.steps).items():
        t = np.array([s["time_fs"] for s in steps]) * factor
        energy.plot(t, [s["energy"] for s in steps], lw=0.8, label=f"walker {walker}")
        spread.semilogy(t, [s["energy_std"] for s in steps], lw=0.8, color="#1f5fa8")
        spread.semilogy(t, [s["energy_scale_eV"] for s in steps], lw=0.8, color="#b22")
        conf.plot(t, [s["confidence"] for s in steps], lw=0.8)
        hits = [s for s in steps if s["intervened"]]
        conf.plot([s["time_fs"] * factor for s in hits], [s["confidence"] for s in hits], "x", color="#b22", ms=5)
    for ax in axes[:, 0]:
        _shade_segments(ax, record, label=ax is energy)
    spread.axhline(k, color="#2a2", ls="--", lw=1)
    spread.plot([], [], color="#1f5fa8", label="ensemble std")
    spread.plot([], [], color="#b22", label="calibrated scale s")
    spread.plot([], [], color="#2a2", ls="--", label=f"K = {k:.4g} eV")
    spread.legend(fontsize=7, loc="lower right", ncols=3)
    conf.axhline(record.settings.calibration.confidence, color="#555", ls=":", lw=1)
    conf.plot([], [], "x", color="#b22", label="DFT called")
    conf.legend(fontsize=7, loc="lower right")
    energy.set_ylabel("E (eV)")
    spread.set_ylabel("eV")
    conf.set(ylabel="P(|error| <= K)", xlabel=f"MD time ({unit})", xlim=(0, record.programme_duration_fs * factor))
    if len(_by_walker(record.steps)) > 1:
        energy.legend(fontsize=7)
    return fig


def time_split_figure(split: TimeSplit) -> Figure:
    """The wall time per part of the loop, as one stacked bar."""
    fig, ax = _figure(height_in=1.7)
    ax = ax[0, 0]
    left = 0.0
    colours = ("#1f5fa8", "#d2691e", "#6a3d9a", "#999999")
    for (name, seconds), colour in zip(split.parts_s.items(), colours, strict=True):
        width = max(seconds, 0.0)
        ax.barh(0, width, left=left, color=colour, label=f"{name}: {seconds:.4g} s")
        left += width
    ax.set(yticks=[], xlabel="wall time (s)")
    fig.legend(fontsize=8, ncols=4, loc="outside lower center", frameon=False)
    ax.set_title(f"{split.wall_s:.4g} s of wall time", fontsize=10)
    return fig
