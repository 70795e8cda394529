"""The run report in a real browser: Debian's headless Chromium opens ``report/index.html``.

A tiny run made by ``otfparsl run`` (which writes the report when it ends), audited on 4
held-out frames by the real audit code, with a workflow's own analysis in ``analysis/``, then
``otfparsl report``. The page must load from the file system, every figure must decode
(naturalWidth > 0), and the browser must log no error; the numbers on the page must be the
run's own. Skips without chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import json

import pytest
from headless_chromium import find_chromium, open_page
from tiny_runs import K_EV, write_run_yaml
from typer.testing import CliRunner

from otfparsl.cli import app
from otfparsl.units import KCAL_PER_MOL_EV

CHROMIUM = find_chromium()
N_AUDIT_FRAMES = 4

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _needs_chromium() -> None:
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium); not installed here")


def _workflow_analysis(run_dir) -> None:
    """What a workflow leaves for the report: a figure and analysis.json."""
    import ase.io
    from matplotlib.figure import Figure

    frames = ase.io.read(run_dir / "trajectory.extxyz", ":")
    fig = Figure(figsize=(5, 2.5))
    ax = fig.subplots()
    ax.plot([a.info["time_fs"] for a in frames], [a.get_volume() / len(a) for a in frames], "o-")
    ax.set(xlabel="MD time (fs)", ylabel="volume per atom (Å³)")
    (run_dir / "analysis").mkdir()
    fig.savefig(run_dir / "analysis" / "volume.png")
    (run_dir / "analysis" / "analysis.json").write_text(json.dumps({
        "title": "Volume per atom", "summary": "A workflow's own analysis.",
        "numbers": [{"name": "frames", "value": len(frames), "unit": "", "basis": "trajectory.extxyz"},
                    {"name": "a number without its basis", "value": 1.0}],
        "figures": [{"file": "volume.png", "caption": "Volume per atom of each trajectory frame."}],
    }))  # fmt: skip


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory, cu_foundation_model):
    from otfparsl.audit import audit_run
    from otfparsl.workflow.submit import ThreadSubmitter
    from otfparsl.workflow.tasks import label_structure

    folder = tmp_path_factory.mktemp("report")
    run_dir = folder / "run"
    result = CliRunner().invoke(app, ["run", str(write_run_yaml(folder, cu_foundation_model)), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    ended = (run_dir / "report" / "index.html").read_text()  # written by `otfparsl run` as it ended
    assert "finished (checkpoint.json: done)" in ended and "Not audited" in ended
    with ThreadSubmitter() as submitter:
        audit_run(run_dir, lambda atoms, workdir: submitter.submit("dft", label_structure, atoms, "ase", {"name": "emt"}, workdir),
                  n_frames=N_AUDIT_FRAMES, seed=0)  # fmt: skip
    _workflow_analysis(run_dir)
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    return run_dir


def test_report_renders_in_headless_chromium(audited_run):
    _needs_chromium()
    page = open_page((audited_run / "report" / "index.html").as_uri(), CHROMIUM)
    assert page.loaded and page.title == "otfparsl report: tiny"
    assert page.errors == []
    # 5 run figures (DFT calls, errors, calibration, traces, time), 3 audit figures, 1 workflow figure
    assert len(page.images) == 9
    assert all(complete and width > 0 and error is None for _, complete, width, error in page.images), page.images
    for heading in ("What the run did", "When DFT was called", "Error at each intervention", "Calibration",
                    "Held-out audit", "Volume per atom", "Where the time went"):  # fmt: skip
        assert heading in page.text


def test_the_browser_check_catches_a_broken_page(tmp_path):
    _needs_chromium()
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><title>bad</title><img src="missing.png"><script>console.error("boom")</script>')
    page = open_page(bad.as_uri(), CHROMIUM)
    assert page.images[0][2] == 0
    assert any("ERR_FILE_NOT_FOUND" in e for e in page.errors) and any("boom" in e for e in page.errors)
    assert not open_page((tmp_path / "absent.html").as_uri(), CHROMIUM).loaded


def test_the_page_shows_the_runs_own_numbers(audited_run):
    from otfparsl.analysis.pretrained import pretrained_errors
    from otfparsl.analysis.run_record import read_run
    from otfparsl.settings import RunSettings

    page = (audited_run / "report" / "index.html").read_text()
    events = [json.loads(line) for line in (audited_run / "events.jsonl").read_text().splitlines()]
    labels = [e for e in events if e["event"] == "label"]
    summary = json.loads((audited_run / "summary.json").read_text())
    audit = json.loads((audited_run / "audit" / "audit.json").read_text())["predictions"]["recorded"]
    assert summary["dft_calls"] == len(labels) >= 3
    assert f"All {len(labels)} interventions" in page
    above, checked = summary["interventions_above_threshold"], summary["interventions_checked"]
    assert f'<div class="value">{above} of {checked}</div><div class="what">checked interventions' in page
    assert f'<div class="value">{audit["n_above_threshold"]} of {audit["n_frames"]}</div><div class="what">held-out' in page
    assert f"K = {K_EV:.4g} eV = {K_EV / KCAL_PER_MOL_EV:.3g} kcal/mol" in page
    assert "The replay reproduces calibration.json&#x27;s S and n." in page
    assert "NO BASIS GIVEN" in page and "Volume per atom of each trajectory frame." in page
    # the pretrained model's error at the first label is 0: the chains start from it, and the
    # offset is fixed there; it is cached for the next report
    record = read_run(audited_run)
    errors = pretrained_errors(audited_run, RunSettings.from_yaml(audited_run / "run.yaml"),
                               record.calibration["energy_offset_eV"], audited_run / "report" / "pretrained_at_labels.json")  # fmt: skip
    assert errors.computed == 0 and errors.cached == len(labels)
    assert abs(errors.errors_eV[(0, 0)]) < 1e-9
