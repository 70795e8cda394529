"""The run report: PNG plots and an index.html that show what an on-the-fly run did.

Everything is read from the run directory (``events.jsonl``, ``summary.json``), so a report can
be made of a finished run, of a running one, or of one that crashed.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np

from otfparsl.errors import ConfigurationError
from otfparsl.run.directory import RunDirectory, read_events


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``report/*.png`` and ``report/index.html`` for a run; return the index path."""
    import matplotlib

    matplotlib.use("Agg")
    rd = RunDirectory(run_dir)
    if not rd.events.is_file():
        raise ConfigurationError(f"{str(rd.path)!r} is not a run directory (no events.jsonl)")
    events = read_events(rd.events)
    steps = [e for e in events if e["event"] == "step"]
    labels = [e for e in events if e["event"] == "label"]
    updates = [e for e in events if e["event"] == "update"]
    threshold = _threshold(rd)
    rd.report.mkdir(exist_ok=True)
    figures = {
        "dft_calls.png": _plot_dft_calls(steps),
        "errors.png": _plot_errors(labels, threshold),
        "zscores.png": _plot_z(labels),
        "traces.png": _plot_traces(steps),
        "timings.png": _plot_timings(labels, updates),
    }
    audit = _read_audit(rd)
    if audit is not None:
        figures.update(
            {
                "audit_reliability.png": _plot_reliability(audit),
                "audit_error_vs_std.png": _plot_error_vs_scale(audit),
                "audit_errors_time.png": _plot_audit_errors(audit),
            }
        )
    for name, fig in figures.items():
        fig.savefig(rd.report / name, dpi=110, bbox_inches="tight")
    index = rd.report / "index.html"
    index.write_text(_html(rd, figures, labels, threshold, audit))
    return index


def _read_audit(rd: RunDirectory) -> dict | None:
    path = rd.audit / "audit.json"
    return json.loads(path.read_text()) if path.is_file() else None


_AUDIT_NAMES = {"recorded": "during the run", "final": "final ensemble", "pretrained": "pretrained model"}


def _plot_reliability(audit: dict):
    fig, ax = _figure()
    for name in ("recorded", "final"):
        curve = audit["predictions"][name].get("reliability", {})
        levels = np.array([float(k) for k in curve])
        ax[0, 0].plot(levels, list(curve.values()), "o-", label=_AUDIT_NAMES[name])
    ax[0, 0].plot([0, 1], [0, 1], "k:", label="ideal")
    n = audit["predictions"]["recorded"]["n_frames"]
    ax[0, 0].set(xlabel="nominal coverage of the predicted interval", ylabel="observed coverage",
                 title=f"Reliability on {n} held-out frames (calibrated Student-t)")  # fmt: skip
    ax[0, 0].legend(fontsize=8)
    return fig


def _plot_error_vs_scale(audit: dict):
    fig, ax = _figure()
    k = audit["threshold_eV"]
    for name in ("recorded", "final"):
        rows = [f[name] for f in audit["frames"]]
        ax[0, 0].loglog([r["energy_scale_eV"] for r in rows], [abs(r["error_eV"]) for r in rows], "o",
                        label=_AUDIT_NAMES[name])  # fmt: skip
    ax[0, 0].axhline(k, color="red", ls="--", label=f"K = {k:.4g} eV")
    lim = np.array(ax[0, 0].get_xlim())
    ax[0, 0].plot(lim, 1.96 * lim, "k:", label="|error| = 1.96 x scale")
    ax[0, 0].set(xlabel="predicted scale (eV)", ylabel="|error| vs DFT (eV)", title="Held-out error vs predicted uncertainty")
    ax[0, 0].legend(fontsize=8)
    return fig


def _plot_audit_errors(audit: dict):
    fig, ax = _figure()
    k = audit["threshold_eV"]
    t = [f["time_fs"] for f in audit["frames"]]
    for name, marker in zip(_AUDIT_NAMES, "os^", strict=True):
        ax[0, 0].semilogy(t, [max(abs(f[name]["error_eV"]), 1e-6) for f in audit["frames"]], marker,
                          label=_AUDIT_NAMES[name], alpha=0.8)  # fmt: skip
    ax[0, 0].axhline(k, color="red", ls="--", label=f"K = {k:.4g} eV")
    ax[0, 0].set(xlabel="MD time (fs)", ylabel="|error| vs DFT (eV)", title="Held-out |error| over the run")
    ax[0, 0].legend(fontsize=8)
    return fig


def _audit_html(audit: dict | None) -> str:
    if audit is None:
        return ("<h2>Held-out audit</h2><p><b>Not audited.</b> The numbers above rest on the run's own "
                "interventions only; run <code>otfparsl audit RUN_DIR</code> to measure the accuracy on "
                "frames the run never labelled.</p>")  # fmt: skip
    head = "<tr><th>prediction</th><th>frames</th><th>above K</th><th>95% CI</th><th>E RMSE (eV)</th><th>F RMSE (eV/Å)</th><th>rms z</th><th>coverage 95%</th><th>AUC(std)</th></tr>"
    rows = ""
    for name, m in audit["predictions"].items():
        low, high = m["fraction_above_threshold_ci95"]
        rows += (
            f"<tr><td>{_AUDIT_NAMES[name]}</td><td>{m['n_frames']}</td><td>{m['n_above_threshold']}</td>"
            f"<td>{low:.2f}-{high:.2f}</td><td>{m['energy_rmse_eV']:.4g}</td><td>{m['forces_rmse_eV_per_A']:.4g}</td>"
            f"<td>{_fmt(m.get('rms_z_calibrated', '-'))}</td><td>{_fmt(m.get('coverage_95', '-'))}</td>"
            f"<td>{_fmt(m.get('auc_roc_std', '-'))}</td></tr>"
        )
    return f"<h2>Held-out audit against DFT</h2><table border=1>{head}{rows}</table>"


