"""otfparsl: on-the-fly Bayesian fine-tuning of foundation interatomic potentials.

Public names are imported lazily, so ``import otfparsl`` is cheap and never imports Parsl.
``otfparsl.run`` is the run-directory package (:mod:`otfparsl.run`); the on-the-fly run itself
is :func:`otfparsl.workflow.driver.run` (a lazy top-level ``run`` would be shadowed by that
package as soon as it is imported).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "RunSettings": "otfparsl.settings",
    "EnsembleCalculator": "otfparsl.calculators.ensemble",
    "OnTheFlyCalculator": "otfparsl.calculators.otf",
    "Learner": "otfparsl.calculators.otf",
    "Calibrator": "otfparsl.calibration",
    "ModelSpec": "otfparsl.models.base",
    "load_adapter": "otfparsl.models",
    "make_labeler": "otfparsl.labelers",
    "RunResult": "otfparsl.workflow.driver",
    "open_site": "otfparsl.workflow.site",
    "ThreadSubmitter": "otfparsl.workflow.submit",
    "ProcessSubmitter": "otfparsl.workflow.submit",
    "local_submitter": "otfparsl.workflow.submit",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'otfparsl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
