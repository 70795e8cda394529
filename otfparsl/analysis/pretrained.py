"""What the pretrained model would have predicted at each labelled structure.

A run records the ensemble's prediction at every label (``labels.extxyz``: ``pred_energy``), not
the foundation model's. The report computes it: the pretrained model is loaded through the run's
own model spec (:func:`otfparsl.from_settings.model_spec`, :func:`otfparsl.models.load_adapter`)
with its sigma head at zero, exactly the starting point of every chain, and evaluated once per
labelled structure. The energies are cached in ``report/pretrained_at_labels.json`` (keyed by the
structure's hash and the model spec), so a report written again pays only for new labels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import ase.io

from otfparsl.fileio import atomic_write_text
from otfparsl.from_settings import energy_sigma_eV, model_spec
from otfparsl.settings import RunSettings
from otfparsl.structures import structures_digest

log = logging.getLogger(__name__)

#: Cache of the pretrained model's energies at the labelled structures, in ``report/``.
CACHE_NAME = "pretrained_at_labels.json"


@dataclass(frozen=True)
class PretrainedErrors:
    """The pretrained model's energy error at each labelled structure.

    Attributes
    ----------
    errors_eV
        ``(walker, step) -> E_pretrained - (E_DFT + c)`` (eV, total structure), c the run's
        energy offset: the same reference the run's own errors are measured against.
    model
        The model spec, in words.
    computed, cached
        Forward passes made now and energies read from the cache.
    """

    errors_eV: dict[tuple[int, int], float]
    model: str
    computed: int
    cached: int


def pretrained_errors(
    run_dir: Path, settings: RunSettings, offset_eV: float, cache: Path
) -> PretrainedErrors:
    """Evaluate the pretrained model on every structure of ``labels.extxyz``.

    Parameters
    ----------
    run_dir
        The run directory (its ``labels.extxyz`` holds the labelled structures and raw DFT
        energies).
    settings
        The run's settings (``run.yaml``): the model spec.
    offset_eV
        c, the run's energy offset (``calibration.json``), eV.
    cache
        JSON file of energies already computed (read if it fits the spec, then rewritten).

    Raises
    ------
    otfparsl.errors.OtfparslError, ImportError, OSError
        When the model cannot be loaded here (missing package, weights not downloaded).
    """
    frames = ase.io.read(run_dir / "labels.extxyz", ":") if (run_dir / "labels.extxyz").is_file() else []
    spec = model_spec(settings.model)
    spec_text = json.dumps(asdict(spec), sort_keys=True)
    known = _read_cache(cache, spec_text)
    keys = [structures_digest([atoms]) for atoms in frames]
    missing = [(key, atoms) for key, atoms in zip(keys, frames, strict=True) if key not in known]
    if missing:
        calculator = _pretrained_calculator(settings)
        for key, atoms in missing:
            bare = atoms.copy()
            bare.calc = None
            calculator.calculate(bare, ("energy", "forces"))
            known[key] = float(calculator.results["energy"])
        atomic_write_text(cache, json.dumps({"model_spec": spec_text, "energies_eV": known}, indent=1))
    errors = {
        (int(atoms.info["walker"]), int(atoms.info["step"])): known[key]
        - (float(atoms.get_potential_energy()) + offset_eV)
        for key, atoms in zip(keys, frames, strict=True)
    }
    model = f"{spec.family} {spec.source} ({spec.dtype})"
    return PretrainedErrors(errors, model, computed=len(missing), cached=len(frames) - len(missing))


def _read_cache(cache: Path, spec_text: str) -> dict[str, float]:
    if not cache.is_file():
        return {}
    try:
        data = json.loads(cache.read_text())
    except json.JSONDecodeError:
        return {}
    return dict(data["energies_eV"]) if data.get("model_spec") == spec_text else {}


def _pretrained_calculator(settings: RunSettings):
    """One-member ensemble with the foundation weights and a zero sigma head."""
    from otfparsl.calculators.ensemble import EnsembleCalculator
    from otfparsl.models import load_adapter
    from otfparsl.training import build_bayesian_model

    adapter = load_adapter(model_spec(settings.model))
    weights = build_bayesian_model(adapter).trainable_state()
    log.info("report: evaluating the pretrained model %s at the labelled structures", settings.model.source)
    return EnsembleCalculator(adapter, [weights], energy_sigma_eV(settings.calibration))
