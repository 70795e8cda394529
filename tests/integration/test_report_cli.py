"""``otfparsl run`` / ``otfparsl resume`` write the run's report however they end.

A tiny run (tests/integration/tiny_runs.py) is interrupted with SIGINT (Ctrl-C, to its whole
process group) during a DFT label: the report is written and says the run did not finish; ``otfparsl resume`` finishes it
and rewrites the report. A failing report never masks the run's own outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import group_alive
from tiny_runs import HOLD_ENV, write_run_yaml
from typer.testing import CliRunner

from otfparsl.cli import app

HERE = Path(__file__).parent

pytestmark = pytest.mark.slow


#: Start a command with SIGINT at its default and unblocked, as a shell starts it: a child
#: inherits an ignored or blocked SIGINT, and in the full test session the pytest process may
#: have one (a CI run of the whole suite saw the run ignore the signal; alone it never did).
_WITH_CTRL_C = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); os.execv(sys.argv[1], sys.argv[1:])"
)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, cu_foundation_model):
    """A run stopped by SIGINT (Ctrl-C) during its second DFT label (MD step 10; the first
    update, the checkpoint of step 7 and the chain workers exist by then)."""
    folder = tmp_path_factory.mktemp("interrupted")
    run_dir, holding = folder / "run", folder / "holding"
    path = os.pathsep.join([str(HERE.parents[1]), str(HERE), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, HOLD_ENV: str(holding)}
    yaml_path = write_run_yaml(folder, cu_foundation_model, dft="tiny_runs:HeldEMT")
    command = [sys.executable, "-m", "otfparsl.cli", "run", str(yaml_path), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _WITH_CTRL_C, *command],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not holding.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert holding.is_file(), "the run never reached its second DFT label"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the run and its chain worker processes
    output, _ = proc.communicate(timeout=300)
    deadline = time.monotonic() + 30  # multiprocessing's resource tracker exits just after the run
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return run_dir, proc.returncode, output, group_alive(proc.pid)


def test_an_interrupted_run_writes_its_report(interrupted):
    run_dir, returncode, output, left = interrupted
    assert returncode != 0, output  # stopped by Ctrl-C (click: "Aborted!"), not finished
    assert not left, f"processes {left} of the interrupted run still run"
    assert "report written" in output, output
    page = (run_dir / "report" / "index.html").read_text()
    assert "not finished: interrupted, failed or still running" in page
    assert not json.loads((run_dir / "checkpoint.json").read_text())["done"]


def test_resume_finishes_the_run_and_rewrites_the_report(interrupted):
    run_dir, *_ = interrupted
    result = CliRunner().invoke(app, ["resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "report written" in result.output
    page = (run_dir / "report" / "index.html").read_text()
    assert "finished (checkpoint.json: done)" in page
    labels = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if '"label"' in line]
    assert f"All {len(labels)} interventions" in page


def test_a_failing_report_never_masks_the_runs_outcome(interrupted, monkeypatch):
    import otfparsl.analysis.report
    import otfparsl.workflow.driver
    from otfparsl.errors import TooManyLabelFailures

    run_dir, *_ = interrupted

    def broken(*args, **kwargs):
        raise RuntimeError("the report broke")

    monkeypatch.setattr(otfparsl.analysis.report, "write_report", broken)
    result = CliRunner().invoke(app, ["resume", str(run_dir)])  # a finished run: nothing to do
    assert result.exit_code == 0, result.output
    assert "report not written: RuntimeError: the report broke" in " ".join(result.output.split())

    def failing_run(*args, **kwargs):  # a run that started (events.jsonl exists) and failed
        raise TooManyLabelFailures("3 DFT labels failed in a row")

    monkeypatch.setattr(otfparsl.workflow.driver, "resume", failing_run)
    result = CliRunner().invoke(app, ["resume", str(run_dir)])
    assert result.exit_code == 2  # the run's own error, as one line ...
    assert "TooManyLabelFailures: 3 DFT labels failed in a row" in result.output
    assert "report not written" in result.output  # ... and the report's failure only logged
    monkeypatch.undo()
    monkeypatch.setattr(otfparsl.workflow.driver, "resume", failing_run)
    before = (run_dir / "report" / "index.html").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["resume", str(run_dir)])
    assert result.exit_code == 2 and "report written" in result.output
    assert (run_dir / "report" / "index.html").stat().st_mtime_ns > before
