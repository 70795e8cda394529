"""The run report from a run directory's files: counts, the replayed calibration, the time
split, the workflow-analysis hook, and a page that needs nothing but itself.

The run directory is synthetic (hand-made events and a real Calibrator's records), so every
number the report should show is known; no model is loaded (``compare_pretrained=False``).
"""

from __future__ import annotations

import json
import math
import re

import pytest

from otfparsl.analysis.metrics import binomial_interval
from otfparsl.analysis.report import write_report
from otfparsl.analysis.run_record import headline, read_run, replay_calibration, time_split
from otfparsl.analysis.workflow_analysis import read_workflow_analysis
from otfparsl.calibration import Calibrator
from otfparsl.settings import RunSettings

K = 0.01
#: (MD step, predicted energy, ensemble std, offset DFT energy) of each label, eV.
LABELS = [(0, -5.0, 0.001, -5.0), (1, -5.01, 0.001, -5.008), (5, -5.02, 0.002, -5.035), (12, -4.99, 0.004, -4.992)]


#: (MD step, error) of each in-run held-out check, eV: one inside the 95 % interval (3.18 x 0.002 eV).
HELDOUT = [(3, 0.001), (7, -0.008), (14, 0.009)]


def _settings() -> RunSettings:
    return RunSettings.from_dict({
        "name": "synthetic", "structure": "cu.xyz",
        "model": {"family": "mace", "source": "tiny", "dtype": "float64"},
        "calibration": {"energy_threshold_eV": K},
        "labeler": {"kind": "ase", "options": {"name": "emt"}},
        "md": {"segments": [{"temperature_K": 300, "duration_fs": 10, "timestep_fs": 1.0},
                            {"temperature_K": 600, "duration_fs": 10, "timestep_fs": 1.0}]},
    })  # fmt: skip


@pytest.fixture
def run_dir(tmp_path):
    """A run stopped after MD step 15 of 20, with four labels, and a line cut by the crash."""
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "run.yaml").write_text(_settings().to_yaml())
    calibrator = Calibrator(energy_threshold_eV=K, a=1.5, b=10.0)
    offset = 0.3
    events = []
    labelled = {}
    for step, pred, std, dft in LABELS:
        record = calibrator.update(step, pred, std, dft).to_dict()
        labelled[step] = std
        events.append({"event": "label", "step": step, "walker": 0, "energy_pred": pred, "energy_std": std,
                       "energy_dft": dft - offset, "energy_dft_offset": dft, "confidence": 0.9, "seconds": 2.0, **record})  # fmt: skip
    for step in range(16):
        std = labelled.get(step, 0.001)
        events.append({"event": "step", "walker": 0, "step": step, "segment": int(step >= 10), "time_fs": float(step),
                       "temperature_K": 300.0 + 20 * step, "energy": -5.0, "energy_std": std, "confidence": 0.97,
                       "energy_scale_eV": std * 2.0, "dof": 3.0, "intervened": step in labelled, "generation": 1})  # fmt: skip
    for step, error in HELDOUT:
        events.append({"event": "heldout", "step": step, "walker": 0, "error_eV": error, "energy_std": 0.001,
                       "energy_scale_eV": 0.002, "dof": 3.0, "confidence": 0.97})  # fmt: skip
    lines = [json.dumps(e) for e in events] + ['{"event": "step", "walk']
    (rd / "events.jsonl").write_text("\n".join(lines) + "\n")
    (rd / "calibration.json").write_text(json.dumps({**calibrator.to_dict(), "energy_offset_eV": offset}))
    timers = {"inference_s": 10.0, "label_s": 8.0, "update_s": 60.0}
    (rd / "checkpoint.json").write_text(json.dumps({"done": False, "wall_s": 100.0, "learner": {"timers": timers}}))
    return rd


