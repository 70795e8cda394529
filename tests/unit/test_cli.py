"""The command line: validate prints resolved settings; bad input gets one line, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from otfparsl.cli import app

ETHANOL = Path(__file__).resolve().parents[2] / "workflows" / "ethanol" / "run.yaml"


def test_validate_prints_the_resolved_settings():
    result = CliRunner().invoke(app, ["validate", str(ETHANOL)])
    assert result.exit_code == 0, result.output
    assert "energy_threshold_eV: 0.0434" in result.output
    assert "n_chains: 8" in result.output
    assert "9 atoms (C2H6O)" in result.output


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("structure: mol.xyz\nmd: {segments: [{duration_fs: 5}]}\ncalibraton: {}\n", "Did you mean 'calibration'"),
        ("structure: missing.xyz\nmd: {segments: [{duration_fs: 5}]}\n", "does not exist"),
        ("structure: overlap.xyz\nmd: {segments: [{duration_fs: 5}]}\n", "overlapping atoms"),
        ("structure: mol.xyz\nmd: {segments: [{duration_fs: 5}]}\ncalibration: {confidence: 95}\n", "Did you mean 0.95"),
    ],
)
def test_bad_input_is_one_line_without_traceback(tmp_path, yaml_text, expected):
    (tmp_path / "mol.xyz").write_text("2\n\nH 0 0 0\nH 0 0 0.74\n")
    (tmp_path / "overlap.xyz").write_text("2\n\nH 0 0 0\nH 0 0 0.1\n")
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml_text)
    result = CliRunner().invoke(app, ["validate", str(run_yaml)])
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output


def test_existing_run_directory_is_not_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.yaml").write_text("name: old\n")
    result = CliRunner().invoke(app, ["run", str(ETHANOL), "--run-dir", str(run_dir)])
    assert result.exit_code == 2
    assert "already holds a run" in result.output
    assert (run_dir / "run.yaml").read_text() == "name: old\n"


def test_existing_run_with_other_settings_is_not_resumed(tmp_path):
    from otfparsl.settings import RunSettings

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    other = RunSettings.from_yaml(ETHANOL).model_copy(update={"bayes": RunSettings.from_yaml(ETHANOL).bayes.model_copy(update={"n_chains": 4})})
    (run_dir / "run.yaml").write_text(other.to_yaml())
    before = (run_dir / "run.yaml").read_text()
    result = CliRunner().invoke(app, ["run", str(ETHANOL), "--run-dir", str(run_dir)])
    assert result.exit_code == 2
    assert "holds a run with other settings (bayes differ)" in result.output
    assert (run_dir / "run.yaml").read_text() == before and sorted(p.name for p in run_dir.iterdir()) == ["run.yaml"]