def _threshold(rd: RunDirectory) -> float:
    if rd.calibration.is_file():
        return float(json.loads(rd.calibration.read_text())["energy_threshold_eV"])
    import yaml

    return float(yaml.safe_load(rd.run_yaml.read_text())["calibration"]["energy_threshold_eV"])


def _figure(nrows: int = 1):
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, 1, figsize=(7, 2.6 * nrows), squeeze=False, sharex=nrows > 1)


def _plot_dft_calls(steps: list[dict]):
    fig, ax = _figure()
    for walker in sorted({s["walker"] for s in steps}):
        mine = [s for s in steps if s["walker"] == walker]
        t = np.array([s["time_fs"] for s in mine])
        calls = np.cumsum([s["intervened"] for s in mine])
        ax[0, 0].step(t, calls, where="post", label=f"walker {walker}")
    ax[0, 0].set(xlabel="MD time (fs)", ylabel="DFT calls (cumulative)", title="When DFT was called")
    ax[0, 0].legend(loc="lower right")
    return fig


def _plot_errors(labels: list[dict], threshold: float):
    fig, ax = _figure()
    if labels:
        idx = np.arange(1, len(labels) + 1)
        err = np.abs([lb["error_eV"] for lb in labels])
        std = np.array([lb["energy_std"] for lb in labels])
        ax[0, 0].semilogy(idx, err, "o", label="|predicted - DFT| energy")
        ax[0, 0].semilogy(idx, 1.96 * std, "_", ms=12, label="1.96 x predicted std")
    ax[0, 0].axhline(threshold, color="red", ls="--", label=f"K = {threshold:.4g} eV")
    checked = labels[1:]  # the first label fixes the offset: its error is 0 by construction
    above = sum(bool(lb["exceeds_threshold"]) for lb in checked)
    title = f"Error at each DFT call: {above} of {len(checked)} checked interventions above K"
    ax[0, 0].set(xlabel="intervention", ylabel="energy error (eV)", title=title)
    ax[0, 0].legend(fontsize=8)
    return fig


def _plot_z(labels: list[dict]):
    fig, ax = _figure()
    z = np.array([lb["z"] for lb in labels if lb.get("counted")])
    if z.size:
        ax[0, 0].hist(z, bins=max(5, int(np.sqrt(z.size)) + 1), density=True, alpha=0.6, label="z")
        grid = np.linspace(min(-4.0, z.min()), max(4.0, z.max()), 200)
        ax[0, 0].plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), label="N(0, 1)")
        ax[0, 0].legend()
    ax[0, 0].set(xlabel="z = (E_DFT - E_pred) / std", ylabel="density", title=f"z-scores ({z.size} counted)")
    return fig


def _plot_traces(steps: list[dict]):
    fig, ax = _figure(4)
    for walker in sorted({s["walker"] for s in steps}):
        mine = [s for s in steps if s["walker"] == walker]
        t = np.array([s["time_fs"] for s in mine])
        ax[0, 0].plot(t, [s["energy"] for s in mine], lw=0.8)
        ax[1, 0].plot(t, [s["temperature_K"] for s in mine], lw=0.8)
        ax[2, 0].semilogy(t, [s["energy_std"] for s in mine], lw=0.8)
        ax[3, 0].plot(t, [s["confidence"] for s in mine], lw=0.8)
        hits = [s for s in mine if s["intervened"]]
        ax[3, 0].plot([s["time_fs"] for s in hits], [s["confidence"] for s in hits], "rx", ms=4)
    ax[0, 0].set_ylabel("energy (eV)")
    ax[1, 0].set_ylabel("T (K)")
    ax[2, 0].set_ylabel("energy std (eV)")
    ax[3, 0].set(ylabel="confidence", xlabel="MD time (fs)")
    ax[3, 0].axhline(0.95, color="grey", ls=":")
    return fig


def _plot_timings(labels: list[dict], updates: list[dict]):
    fig, ax = _figure()
    ax[0, 0].plot([lb.get("seconds", np.nan) for lb in labels], "o-", label="DFT label (s)")
    ax[0, 0].plot([u["seconds"] for u in updates], "s-", label="update of all chains (s)")
    ax[0, 0].set(xlabel="intervention", ylabel="wall time (s)", title="Cost per intervention")
    ax[0, 0].legend()
    return fig


def _html(rd: RunDirectory, figures: dict, labels: list[dict], threshold: float, audit: dict | None) -> str:
    summary = json.loads(rd.summary.read_text()) if rd.summary.is_file() else {"status": "running or stopped"}
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary.items()
    )
    label_rows = "".join(
        f"<tr><td>{i}</td><td>{lb['step']}</td><td>{lb['walker']}</td>"
        f"<td>{lb['error_eV']:+.5f}</td><td>{lb['energy_std']:.5f}</td>"
        f"<td>{lb['confidence']:.3f}</td><td>{_fmt(lb.get('seconds'))}</td></tr>"
        for i, lb in enumerate(labels, 1)
    )
    images = "".join(f'<h2>{n.removesuffix(".png")}</h2><img src="{n}">' for n in figures)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>otfparsl report</title></head><body>"
        f"<h1>otfparsl run {html.escape(rd.path.name)}</h1><p>Threshold K = {threshold:.5g} eV</p>"
        f"<table border=1>{rows}</table>{_audit_html(audit)}{images}<h2>Interventions</h2><table border=1>"
        "<tr><th>#</th><th>step</th><th>walker</th><th>error (eV)</th><th>std (eV)</th>"
        f"<th>confidence</th><th>DFT s</th></tr>{label_rows}</table></body></html>"
    )


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
