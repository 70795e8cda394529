"""otfparsl never deletes, nor writes among, files that are not a run of its own.

Each check is a real ``otfparsl`` process (or a real run killed with SIGKILL) on real folders:
``--restart-from-scratch`` on a folder holding a thesis and a ``.git/``, ``--run-dir .``, a run
directory that holds the YAML, a run named ``..``, and a restart of a real run, which moves the
old run aside instead of deleting it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_runs import write_run_yaml

HERE = Path(__file__).parent


def _otfparsl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1])])}
    return subprocess.run(
        [sys.executable, "-m", "otfparsl.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _refused(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ConfigurationError"), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _thesis(folder: Path) -> dict[Path, bytes]:
    (folder / ".git").mkdir(parents=True)
    files = {folder / "thesis.tex": b"\\documentclass{article}\n", folder / ".git" / "HEAD": b"ref: refs/heads/main\n"}
    for path, content in files.items():
        path.write_bytes(content)
    return files


def _in_process(*args: str, cwd: Path, monkeypatch) -> subprocess.CompletedProcess:
    """The same command through typer's runner in this process (cheaper than a new Python)."""
    from typer.testing import CliRunner

    from otfparsl.cli import app

    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(app, list(args))
    return subprocess.CompletedProcess(args, result.exit_code, "", result.output)


@pytest.mark.slow
def test_a_folder_that_holds_no_run_is_never_cleared_nor_written(cu_foundation_model, tmp_path, monkeypatch):
    project = tmp_path / "project"
    run_yaml = write_run_yaml(project, cu_foundation_model)
    files = _thesis(tmp_path / "thesis")
    _refused(_otfparsl("run", str(run_yaml), "--run-dir", str(tmp_path / "thesis"), "--restart-from-scratch", cwd=tmp_path),
             "--restart-from-scratch refused", "does not hold a run", ".git/", "thesis.tex")  # fmt: skip
    _refused(_in_process("run", str(run_yaml), "--run-dir", str(tmp_path / "thesis"), cwd=tmp_path, monkeypatch=monkeypatch),
             "not a run of otfparsl", "new or empty directory")  # fmt: skip
    # the working directory, the YAML's folder and an ancestor of it are never run directories
    _refused(_in_process("run", "run.yaml", "--run-dir", ".", "--restart-from-scratch", cwd=project, monkeypatch=monkeypatch),
             "current directory")  # fmt: skip
    _refused(_in_process("run", str(run_yaml), "--run-dir", str(project), cwd=tmp_path, monkeypatch=monkeypatch), "run.yaml")
    _refused(_in_process("run", str(run_yaml), "--run-dir", str(tmp_path), cwd=project, monkeypatch=monkeypatch),
             "current directory")  # fmt: skip
    assert all(path.read_bytes() == content for path, content in files.items())
    assert sorted(p.name for p in (tmp_path / "thesis").iterdir()) == [".git", "thesis.tex"]
    assert sorted(p.name for p in project.iterdir()) == ["cu.extxyz", "run.yaml"]


@pytest.mark.slow
def test_a_run_name_is_a_plain_name(cu_foundation_model, tmp_path, monkeypatch):
    run_yaml = write_run_yaml(tmp_path / "project", cu_foundation_model)
    settings = yaml.safe_load(run_yaml.read_text())
    run_yaml.write_text(yaml.safe_dump({**settings, "name": ".."}))
    proc = _otfparsl("run", str(run_yaml), cwd=tmp_path)
    assert proc.returncode == 2 and "name" in proc.stderr, proc.stderr
    run_yaml.write_text(yaml.safe_dump({**settings, "name": "a/b"}))
    proc = _in_process("run", str(run_yaml), cwd=tmp_path, monkeypatch=monkeypatch)
    assert proc.returncode == 2 and "name" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # no runs/ written anywhere


def _killed_session(run_dir: Path, model: str, kill: str, restart: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1])])}
    env["OTFPARSL_TEST_RESTART"] = "1" if restart else "0"
    return subprocess.run(
        [sys.executable, str(HERE / "killable_run.py"), str(run_dir), model, kill],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_restart_from_scratch_moves_the_old_run_aside(cu_foundation_model, tmp_path):
    run_dir = tmp_path / "run"
    first_dft = "dft:label_00000"  # killed in its first DFT call: chains, settings and structure written
    assert _killed_session(run_dir, cu_foundation_model, first_dft, restart=False).returncode == -signal.SIGKILL
    old = {p.name for p in run_dir.iterdir()}
    (run_dir / "notes.txt").write_text("mine\n")  # a file the user put in the run directory
    proc = _killed_session(run_dir, cu_foundation_model, first_dft, restart=True)
    assert proc.returncode == 1 and "also holds files otfparsl did not write (notes.txt)" in proc.stderr
    (run_dir / "notes.txt").unlink()

    assert _killed_session(run_dir, cu_foundation_model, first_dft, restart=True).returncode == -signal.SIGKILL
    (trash,) = tmp_path.glob("run.trash-*")
    assert {p.name for p in trash.iterdir()} == old - {".lock"}  # the old run, whole
    assert {"run.yaml", "structure.extxyz", "chains", "dft"} <= old
    assert (trash / "dft" / "label_00000" / "partial_output.txt").is_file()
    assert (run_dir / "dft" / "label_00000" / "partial_output.txt").is_file()  # the new run's own
