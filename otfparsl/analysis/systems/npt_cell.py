"""A periodic run under NPT: the cell volume and the pressure the MD used, next to the DFT calls.

For each trajectory frame: the volume (Å^3), the lattice lengths (Å) and the pressure
P = -tr(stress)/3 (GPa) of the stress the MD step used (DFT's on an intervention, the ensemble
mean otherwise; the potential part only, without the kinetic term nkT/V), with the ensemble's std of P where the frame records ``stress_std``
(the diagonal stds combined as independent, sqrt(sum sigma_ii^2)/3). Per segment of the
programme: the target pressure, the mean volume and pressure over the segment's second half,
and the DFT calls. The figure shows volume and pressure over time with the target pressures and
the DFT calls.
"""

from __future__ import annotations

import numpy as np
from ase import units

from otfparsl.analysis.systems import SystemAnalysis
from otfparsl.analysis.systems._series import RunSeries, read_programme
from otfparsl.errors import ConfigurationError
from otfparsl.run.directory import RunDirectory

GPA_PER_EV_PER_A3 = 1.0 / units.GPa


def _pressure_GPa(frame) -> tuple[float, float]:
    stress = frame.calc.results.get("stress") if frame.calc is not None else None
    if stress is None:
        return float("nan"), float("nan")
    stress = np.asarray(stress, dtype=float)
    diag = stress[:3] if stress.shape == (6,) else np.diag(stress)
    std = frame.info.get("stress_std")
    sigma = float(np.sqrt(np.sum(np.asarray(std, dtype=float)[:3] ** 2)) / 3.0) if std is not None else float("nan")
    return float(-diag.mean() * GPA_PER_EV_PER_A3), sigma * GPA_PER_EV_PER_A3


def analyse(rd: RunDirectory) -> tuple[dict, object]:
    """Volume, lattice lengths and pressure over an NPT run, per frame and per segment."""
    import matplotlib.pyplot as plt

    series = RunSeries.read(rd)
    if not np.all(series.frames[0].pbc):
        raise ConfigurationError("the npt_cell analysis needs a periodic cell; this run has none")
    volume = np.array([f.get_volume() for f in series.frames])
    lengths = np.array([f.cell.lengths() for f in series.frames])
    pressure = np.array([_pressure_GPa(f) for f in series.frames])
    t = series.frame_time_fs
    segments = []
    for seg in read_programme(rd):
        half = (t >= seg.start_fs + (seg.end_fs - seg.start_fs) / 2) & (t <= seg.end_fs)
        calls = (series.segment == seg.index) & series.called
        target = _target_GPa(rd, seg.index)
        segments.append({
            "index": seg.index, "ensemble": seg.ensemble, "target_pressure_GPa": target,
            "start_fs": seg.start_fs, "end_fs": seg.end_fs, "dft_calls": int(calls.sum()),
            "mean_volume_A3_second_half": float(volume[half].mean()) if half.any() else None,
            "mean_pressure_GPa_second_half": float(np.nanmean(pressure[half, 0])) if half.any() else None,
        })  # fmt: skip
    result = {
        "analysis": "npt_cell", "n_frames": len(volume), "volume_A3_first": float(volume[0]),
        "volume_A3_last": float(volume[-1]), "volume_change_percent": float(100 * (volume[-1] / volume[0] - 1)),
        "segments": segments,
        "frames": {"time_fs": t.tolist(), "volume_A3": volume.tolist(), "lengths_A": lengths.tolist(),
                   "pressure_GPa": pressure[:, 0].tolist(), "pressure_std_GPa": pressure[:, 1].tolist()},
    }  # fmt: skip
    fig, (ax_v, ax_p) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    ax_v.plot(t, volume, "-", color="tab:blue")
    ax_v.set(ylabel="volume (Å$^3$)", title=f"NPT cell: volume {result['volume_change_percent']:+.2f} % over the run")
    ax_p.errorbar(t, pressure[:, 0], yerr=np.nan_to_num(pressure[:, 1]), fmt=".", ms=3, color="0.3",
                  ecolor="0.7", label="pressure the MD used (± ensemble std)")  # fmt: skip
    for seg in segments:
        ax_p.hlines(seg["target_pressure_GPa"], seg["start_fs"], seg["end_fs"], color="tab:green", label=None)
    ax_p.plot([], [], color="tab:green", label="target pressure")
    for ax in (ax_v, ax_p):
        ax.vlines(series.call_times_fs, 0, 0.06, transform=ax.get_xaxis_transform(), color="tab:red")
    ax_p.plot([], [], color="tab:red", label="DFT call")
    ax_p.set(xlabel="time (fs)", ylabel="pressure (GPa)")
    ax_p.legend(fontsize=8, loc="best")
    return result, fig


def _target_GPa(rd: RunDirectory, index: int) -> float | None:
    import yaml

    seg = (yaml.safe_load(rd.run_yaml.read_text()) or {})["md"]["segments"][index]
    return float(seg.get("pressure_bar", 1.0)) * 1e-4 if seg.get("ensemble") == "npt" else None


ANALYSIS = SystemAnalysis(
    name="npt_cell", run=analyse,
    summary="NPT runs: cell volume, lattice lengths and the pressure the MD used (with its std) vs the target, DFT calls",
)  # fmt: skip
