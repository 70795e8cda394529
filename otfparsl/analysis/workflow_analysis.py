"""The hook for a workflow's own analysis: ``RUN_DIR/analysis/`` shown in the run's report.

Two ways in, both shown in the report's workflow section:

- **System analyses** (``otfparsl/analysis/systems/NAME.py``, listed in the run YAML's
  ``analyses:``): the report runs them (:func:`run_system_analyses`), which writes
  ``analysis/NAME.json`` and ``analysis/NAME.png``; the report shows the figure with the
  analysis' one-line summary and the JSON's numbers, with the JSON file as their basis.
- **Anything else a workflow computes**: PNG figures in ``RUN_DIR/analysis/`` and an optional
  ``analysis.json`` that titles, captions and quantifies them. Figures are shown in the order
  ``analysis.json`` lists them; others follow by file name. ``analysis.json``::

      {
        "title": "Conformer transitions",
        "summary": "One paragraph: what was analysed and what was found.",
        "numbers": [
          {"name": "DFT-call rate in transition windows / elsewhere", "value": 2.4,
           "unit": "", "basis": "12 transitions, 40 fs windows; Fisher exact test p = 0.003"}
        ],
        "figures": [{"file": "dihedral.png", "caption": "H-O-C-C dihedral over time ..."}]
      }

Every number needs its ``basis`` (what it was measured from); the report marks a number without
one. Unknown keys and unreadable files are listed in the report, never fatal. No Parsl.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Name of the workflow-analysis folder in a run directory.
ANALYSIS_DIR = "analysis"
_KEYS = {"title", "summary", "numbers", "figures"}
_NUMBER_KEYS = {"name", "value", "unit", "basis"}


@dataclass(frozen=True)
class WorkflowAnalysis:
    """What a workflow left in ``RUN_DIR/analysis/``.

    Attributes
    ----------
    title, summary
        Heading and paragraph (``analysis.json``; defaults when absent).
    numbers
        ``{"name", "value", "unit", "basis"}`` rows (``basis`` None when not given).
    figures
        ``(png path, caption)`` in display order (caption None when ``analysis.json`` has none).
    problems
        What could not be read or was not understood (shown in the report).
    """

    title: str
    summary: str
    numbers: list[dict[str, Any]] = field(default_factory=list)
    figures: list[tuple[Path, str | None]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    systems: list[SystemResult] = field(default_factory=list)


@dataclass(frozen=True)
class SystemResult:
    """One system analysis' output: ``analysis/NAME.json`` flattened and ``analysis/NAME.png``.

    Attributes
    ----------
    name, summary
        The analysis and its one line (``otfparsl.analysis.systems``).
    numbers
        ``(key path, value)`` of the JSON's scalars (lists summarised by their length).
    png
        The figure, or None.
    """

    name: str
    summary: str
    numbers: list[tuple[str, Any]]
    png: Path | None


def run_system_analyses(run_dir: str | os.PathLike, names: list[str]) -> list[str]:
    """Run the run YAML's system analyses (one at a time); return what failed, in words."""
    from otfparsl.analysis.systems import run_analyses

    failed = []
    for name in names:
        try:
            run_analyses(run_dir, [name])
        except Exception as exc:  # one analysis failing (e.g. too few frames) must not stop the report
            failed.append(f"system analysis {name!r} failed: {type(exc).__name__}: {exc}")
    return failed


def read_workflow_analysis(run_dir: str | os.PathLike, problems: list[str] | None = None) -> WorkflowAnalysis | None:
    """Read ``RUN_DIR/analysis/`` (None when the folder does not exist or is empty and no problem)."""
    folder = Path(run_dir) / ANALYSIS_DIR
    problems = list(problems or [])
    systems = _system_results(folder)
    taken = {r.png.name for r in systems if r.png is not None}
    pngs = sorted(p for p in folder.glob("*.png") if p.name not in taken) if folder.is_dir() else []
    meta_path = folder / "analysis.json"
    if not pngs and not meta_path.is_file() and not systems and not problems:
        return None
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise ValueError("the top level must be an object")
        except (json.JSONDecodeError, ValueError) as exc:
            problems.append(f"analysis.json could not be read: {exc}")
            meta = {}
    unknown = sorted(set(meta) - _KEYS)
    if unknown:
        problems.append(f"analysis.json: unknown keys {unknown} (allowed: {sorted(_KEYS)})")
    numbers = [_number(row, problems) for row in meta.get("numbers", []) if isinstance(row, dict)]
    listed: list[tuple[Path, str | None]] = []
    for entry in meta.get("figures", []):
        path = folder / str(entry.get("file", "")) if isinstance(entry, dict) else None
        if path is None or path.suffix != ".png" or not path.is_file():
            problems.append(f"analysis.json lists a figure that is not a PNG in analysis/: {entry!r}")
            continue
        listed.append((path, entry.get("caption")))
    seen = {p.name for p, _ in listed}
    listed += [(p, None) for p in pngs if p.name not in seen]
    return WorkflowAnalysis(
        title=str(meta.get("title", "Workflow analysis")),
        summary=str(meta.get("summary", "")),
        numbers=numbers,
        figures=listed,
        problems=problems,
        systems=systems,
    )


def _system_results(folder: Path) -> list[SystemResult]:
    """The ``NAME.json`` (+ ``NAME.png``) of every known system analysis in ``folder``."""
    from otfparsl.analysis.systems import analyses

    out = []
    for name, analysis in analyses().items():
        path = folder / f"{name}.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            data = {"unreadable": str(exc)}
        png = folder / f"{name}.png"
        out.append(SystemResult(name, analysis.summary, _flatten(data), png if png.is_file() else None))
    return out


def _flatten(value: Any, prefix: str = "", limit: int = 40) -> list[tuple[str, Any]]:
    """Scalars of a JSON value by key path; a list of more than 6 items, or of objects, by its length."""
    rows: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            rows += _flatten(item, f"{prefix}.{key}" if prefix else str(key), limit)
    elif isinstance(value, list):
        if len(value) <= 6 and all(not isinstance(v, (dict, list)) for v in value):
            rows.append((prefix, ", ".join(str(v) for v in value)))
        else:
            rows.append((prefix, f"{len(value)} entries (see the JSON file)"))
    else:
        rows.append((prefix, value))
    return rows[:limit]


def _number(row: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    unknown = sorted(set(row) - _NUMBER_KEYS)
    if unknown:
        problems.append(f"analysis.json: number {row.get('name')!r} has unknown keys {unknown}")
    return {
        "name": str(row.get("name", "?")), "value": row.get("value"),
        "unit": str(row.get("unit", "")), "basis": row.get("basis") or None,
    }  # fmt: skip
