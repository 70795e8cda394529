"""benchmarks/gpu_suite.py --device cpu --quick: every GPU row has a number or a reason.

The suite measures docs/performance.md's open GPU rows on a GPU. Its ``--quick`` CPU mode runs
the same code paths on stand-ins (a minimal tiny MACE for MP-0-medium, 4- and 8-atom Cu cells,
M = 2, one timed step, compiled gradients traced without code generation), so the script
cannot rot where no GPU is lent. One test runs the script once (about a minute on 2 cores; one
test, not a module fixture, because pytest-xdist would run a fixture once per worker).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mace")

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
MP0 = "mace-mp0-medium-arch"
SLOTS, DTYPES = ("64", "162"), ("float32", "float64")
CHAINS = [f"8 chains | {MP0} | 162 | float32 | {g}, {how}"
          for g in ("autograd", "compiled") for how in ("one after another", "at once")]
GOAL = f"goals | {MP0} | 162 | float32 | 8-chain update <= 3 min"


def _expected_ids() -> set[str]:
    """The open GPU rows of docs/performance.md, as the suite names them."""
    label = {f"label cost | {m} | {s} | {d} | autograd"
             for m in (MP0, "chgnet", "sevennet") for s in SLOTS for d in DTYPES}
    compiled = {f"gradients | {MP0} | {s} | {d} | compiled" for s in SLOTS for d in DTYPES}
    cueq = {f"gradients | {MP0} | {s} | float32 | cuEquivariance" for s in SLOTS}
    return label | compiled | cueq | set(CHAINS) | {GOAL, "goals | CUDA graphs"}


def _measured_in_quick() -> set[str]:
    """Rows whose code --quick must run (the others may carry a reason: package, --quick)."""
    packages = {"chgnet": "chgnet", "sevennet": "sevenn"}
    models = [MP0] + [m for m, pkg in packages.items() if importlib.util.find_spec(pkg)]
    label = {f"label cost | {m} | {s} | float32 | autograd" for m in models for s in SLOTS}
    label |= {f"label cost | {MP0} | {s} | float64 | autograd" for s in SLOTS}
    compiled = {f"gradients | {MP0} | {s} | float32 | compiled" for s in SLOTS}
    return label | compiled | set(CHAINS) | {GOAL}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.slow
def test_quick_cpu_run_writes_every_row_with_a_number_or_a_reason(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--device", "cpu", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    _check_rows(report, proc.stdout)
    _check_markdown(report, (tmp_path / "gpu_suite.md").read_text())


def _check_rows(report: dict, stdout: str) -> None:
    """Every planned row, each with a finite number or a reason; the progress, one line each."""
    rows = {r["id"]: r for r in report["rows"]}
    assert len(rows) == len(report["rows"]) == report["meta"]["n_rows"]
    assert set(rows) == _expected_ids()
    for rid, row in rows.items():
        reason = row["reason"]
        assert _finite(row["value"]) or (isinstance(reason, str) and reason.strip()), rid
        assert row["value"] is None or reason is None, f"{rid}: a number and a reason"
    for rid in _measured_in_quick():
        assert _finite(rows[rid]["value"]) and rows[rid]["value"] > 0, (rid, rows[rid]["reason"])
    for rid, row in rows.items():  # the update is extrapolated from the measured chain-step
        m = row["metrics"]
        if "update_s" in m and rid != GOAL:
            assert m["update_s"] == pytest.approx(8 * 2000 * m["chain_step_ms"] / 1e3), rid
            assert m["steps_measured"] >= 1, rid
    label = rows[f"label cost | {MP0} | 64 | float32 | autograd"]["metrics"]
    for key in ("forward_ms", "ensemble_ms", "update_s"):
        assert _finite(label[key]) and label[key] > 0, key
    goal_candidates = [r["metrics"]["update_s"] for r in rows.values()
                       if r["value"] is not None and "update_s" in r["metrics"]
                       and (r["model"], r["slot"], r["dtype"]) == (MP0, "162", "float32")]
    assert rows[GOAL]["value"] == pytest.approx(min(goal_candidates) / 60)
    if importlib.util.find_spec("cuequivariance") is None:
        assert rows[f"gradients | {MP0} | 64 | float32 | cuEquivariance"]["reason"].startswith(
            "not installed")
    progress = [line for line in stdout.splitlines() if re.match(r"\[\s*[\d.]+ s\] ", line)]
    assert [line.split("] ", 1)[1].split(": ", 1)[0] for line in progress] == list(rows)


def _check_markdown(report: dict, text: str) -> None:
    """One table line per row, every reason shown, device, torch version and date stated."""
    meta, rows = report["meta"], report["rows"]
    assert meta["device"] in text and f"torch {meta['torch']}" in text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", text)
    body = [line for line in text.splitlines() if line.startswith("| ")
            and not line.startswith(("| model |", "| goal |"))]
    assert len(body) == len(rows)
    for row in rows:  # a "|" inside a cell is escaped
        if row["reason"]:
            assert row["reason"].replace("|", "\\|") in text, row["id"]
    assert text.count("extrapolated from") == sum(
        "update_s" in r["metrics"] and r["table"] != "goals" for r in rows)
