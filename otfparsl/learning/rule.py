"""The decision rule: calibrated confidence, the energy offset and when to call DFT.

Method.md sections 5 and 6: the first structure is always labelled and fixes the energy offset
c = E_pred - E_DFT between the foundation model's and the DFT code's energy zero; afterwards
DFT is called when the calibrated confidence P(|error| <= K) falls below the level (0.95), and
every label after the first updates the calibration with its z-score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.stress import full_3x3_to_voigt_6_stress

from otfparsl.calibration import CalibrationRecord, Calibrator


@dataclass(frozen=True)
class Decision:
    """The rule's verdict on one prediction.

    Attributes
    ----------
    confidence
        P(|energy error| <= K) under the calibrated Student-t (0 for a non-finite prediction).
    needs_dft
        True when DFT must take this step.
    energy_scale_eV
        Scale of the calibrated Student-t predictive of the energy error, eV (the run's claim).
    dof
        Its degrees of freedom.
    finite
        False when the prediction holds NaN or inf (a diverged sample).
    """

    confidence: float
    needs_dft: bool
    energy_scale_eV: float
    dof: float
    finite: bool = True


class DecisionRule:
    """Calibration state, energy offset and the DFT decision.

    Parameters
    ----------
    calibrator
        Gamma-prior calibration of the ensemble's energy std (method.md section 5).
    energy_offset_eV
        c of method.md section 6; None until the first label fixes it.
    """

    def __init__(self, calibrator: Calibrator, energy_offset_eV: float | None = None) -> None:
        self.calibrator = calibrator
        self.energy_offset_eV = energy_offset_eV

    @property
    def has_reference(self) -> bool:
        """True once a first label has fixed the energy offset (before it, DFT takes every step)."""
        return self.energy_offset_eV is not None

    def decide(self, prediction: dict) -> Decision:
        """Return the confidence in ``prediction`` and whether DFT must take the step."""
        finite = is_finite(prediction)
        confidence = (
            self.calibrator.confidence(prediction["energy_std"], forces_std=prediction["forces_std"])
            if finite else 0.0
        )  # fmt: skip
        return Decision(
            confidence=confidence,
            needs_dft=self.calibrator.needs_label(not self.has_reference, confidence),
            energy_scale_eV=float(prediction["energy_std"]) * self.calibrator.scale_factor,
            dof=self.calibrator.nu,
            finite=finite,
        )

    def observe(self, labelled: Atoms, prediction: dict, step: int) -> CalibrationRecord:
        """Learn from a label: fix the offset on the first, then update the calibration."""
        e_dft = float(labelled.get_potential_energy())
        if self.energy_offset_eV is None:
            self.energy_offset_eV = float(prediction["energy"]) - e_dft
        if not is_finite(prediction):  # a diverged prediction does not enter the statistics
            return CalibrationRecord(
                intervention=self.calibrator.n_interventions, step=int(step), counted=False,
                z=float("nan"), error_eV=float("nan"), exceeds_threshold=True,
            )  # fmt: skip
        return self.calibrator.update(
            step=step,
            predicted_energy=float(prediction["energy"]),
            predicted_std=float(prediction["energy_std"]),
            label_energy=e_dft + self.energy_offset_eV,
            predicted_forces=prediction["forces"],
            forces_std=prediction["forces_std"],
            label_forces=labelled.get_forces(),
        )

    def dft_results(self, labelled: Atoms) -> dict:
        """The ASE results of a label on the ensemble's energy scale (DFT + offset)."""
        results = labelled.calc.results
        out = {
            "energy": float(results["energy"]) + self.energy_offset_eV,
            "forces": np.asarray(results["forces"], dtype=float),
        }
        out["free_energy"] = out["energy"]
        if "stress" in results and np.all(labelled.pbc):
            stress = np.asarray(results["stress"], dtype=float)
            out["stress"] = stress if stress.shape == (6,) else full_3x3_to_voigt_6_stress(stress)
        return out

    def state(self) -> dict:
        """The calibration state and offset as written to ``calibration.json``."""
        return {**self.calibrator.to_dict(), "energy_offset_eV": self.energy_offset_eV}


def is_finite(prediction: dict) -> bool:
    """True when energy, forces and their stds are all finite."""
    keys = ("energy", "energy_std", "forces", "forces_std")
    return all(bool(np.all(np.isfinite(prediction[k]))) for k in keys if k in prediction)
