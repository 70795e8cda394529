"""LaMnO3: order parameters of the orthorhombic phase over time, next to the DFT calls.

Method.md section 7 (the paper's LaMnO3 run): NPT at 1 bar, 300 K -> 800 K -> 300 K; DFT calls
stop early at 300 K, resume after the jump to 800 K and decay. Near 750 K LaMnO3 loses its
cooperative Jahn-Teller (orbital) order: the orthorhombic O' phase (c/sqrt(2) < a < b) turns
into the nearly cubic O phase (Rodriguez-Carvajal et al., PRB 57, R3189 (1998)).

Per trajectory frame this analysis reads, from the NPT cell of the workflow's 2x2x2
pseudo-cubic supercell (cell vectors ``A1 = a + b``, ``A2 = b - a``, ``A3 = c`` of the
orthorhombic cell, :mod:`otfparsl.analysis.systems._lamno3_structure`) or of the small
variant's 20-atom Pbnm cell (``a``, ``b``, ``c``):

- the orthorhombic lattice parameters ``a = |A1 - A2| / 2``, ``b = |A1 + A2| / 2``,
  ``c = |A3|`` and the pseudo-cubic ones ``a / sqrt(2)``, ``b / sqrt(2)``, ``c / 2`` (Å);
- the orthorhombic strain ``s = 2 (b - a) / (a + b)`` (0.037 in the room-temperature
  structure, near 0 in the O phase);

and from the atoms the Jahn-Teller distortion of the MnO6 octahedra,

    sigma_JT = < sqrt( (1/6) sum_{i=1..6} (d_i - <d>)^2 ) >_Mn,

the rms deviation of each Mn's six nearest Mn-O distances d_i (minimum image) from their mean,
averaged over the Mn atoms (0.116 Å in the published structure, 0 in an ideal perovskite).
DFT calls are counted per segment of the temperature programme (calls per ps) and in time bins.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.geometry import get_distances

from otfparsl.analysis.systems import SystemAnalysis
from otfparsl.analysis.systems._series import ProgrammeSegment, RunSeries, read_programme
from otfparsl.errors import ConfigurationError
from otfparsl.run.directory import RunDirectory

#: Width of the time bins of the DFT-call rate, fs (runs shorter than 20 bins use a 20th of the run).
BIN_FS = 2500.0


def orthorhombic_lattice(cell: np.ndarray, n_formula_units: int = 8) -> tuple[float, float, float]:
    """Return the orthorhombic a, b, c (Å) of a LaMnO3 cell of the workflows.

    Parameters
    ----------
    cell
        ``(3, 3)`` cell matrix, Å: for 8 formula units the 2x2x2 pseudo-cubic supercell (rows
        ``A1 = a + b``, ``A2 = b - a``, ``A3 = c``, ``workflows/lamno3/run.yaml``); for 4 the
        20-atom Pbnm cell itself (rows ``a``, ``b``, ``c``, ``run_small.yaml``).
    n_formula_units
        Formula units (Mn atoms) in the cell: 8 or 4.
    """
    a1, a2, a3 = np.asarray(cell, dtype=float)
    if n_formula_units == 4:
        return float(np.linalg.norm(a1)), float(np.linalg.norm(a2)), float(np.linalg.norm(a3))
    if n_formula_units != 8:
        raise ConfigurationError(
            f"the LaMnO3 analysis reads the lattice of the 20-atom Pbnm cell or of the 40-atom "
            f"2x2x2 pseudo-cubic supercell; this cell has {n_formula_units} formula units"
        )
    return (
        float(np.linalg.norm(a1 - a2) / 2),
        float(np.linalg.norm(a1 + a2) / 2),
        float(np.linalg.norm(a3)),
    )


def orthorhombic_strain(a_A: float, b_A: float) -> float:
    """Return the orthorhombic strain ``2 (b - a) / (a + b)`` (dimensionless) of lengths in Å."""
    return 2.0 * (b_A - a_A) / (a_A + b_A)


def mn_o_bonds(atoms: Atoms) -> np.ndarray:
    """Return the six shortest Mn-O distances of every Mn, ``(n_Mn, 6)`` in Å, sorted per Mn.

    Distances use the minimum image of the (possibly sheared) periodic cell.
    """
    symbols = np.array(atoms.get_chemical_symbols())
    mn, o = np.flatnonzero(symbols == "Mn"), np.flatnonzero(symbols == "O")
    if mn.size == 0 or o.size < 6:
        raise ConfigurationError(
            f"the LaMnO3 analysis needs Mn atoms with six O neighbours; got {atoms.get_chemical_formula()}. "
            "Use analyses: [lamno3_order] only for LaMnO3 runs"
        )
    _, dist = get_distances(atoms.positions[mn], atoms.positions[o], cell=atoms.cell, pbc=atoms.pbc)
    return np.sort(dist, axis=1)[:, :6]


def jahn_teller_rms(atoms: Atoms) -> float:
    """Return sigma_JT (Å): the rms deviation of the six Mn-O bonds from their mean, averaged over Mn."""
    bonds = mn_o_bonds(atoms)
    return float(
        np.mean(np.sqrt(np.mean((bonds - bonds.mean(axis=1, keepdims=True)) ** 2, axis=1)))
    )


def order_parameters(frames: list[Atoms]) -> dict[str, np.ndarray]:
    """Per-frame pseudo-cubic lattice parameters (Å), orthorhombic strain and sigma_JT (Å)."""
    lattice = np.array(
        [orthorhombic_lattice(np.asarray(f.cell), f.get_chemical_symbols().count("Mn")) for f in frames]
    )
    return {
        "a_pc_A": lattice[:, 0] / np.sqrt(2.0), "b_pc_A": lattice[:, 1] / np.sqrt(2.0), "c_pc_A": lattice[:, 2] / 2.0,
        "orthorhombic_strain": orthorhombic_strain(lattice[:, 0], lattice[:, 1]),
        "jahn_teller_rms_A": np.array([jahn_teller_rms(f) for f in frames]),
        "volume_per_formula_unit_A3": np.array([f.get_volume() / np.sum(np.array(f.get_chemical_symbols()) == "Mn") for f in frames]),
    }  # fmt: skip


def call_rates(
    series: RunSeries, programme: list[ProgrammeSegment], bin_fs: float | None = None
) -> dict:
    """DFT calls per ps in each segment (and in its two halves) and in time bins of ``bin_fs`` (fs).

    The time covered is that of the MD steps logged (a run stopped early covers less than its
    programme): every logged step counts its segment's time step.
    """
    if len(series.segment) and int(series.segment.max()) >= len(programme):
        raise ConfigurationError(
            f"events.jsonl has MD steps of segment {int(series.segment.max())} but run.yaml's "
            f"programme has {len(programme)} segment(s); the run directory's run.yaml does not "
            "belong to its events (analyse the run directory the run wrote)"
        )
    dt = (
        np.array([programme[s].timestep_fs for s in series.segment])
        if len(series.segment)
        else np.zeros(0)
    )
    segments = []
    for seg in programme:
        here = series.segment == seg.index
        covered_ps = float(dt[here].sum()) / 1000.0
        middle = seg.start_fs + 0.5 * (seg.end_fs - seg.start_fs)
        calls = series.called & here
        segments.append({
            "segment": seg.index, "ensemble": seg.ensemble, "temperature_K": seg.temperature_K,
            "start_fs": seg.start_fs, "end_fs": seg.end_fs, "steps": int(here.sum()), "covered_ps": covered_ps,
            "calls": int(calls.sum()), "calls_per_ps": int(calls.sum()) / covered_ps if covered_ps else None,
            "calls_first_half": int((calls & (series.step_time_fs < middle)).sum()),
            "calls_second_half": int((calls & (series.step_time_fs >= middle)).sum()),
        })  # fmt: skip
    end = max(programme[-1].end_fs, float(series.step_time_fs.max(initial=0.0)))
    bin_fs = min(BIN_FS, end / 20.0) if bin_fs is None else bin_fs
    edges = np.append(np.arange(0.0, end, bin_fs), end)
    which = np.clip(
        np.searchsorted(edges, series.step_time_fs, side="right") - 1, 0, len(edges) - 2
    )
    covered = np.bincount(which, weights=dt, minlength=len(edges) - 1) / 1000.0
    counts = np.bincount(which[series.called], minlength=len(edges) - 1)
    rate = np.divide(counts, covered, out=np.full(covered.shape, np.nan), where=covered > 0)
    bins = {"bin_fs": bin_fs, "start_fs": edges[:-1].tolist(), "end_fs": edges[1:].tolist(), "calls": counts.tolist(),
            "calls_per_ps": [None if np.isnan(r) else float(r) for r in rate]}  # fmt: skip
    return {"segments": segments, "bins": bins}


def frame_segments(
    frames: list[Atoms], times_fs: np.ndarray, programme: list[ProgrammeSegment]
) -> np.ndarray:
    """Segment index of every frame: its ``segment`` info (as the walkers write it), else by time."""
    starts = np.array([seg.start_fs for seg in programme])
    by_time = np.clip(np.searchsorted(starts, times_fs, side="right") - 1, 0, len(programme) - 1)
    return np.array([int(f.info.get("segment", k)) for f, k in zip(frames, by_time, strict=True)])


def _segment_means(segment_of_frame: np.ndarray, times_fs: np.ndarray, values: dict[str, np.ndarray],
                   programme: list[ProgrammeSegment]) -> list[dict]:  # fmt: skip
    """Mean and std of each order parameter over the frames of the second half of every segment."""
    out = []
    for seg in programme:
        tail = (segment_of_frame == seg.index) & (
            times_fs >= seg.start_fs + 0.5 * (seg.end_fs - seg.start_fs)
        )
        row: dict = {
            "segment": seg.index,
            "temperature_K": seg.temperature_K,
            "n_frames": int(tail.sum()),
        }
        for key, series in values.items():
            row[key] = (
                {"mean": float(series[tail].mean()), "std": float(series[tail].std())}
                if tail.any()
                else None
            )
        out.append(row)
    return out


def analyse(rd: RunDirectory, bin_fs: float | None = None) -> tuple[dict, object]:
    """Order parameters per frame, their means per segment, and the DFT-call rates per segment."""
    series = RunSeries.read(rd)
    programme = read_programme(rd)
    values = order_parameters(series.frames)
    rates = call_rates(series, programme, bin_fs)
    result = {
        "analysis": "lamno3_order", "n_frames": len(series.frames), "n_dft_calls": int(series.called.sum()),
        "reference_room_temperature": {"orthorhombic_strain": 0.0373, "jahn_teller_rms_A": 0.116,
                                       "source": "Rodriguez-Carvajal et al., PRB 57, R3189 (1998)"},
        "segment_means_second_half": _segment_means(
            frame_segments(series.frames, series.frame_time_fs, programme), series.frame_time_fs, values, programme
        ),
        "dft_call_rates": rates,
        "frames": {"time_fs": series.frame_time_fs.tolist(), **{k: v.tolist() for k, v in values.items()}},
    }  # fmt: skip
    return result, _figure(series, programme, values, rates)


def _figure(
    series: RunSeries, programme: list[ProgrammeSegment], values: dict, rates: dict
) -> object:
    import matplotlib.pyplot as plt

    t_ps = series.frame_time_fs / 1000.0
    fig, (ax_lat, ax_jt, ax_dft) = plt.subplots(3, 1, figsize=(8.5, 7.5), sharex=True)
    for key, label in (("a_pc_A", "a/√2"), ("b_pc_A", "b/√2"), ("c_pc_A", "c/2")):
        ax_lat.plot(t_ps, values[key], lw=0.8, label=label)
    ax_lat.set(ylabel="pseudo-cubic (Å)")
    ax_lat.legend(loc="upper left", fontsize=8, ncol=3)
    ax_t = ax_lat.twinx()
    ax_t.step([s.start_fs / 1000 for s in programme] + [programme[-1].end_fs / 1000],
              [s.temperature_K for s in programme] + [programme[-1].temperature_K], where="post", color="0.5", ls="--")  # fmt: skip
    ax_t.set_ylabel("target T (K)", color="0.4")
    ax_jt.plot(
        t_ps, values["jahn_teller_rms_A"], color="tab:purple", lw=0.8, label="σ_JT (Mn-O rms)"
    )
    ax_jt.set_ylabel("σ_JT (Å)")
    ax_s = ax_jt.twinx()
    ax_s.plot(t_ps, values["orthorhombic_strain"], color="tab:green", lw=0.8, ls=":")
    ax_s.set_ylabel("2(b-a)/(a+b)", color="tab:green")
    ax_jt.plot([], [], color="tab:green", ls=":", label="orthorhombic strain (right)")
    ax_jt.legend(loc="upper left", fontsize=8)
    bins = rates["bins"]
    starts = np.array(bins["start_fs"]) / 1000.0
    heights = [0.0 if r is None else r for r in bins["calls_per_ps"]]
    widths = (np.array(bins["end_fs"]) - np.array(bins["start_fs"])) / 1000.0
    ax_dft.bar(
        starts,
        heights,
        width=widths,
        align="edge",
        color="tab:red",
        alpha=0.5,
        label="DFT calls per ps (bins)",
    )
    ax_dft.vlines(
        series.call_times_fs / 1000.0, 0, max(max(heights, default=0.0), 1.0) * 0.1, color="tab:red"
    )
    ax_dft.set(
        xlabel="time (ps)", ylabel="DFT calls per ps", xlim=(0.0, programme[-1].end_fs / 1000.0)
    )
    ax_dft.legend(loc="upper right", fontsize=8)
    for ax in (ax_lat, ax_jt, ax_dft):
        for seg in programme[1:]:
            ax.axvline(seg.start_fs / 1000.0, color="0.6", lw=0.8)
    per_segment = ", ".join(
        f"{s['temperature_K']:g} K: {s['calls']} ({'n/a' if s['calls_per_ps'] is None else format(s['calls_per_ps'], '.2g')}/ps)"
        for s in rates["segments"]
    )
    fig.suptitle(f"LaMnO3 order parameters; DFT calls per segment: {per_segment}", fontsize=9)
    fig.tight_layout()
    return fig


ANALYSIS = SystemAnalysis(
    name="lamno3_order", run=analyse,
    summary="LaMnO3: pseudo-cubic lattice, orthorhombic strain, Jahn-Teller distortion over time; DFT calls per ps per segment",
)  # fmt: skip