def test_the_record_counts_what_the_events_say(run_dir):
    record = read_run(run_dir)
    assert record.skipped_lines == 1 and not record.finished and "up to MD time 15 fs of 20 fs" in record.status
    head = headline(record)
    errors = [pred - dft for _, pred, _, dft in LABELS]
    above = sum(abs(e) > K for e in errors[1:])
    assert (head.dft_calls, head.checked, head.above) == (4, 3, above) and above == 1
    assert head.above_ci95 == binomial_interval(above, 3)
    assert head.counted == 2  # the labels at steps 0 and 1 are inside skip_first_steps = 3
    assert record.time_fs(0, 12) == 12.0 and record.time_fs(0, 18) == 18.0  # event, then programme clock


def test_the_replayed_calibration_ends_where_the_run_did(run_dir):
    record = read_run(run_dir)
    points, replayed = replay_calibration(record)
    saved = json.loads((run_dir / "calibration.json").read_text())
    assert replayed.S == pytest.approx(saved["S"], rel=1e-12) and replayed.n == saved["n"] == 2
    assert points[0].scale_factor == pytest.approx(math.sqrt(10 / 1.5))
    assert [p.time_fs for p in points] == [0.0, 0.0, 1.0, 5.0, 12.0]
    z5 = (LABELS[2][3] - LABELS[2][1]) / LABELS[2][2]
    assert points[3].scale_factor == pytest.approx(math.sqrt((10 + z5**2 / 2) / (1.5 + 0.5)))


def test_the_time_split_of_a_stopped_run_comes_from_its_checkpoint(run_dir):
    split = time_split(read_run(run_dir))
    assert split.basis.startswith("checkpoint.json")
    assert split.parts_s == {"inference": 10.0, "DFT": 8.0, "chain updates": 60.0, "other": 22.0}


def test_the_page_is_self_contained_and_says_what_it_rests_on(run_dir):
    index = write_report(run_dir, compare_pretrained=False)
    page = index.read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    for name in ("dft_calls.png", "errors.png", "calibration.png", "traces.png", "time_split.png"):
        assert (index.parent / name).stat().st_size > 1000
    assert "not finished" in page and "Not audited" in page and "not computed" in page
    assert '<div class="value">1 of 3</div>' in page and "All 4 interventions" in page
    assert "The replay reproduces calibration.json&#x27;s S and n." in page
    assert "1 unreadable line(s) of events.jsonl were skipped" in page
    assert "rests on the prior alone" not in page  # two interventions were counted


def test_workflow_analysis_flags_what_it_cannot_trust(tmp_path):
    assert read_workflow_analysis(tmp_path) is None
    folder = tmp_path / "analysis"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        (folder / name).write_bytes(b"\x89PNG")
    (folder / "analysis.json").write_text(json.dumps({
        "title": "T", "extra": 1,
        "numbers": [{"name": "rate", "value": 2.0, "basis": "events.jsonl"}, {"name": "bare", "value": 3}],
        "figures": [{"file": "b.png", "caption": "B"}, {"file": "missing.png"}],
    }))  # fmt: skip
    found = read_workflow_analysis(tmp_path)
    assert found.title == "T" and [n["basis"] for n in found.numbers] == ["events.jsonl", None]
    assert [(p.name, c) for p, c in found.figures] == [("b.png", "B"), ("a.png", None)]
    assert any("unknown keys ['extra']" in p for p in found.problems)
    assert any("missing.png" in p for p in found.problems)


def test_the_in_run_held_out_checks_have_their_own_card_apart_from_the_interventions(run_dir):
    record = read_run(run_dir)
    assert [e["step"] for e in record.heldout] == [3, 7, 14]
    page = write_report(run_dir, compare_pretrained=False).read_text()
    card = page[page.index("in-run held-out checks above K"):][:1200]
    assert "consistent with the promise, not proof of it" in card and "never trained on" in card
    assert "<div class=\"value\">0 of 3</div><div class=\"what\">in-run held-out" in page
    assert "rms z 3.49" in card  # sqrt((0.5² + 4² + 4.5²) / 3) = 3.488
