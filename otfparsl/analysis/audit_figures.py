"""The report's figures of a held-out audit (``audit/audit.json``, made by ``otfparsl audit``)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from otfparsl.analysis.figures import WIDTH_IN

#: The audit's three predictions, in words.
AUDIT_NAMES = {"recorded": "during the run", "final": "final ensemble", "pretrained": "pretrained model"}


def _axes(height_in: float = 3.0):
    fig = Figure(figsize=(WIDTH_IN * 0.75, height_in), layout="constrained")
    ax = fig.subplots()
    ax.grid(alpha=0.3, lw=0.5)
    return fig, ax


def reliability_figure(audit: dict) -> Figure:
    """Observed against nominal coverage of the calibrated Student-t on the held-out frames."""
    fig, ax = _axes(3.4)
    for name in ("recorded", "final"):
        curve = audit["predictions"][name].get("reliability", {})
        ax.plot([float(k) for k in curve], list(curve.values()), "o-", ms=4, label=AUDIT_NAMES[name])
    ax.plot([0, 1], [0, 1], "k:", label="ideal")
    n = audit["predictions"]["recorded"]["n_frames"]
    ax.set(xlabel="nominal coverage of the predicted interval", ylabel="observed coverage", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"Reliability on {n} held-out frames (calibrated Student-t)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def error_vs_scale_figure(audit: dict) -> Figure:
    """|error| against the predicted scale on the held-out frames."""
    fig, ax = _axes()
    k = audit["threshold_eV"]
    for name in ("recorded", "final"):
        rows = [f[name] for f in audit["frames"]]
        ax.loglog([r["energy_scale_eV"] for r in rows], [max(abs(r["error_eV"]), 1e-8) for r in rows], "o",
                  label=AUDIT_NAMES[name])  # fmt: skip
    ax.axhline(k, color="#b22", ls="--", label=f"K = {k:.4g} eV")
    lim = np.array(ax.get_xlim())
    ax.plot(lim, 1.96 * lim, "k:", label="|error| = 1.96 x scale")
    ax.set(xlabel="predicted scale s (eV)", ylabel="|error| vs DFT (eV)")
    ax.set_title("Held-out error against the predicted uncertainty", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def errors_over_time_figure(audit: dict, time_factor: float = 1.0, time_unit: str = "fs") -> Figure:
    """|error| of the three predictions at each held-out frame, over MD time."""
    fig, ax = _axes()
    k = audit["threshold_eV"]
    t = np.array([f["time_fs"] for f in audit["frames"]]) * time_factor
    for name, marker in zip(AUDIT_NAMES, "os^", strict=True):
        ax.semilogy(t, [max(abs(f[name]["error_eV"]), 1e-8) for f in audit["frames"]], marker,
                    label=AUDIT_NAMES[name], alpha=0.8)  # fmt: skip
    ax.axhline(k, color="#b22", ls="--", label=f"K = {k:.4g} eV")
    ax.set(xlabel=f"MD time ({time_unit})", ylabel="|error| vs DFT (eV)")
    ax.set_title("Held-out |error| over the run", fontsize=10)
    ax.legend(fontsize=8)
    return fig
