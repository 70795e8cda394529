"""The whole on-the-fly loop on a tiny MACE with EMT as the reference (thread executors)."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from otfparsl.run.directory import read_events
from otfparsl.settings import RunSettings
from otfparsl.workflow.driver import run
from otfparsl.workflow.submit import ThreadSubmitter


def _settings(model_path: str, n_md_steps: int, **calibration) -> RunSettings:
    return RunSettings.from_dict(
        {
            "name": "cu",
            "structure": "unused.xyz",
            "model": {"family": "mace", "source": model_path, "dtype": "float64", "chain_device": "cpu"},
            "bayes": {
                "n_chains": 4, "n_steps": 60, "noise_off_steps": 12, "noise_ramp_steps": 3,
                "step_size": 1e-4, "seed": 3,
            },
            "calibration": {"energy_threshold_eV": 0.006, **calibration},
            "labeler": {"kind": "ase", "options": {"name": "emt"}},
            "md": {
                "segments": [{"ensemble": "langevin", "temperature_K": 300, "duration_fs": n_md_steps * 2.0, "timestep_fs": 2.0}],
                "seed": 5,
                "trajectory_interval": 5,
            },
        }
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cu_foundation_model):
    tmp_path = tmp_path_factory.mktemp("otf")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    settings = _settings(cu_foundation_model, n_md_steps=200)
    with ThreadSubmitter(chain_workers=2) as submitter:
        result = run(settings, submitter=submitter, run_dir=tmp_path / "run", structure=atoms)
    return result, read_events(tmp_path / "run" / "events.jsonl")


@pytest.mark.slow
def test_first_step_is_labelled_and_every_label_is_written(finished_run):
    result, events = finished_run
    steps = [e for e in events if e["event"] == "step"]
    labels = [e for e in events if e["event"] == "label"]
    assert steps[0]["step"] == 0 and steps[0]["intervened"]
    assert labels[0]["step"] == 0
    assert len(steps) == 201  # the initial force call + 200 MD steps
    written = ase.io.read(result.run_dir / "labels.extxyz", ":")
    assert len(written) == len(labels) == result.dft_calls
    assert [a.info["step"] for a in written] == [lb["step"] for lb in labels]
    assert sum(s["intervened"] for s in steps) == len(labels)
    counted = sum(lb["counted"] for lb in labels)
    assert counted >= 1 and result.as_dict()["calibration_basis"].startswith(f"{counted} counted interventions")


@pytest.mark.slow
def test_intervention_steps_use_the_dft_result(finished_run):
    from ase.calculators.emt import EMT

    result, events = finished_run
    offset = next(e for e in events if e["event"] == "label")
    offset_eV = offset["energy_pred"] - offset["energy_dft"]
    frames = ase.io.read(result.run_dir / "trajectory.extxyz", ":")
    checked = 0
    for frame in frames:
        if not frame.info["intervened"]:
            continue
        reference = frame.copy()
        reference.calc = EMT()
        assert frame.get_potential_energy() == pytest.approx(reference.get_potential_energy() + offset_eV, abs=1e-8)
        np.testing.assert_allclose(frame.get_forces(), reference.get_forces(), atol=1e-8)
        checked += 1
    assert checked >= 1


@pytest.mark.slow
def test_dft_calls_become_rarer_as_the_model_learns(finished_run):
    result, events = finished_run
    steps = [e for e in events if e["event"] == "step"]
    first_half = sum(s["intervened"] for s in steps[:100])
    second_half = sum(s["intervened"] for s in steps[100:])
    assert result.dft_calls >= 2
    assert second_half < first_half
    updates = [e for e in events if e["event"] == "update"]
    assert len(updates) == result.dft_calls
    assert [u["generation"] for u in updates] == list(range(1, len(updates) + 1))


@pytest.mark.slow
def test_ensemble_of_the_run_loads_in_one_call(finished_run):
    from otfparsl.calculators.ensemble import EnsembleCalculator

    result, _ = finished_run
    calc = EnsembleCalculator.from_run(result.run_dir)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.calc = calc
    assert calc.n_members == 4
    assert np.isfinite(atoms.get_potential_energy())
    assert calc.results["energy_std"] > 0


@pytest.mark.slow
def test_report_shows_every_intervention(finished_run):
    from otfparsl.analysis.report import write_report

    result, events = finished_run
    index = write_report(result.run_dir)
    html = index.read_text()
    for name in ("dft_calls.png", "errors.png", "calibration.png", "traces.png", "time_split.png"):
        assert (index.parent / name).stat().st_size > 1000
        assert f'href="{name}"' in html
    labels = [e for e in events if e["event"] == "label"]
    table = html.split(f"All {len(labels)} interventions")[1].split("</table>")[0]
    assert table.count("<tr>") == len(labels) + 1  # the header and one row per DFT label


@pytest.mark.slow
def test_production_md_runs_the_frozen_ensemble_with_its_seeds(finished_run, tmp_path):
    import json

    from typer.testing import CliRunner

    from otfparsl.calculators.ensemble import EnsembleCalculator
    from otfparsl.cli import app

    result, _ = finished_run
    rd = result.run_dir
    labels_before = (rd / "labels.extxyz").read_bytes()
    args = ["md", str(rd), "--temperature-K", "300", "--duration-fs", "40", "--timestep-fs", "2",
            "--runs", "2", "--seed", "7", "--trajectory-interval", "2"]  # fmt: skip
    cli = CliRunner().invoke(app, args)
    assert cli.exit_code == 0, cli.output
    summary = json.loads((rd / "md" / "production.json").read_text())
    assert [r["seed"] for r in summary["runs"]] == [7, 8]
    level = summary["confidence_level"]
    ensemble = EnsembleCalculator.from_run(rd)
    last_positions = []
    for run_summary in summary["runs"]:
        out = rd / "md" / f"production_seed{run_summary['seed']}"
        steps = read_events(out / "steps.jsonl")
        assert [s["step"] for s in steps] == list(range(21))  # the start + 20 steps, each once
        assert [s["time_fs"] for s in steps] == [2.0 * k for k in range(21)]
        assert run_summary["steps_below_level"] == sum(s["confidence"] < level for s in steps)
        assert run_summary["min_confidence"] == min(s["confidence"] for s in steps)
        frames = ase.io.read(out / "trajectory.extxyz", ":")
        assert len(frames) == 11 and "forces_std" in frames[-1].arrays
        frame = frames[-1].copy()
        frame.calc = ensemble  # the frozen ensemble, no DFT: the logged energy is its prediction
        # extxyz keeps positions to 1e-8 Å: the re-evaluated energy agrees to ~1e-9 eV
        assert frame.get_potential_energy() == pytest.approx(frames[-1].get_potential_energy(), abs=1e-6)
        assert run_summary["msd"]["Cu"]["msd_A2"][0] == 0.0 and run_summary["msd"]["Cu"]["msd_A2"][-1] > 0.0
        last_positions.append(frames[-1].positions)
    assert not np.allclose(*last_positions)  # independent seeds
    assert (rd / "labels.extxyz").read_bytes() == labels_before  # production never labels


@pytest.mark.slow
def test_production_md_warns_where_the_run_promised_nothing(finished_run, tmp_path, caplog):
    import json

    from otfparsl.production import production_md
    from otfparsl.settings import MDSettings

    result, _ = finished_run
    squeezed = bulk("Cu", "fcc", a=3.2, cubic=True)  # 11 % compressed: far from every label
    squeezed.rattle(0.05, seed=1)
    ase.io.write(tmp_path / "squeezed.extxyz", squeezed)
    md = MDSettings(segments=[{"ensemble": "nve", "temperature_K": 300, "duration_fs": 6, "timestep_fs": 2}])
    with caplog.at_level("WARNING", logger="otfparsl.production"):
        summary = production_md(result.run_dir, md, [0], name="squeezed", start=str(tmp_path / "squeezed.extxyz"))
    run_summary = summary["runs"][0]
    assert run_summary["steps_below_level"] == run_summary["n_steps"] == 4
    assert run_summary["stretches_below_level"] == 1
    warnings = [r for r in caplog.records if "below the run's level" in r.getMessage()]
    assert len(warnings) == 1 and "step 0" in warnings[0].getMessage()
    saved = json.loads((result.run_dir / "md" / "squeezed_seed0" / "summary.json").read_text())
    assert saved["steps_below_level"] == 4
