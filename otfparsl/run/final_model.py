"""A run's final model: the fine-tuned ensemble, its final calibration and the energy offset.

What production MD runs with and what the audit checks against DFT; read from the run
directory alone (``calibration.json`` and the chain files), without the orchestrator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from otfparsl.calculators.ensemble import EnsembleCalculator
from otfparsl.calibration import Calibrator
from otfparsl.errors import ConfigurationError
from otfparsl.run.directory import RunDirectory


@dataclass(frozen=True)
class FrozenModel:
    """The run's final ensemble and calibration: what production MD uses and trusts."""

    ensemble: EnsembleCalculator
    calibrator: Calibrator
    energy_offset_eV: float

    @classmethod
    def from_run(cls, rd: RunDirectory, device: str | None = None) -> FrozenModel:
        """Load the final ensemble and calibration of the run in ``rd``."""
        calibrator, offset = final_calibration(rd)
        return cls(EnsembleCalculator.from_run(rd.path, device=device), calibrator, offset)

    def confidence(self, results: dict) -> float:
        """P(|energy error| <= K) of one prediction under the final calibration."""
        return self.calibrator.confidence(results["energy_std"], forces_std=results["forces_std"])


def final_calibration(rd: RunDirectory) -> tuple[Calibrator, float]:
    """The run's final calibrator and energy offset c (eV), from ``calibration.json``."""
    if not rd.calibration.is_file():
        raise ConfigurationError(
            f"{str(rd.path)!r} has no calibration.json: the run never made its first DFT label, "
            "so there is no energy offset and no calibration yet. Run it first (`otfparsl run`)."
        )
    state = json.loads(rd.calibration.read_text())
    offset = float(state.pop("energy_offset_eV"))
    return Calibrator.from_dict(state), offset
