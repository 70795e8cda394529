"""A finished DFT label is kept in its working directory (``label.json``) and never recomputed.

A label costs up to half an hour of a cluster node. The task that ran it writes ``label.json``
(atomically) next to the code's own output, holding a key of what was computed (structure,
labeller kind and options) and the results at full precision. A resumed run that arrives at the
same structure with the same settings reads the result instead of running DFT again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from otfparsl import jsonable
from otfparsl.fileio import atomic_write_text
from otfparsl.structures import structures_digest

RESULT_NAME = "label.json"


def label_key(atoms: Atoms, kind: str, options: dict[str, Any]) -> str:
    """SHA-256 of the exact structure (bits of positions, cell, pbc, numbers) and the settings."""
    return structures_digest([atoms], extra=kind + json.dumps(options, sort_keys=True, default=str))


def save_label(workdir: str | os.PathLike, key: str, labelled: Atoms) -> None:
    """Write the results of a finished label to ``workdir/label.json`` (atomically)."""
    results = {k: v for k, v in labelled.calc.results.items() if k in ("energy", "forces", "stress")}
    info = {k: v for k, v in labelled.info.items() if isinstance(v, str | int | float | bool)}
    payload = {"key": key, "results": results, "info": info}
    atomic_write_text(Path(workdir) / RESULT_NAME, jsonable.dumps(payload))


def load_label(workdir: str | os.PathLike, atoms: Atoms, key: str) -> Atoms | None:
    """Return the labelled copy of ``atoms`` stored in ``workdir`` under ``key``, or None."""
    path = Path(workdir) / RESULT_NAME
    if not path.is_file():
        return None
    try:
        payload = jsonable.loads(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError):
        return None
    if payload.get("key") != key:
        return None
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, **payload["results"])
    out.info.update(payload["info"])
    out.info["label_reused"] = True
    return out
