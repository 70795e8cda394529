"""Analyses of the paper's systems, one module each, chosen by a run YAML's ``analyses`` list.

A module declares ``ANALYSIS = SystemAnalysis(name=..., run=..., summary=...)``; ``run(rd)``
reads the run directory and returns a JSON-ready dict and a matplotlib figure.
:func:`run_analyses` writes them to ``RUN_DIR/analysis/NAME.json`` and ``NAME.png``, which the
report shows. Nothing else lists the analyses; settings validate names against
:func:`analyses`.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otfparsl.run.directory import RunDirectory


@dataclass(frozen=True)
class SystemAnalysis:
    """One system's analysis: its name, the function and one line saying what it measures."""

    name: str
    run: Callable[[RunDirectory], tuple[dict[str, Any], Any]]
    summary: str


@functools.lru_cache(maxsize=1)
def analyses() -> dict[str, SystemAnalysis]:
    """Every analysis declared in this package, by name."""
    found: dict[str, SystemAnalysis] = {}
    for info in pkgutil.iter_modules(__path__):
        declared = getattr(importlib.import_module(f"{__name__}.{info.name}"), "ANALYSIS", None)
        if isinstance(declared, SystemAnalysis):
            found[declared.name] = declared
    return dict(sorted(found.items()))


def run_analyses(run_dir: str | Path, names: list[str]) -> list[Path]:
    """Run the named analyses on a run; write ``analysis/NAME.json`` and ``.png``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rd = RunDirectory(run_dir)
    out = rd.path / "analysis"
    out.mkdir(exist_ok=True)
    written = []
    for name in names:
        result, figure = analyses()[name].run(rd)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
        figure.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        written += [out / f"{name}.json", out / f"{name}.png"]
    return written
