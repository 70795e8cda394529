"""The calibrator: Gamma-prior state, the confidence of a prediction, updates from labels.

See :mod:`otfparsl.calibration` for the model and its extensions.
"""


from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from otfparsl.calibration.predictive import student_t_confidence
from otfparsl.errors import ConfigurationError
from otfparsl.fileio import atomic_write_text

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 2


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigurationError(
            f"{name} must be a finite number > 0; got {value!r}. Set a positive value."
        )


def _check_std(name: str, std: Any) -> np.ndarray:
    arr = np.asarray(std, dtype=float)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ConfigurationError(
            f"{name} must be finite and > 0 everywhere; got {std!r}. A zero or NaN predictive "
            "standard deviation means the ensemble is broken (identical members and zero "
            "sigma heads); check the model."
        )
    return arr


@dataclass(frozen=True)
class CalibrationRecord:
    """What one intervention did to the calibration (for the run's event log).

    Attributes
    ----------
    intervention
        1-based index of the intervention.
    step
        MD step (force evaluation of its walker, 0-based) at which it was made.
    counted
        Whether its statistics entered (S, n) (False for interventions at the first
        ``skip_first_steps`` MD steps of a walker).
    z
        ``(E_label - E_pred) / energy_std``.
    error_eV
        ``E_pred - E_label`` (eV, total structure).
    exceeds_threshold
        ``|error_eV| > K``.
    force_z2_mean
        Mean of the squared force z-scores, or None without force data.
    force_max_abs_error_eV_per_A
        Largest absolute force-component error (eV/Å), or None.
    force_exceeds_threshold
        Whether that error is above ``force_threshold_eV_per_A`` (None if no force threshold).
    """

    intervention: int
    step: int
    counted: bool
    z: float
    error_eV: float
    exceeds_threshold: bool
    force_z2_mean: float | None = None
    force_max_abs_error_eV_per_A: float | None = None
    force_exceeds_threshold: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-serialisable dict."""
        return asdict(self)


@dataclass
class Calibrator:
    """Gamma-prior calibration of the ensemble's energy (and optionally force) uncertainty.

    Parameters
    ----------
    energy_threshold_eV
        K, the tolerated total-structure energy error (eV).
    a, b
        Shape and rate of the Gamma prior on lambda (MACE 1.5/10, NequIP 3/10).
    confidence_level
        DFT is called when the confidence is below this (0.95).
    skip_first_steps
        Interventions made at MD steps ``0 .. skip_first_steps - 1`` of a walker are not
        counted (3: the original's ``NNP.recalibrate`` counts only when its force-call counter
        is ``> 2``, so the first label, whose error is 0 by construction of the offset, and any
        label at steps 1-2 are left out; every later intervention counts wherever it falls).
    ema_decay
        None (plain sums) or d in (0, 1): discount factor of the statistics (module notes).
    force_threshold_eV_per_A
        None (energy only) or K_F, the tolerated error of one force component (eV/Å).
    min_counted
        Call DFT at every step until this many interventions have been counted (0: the
        original, which may skip DFT on the prior alone; see :meth:`needs_label`).
    force_a, force_b
        Gamma prior of the force-component precision factor.
    S, n
        Effective sufficient statistics of the energy z-scores (discounted when ``ema_decay``).
    S_total, n_total
        Undiscounted sums (equal to S, n without EMA).
    n_interventions
        Interventions seen, counted or not.
    force_S, force_n
        Effective statistics of the force-component z-scores.
    """

    energy_threshold_eV: float
    a: float = 1.5
    b: float = 10.0
    confidence_level: float = 0.95
    skip_first_steps: int = 3
    ema_decay: float | None = None
    force_threshold_eV_per_A: float | None = None
    min_counted: int = 0
    force_a: float = 1.5
    force_b: float = 10.0
    S: float = 0.0
    n: float = 0.0
    S_total: float = 0.0
    n_total: int = 0
    n_interventions: int = 0
    force_S: float = 0.0
    force_n: float = 0.0

    def __post_init__(self) -> None:
        _check_positive("energy_threshold_eV", self.energy_threshold_eV)
        for name in ("a", "b", "force_a", "force_b"):
            _check_positive(name, getattr(self, name))
        if not 0.0 < self.confidence_level < 1.0:
            hint = " Did you mean 0.95?" if self.confidence_level == 95 else ""
            raise ConfigurationError(
                f"confidence_level must be in (0, 1); got {self.confidence_level!r}.{hint}"
            )
        if not isinstance(self.skip_first_steps, int) or self.skip_first_steps < 1:
            raise ConfigurationError(
                f"skip_first_steps must be an integer >= 1; got {self.skip_first_steps!r} "
                "(default 3, as the original; step 0 is the first label, whose error is 0 by "
                "construction of the energy offset, so it can never count)."
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigurationError(
                f"ema_decay must be None or in (0, 1); got {self.ema_decay!r}. "
                "Typical values are 0.9-0.99 (memory of about 1/(1-d) interventions)."
            )
        if self.force_threshold_eV_per_A is not None:
            _check_positive("force_threshold_eV_per_A", self.force_threshold_eV_per_A)
        if not isinstance(self.min_counted, int) or self.min_counted < 0:
            raise ConfigurationError(f"min_counted must be an integer >= 0; got {self.min_counted!r}")

    # ------------------------------------------------------------------ posterior
    @property
    def nu(self) -> float:
        """Degrees of freedom of the predictive energy error, ``2a + n``."""
        return 2.0 * self.a + self.n

    @property
    def scale_factor(self) -> float:
        """``sqrt((b + S/2) / (a + n/2))``: predictive scale in units of ``energy_std``."""
        return math.sqrt((self.b + self.S / 2.0) / (self.a + self.n / 2.0))

    @property
    def precision_posterior_mean(self) -> float:
        """Posterior mean of lambda, ``(a + n/2) / (b + S/2)``."""
        return (self.a + self.n / 2.0) / (self.b + self.S / 2.0)

    @property
    def force_scale_factor(self) -> float:
        """Predictive scale of one force-component error in units of its ``forces_std``."""
        return math.sqrt((self.force_b + self.force_S / 2.0) / (self.force_a + self.force_n / 2.0))

    def energy_confidence(self, energy_std_eV: float) -> float:
        """Return ``P(|e| <= K)`` for the total energy; ``energy_std_eV`` in eV."""
        std = float(_check_std("energy_std_eV", energy_std_eV))
        scale = std * self.scale_factor
        return float(student_t_confidence(self.energy_threshold_eV, scale, self.nu))

    def force_confidence(self, forces_std: Any) -> float:
        """Return the confidence of the least certain force component.

        Parameters
        ----------
        forces_std
            Predictive standard deviations, shape (n_atoms, 3), eV/Å.
        """
        if self.force_threshold_eV_per_A is None:
            raise ConfigurationError(
                "force_confidence needs force_threshold_eV_per_A; got None. "
                "Set a force threshold in the calibration settings."
            )
        std = _check_std("forces_std", forces_std)
        scale = float(std.max()) * self.force_scale_factor
        nu = 2.0 * self.force_a + self.force_n
        return float(student_t_confidence(self.force_threshold_eV_per_A, scale, nu))

    def confidence(self, energy_std_eV: float, forces_std: Any = None) -> float:
        """Return the confidence that the prediction is within the threshold(s).

        Parameters
        ----------
        energy_std_eV
            Predictive standard deviation of the total energy (eV).
        forces_std
            Predictive standard deviations of the forces, shape (n_atoms, 3), eV/Å; used only
            when ``force_threshold_eV_per_A`` is set (then required).

        Returns
        -------
        float
            ``2 F_t(K / s; 2a + n) - 1`` with ``s = energy_std * sqrt((b + S/2)/(a + n/2))``;
            with a force threshold, the minimum of this and :meth:`force_confidence`.
        """
        conf = self.energy_confidence(energy_std_eV)
        if self.force_threshold_eV_per_A is not None:
            if forces_std is None:
                raise ConfigurationError(
                    "forces_std is required when force_threshold_eV_per_A is set; got None. "
                    "Pass the ensemble's forces_std (n_atoms, 3) in eV/Å."
                )
            conf = min(conf, self.force_confidence(forces_std))
        return conf

    def needs_label(self, step_is_first: bool, confidence: float) -> bool:
        """Return True when DFT must be called.

        The first step; fewer than ``min_counted`` counted interventions so far (the claim
        would rest on the prior alone); or the confidence below the level.
        """
        return bool(step_is_first) or self.n_total < self.min_counted or confidence < self.confidence_level

    # ------------------------------------------------------------------ update
    def _accumulate(self, S: float, n: float, z2_sum: float, count: int) -> tuple[float, float]:
        if self.ema_decay is None:
            return S + z2_sum, n + count
        return self.ema_decay * S + z2_sum, self.ema_decay * n + count

    def update(
        self,
        step: int,
        predicted_energy: float,
        predicted_std: float,
        label_energy: float,
        predicted_forces: Any = None,
        forces_std: Any = None,
        label_forces: Any = None,
    ) -> CalibrationRecord:
        """Count one intervention; add its z-scores unless it is at an excluded step.

        Parameters
        ----------
        step
            MD step (0-based force evaluation of the walker) of the intervention.
        predicted_energy, predicted_std
            Ensemble mean and std of the total energy before the update (eV).
        label_energy
            DFT energy, offset to the model's reference (eV).
        predicted_forces, forces_std, label_forces
            Optional, each shape (n_atoms, 3), eV/Å; used for the force statistics.

        Returns
        -------
        CalibrationRecord
            z, error and threshold flags of this intervention (the run logs it as an event).
        """
        std = float(_check_std("predicted_std", predicted_std))
        self.n_interventions += 1
        counted = int(step) >= self.skip_first_steps
        z = (float(label_energy) - float(predicted_energy)) / std
        error = float(predicted_energy) - float(label_energy)
        force_info = self._force_update(predicted_forces, forces_std, label_forces, counted)
        if counted:
            self.S, self.n = self._accumulate(self.S, self.n, z * z, 1)
            self.S_total += z * z
            self.n_total += 1
        record = CalibrationRecord(
            intervention=self.n_interventions,
            step=int(step),
            counted=counted,
            z=z,
            error_eV=error,
            exceeds_threshold=abs(error) > self.energy_threshold_eV,
            **force_info,
        )
        logger.debug("calibration update %s", record)
        return record

    def _force_update(
        self, predicted: Any, std: Any, label: Any, counted: bool
    ) -> dict[str, Any]:
        given = [x is not None for x in (predicted, std, label)]
        if not any(given):
            return {}
        if not all(given):
            raise ConfigurationError(
                "predicted_forces, forces_std and label_forces must be given together; got "
                f"{['predicted_forces', 'forces_std', 'label_forces']} present = {given}."
            )
        pred = np.asarray(predicted, dtype=float)
        lab = np.asarray(label, dtype=float)
        sig = _check_std("forces_std", std)
        if not pred.shape == lab.shape == sig.shape:
            raise ConfigurationError(
                f"force arrays must have the same shape (n_atoms, 3); got predicted "
                f"{pred.shape}, std {sig.shape}, label {lab.shape}."
            )
        z2 = ((lab - pred) / sig) ** 2
        max_err = float(np.max(np.abs(pred - lab)))
        if counted and self.force_threshold_eV_per_A is not None:
            self.force_S, self.force_n = self._accumulate(
                self.force_S, self.force_n, float(z2.sum()), int(z2.size)
            )
        exceeds = None
        if self.force_threshold_eV_per_A is not None:
            exceeds = max_err > self.force_threshold_eV_per_A
        return {
            "force_z2_mean": float(z2.mean()),
            "force_max_abs_error_eV_per_A": max_err,
            "force_exceeds_threshold": exceeds,
        }

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """Return the full state as a JSON-serialisable dict."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["format_version"] = _FORMAT_VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """Rebuild a calibrator from :meth:`to_dict` output."""
        data = dict(data)
        version = data.pop("format_version", _FORMAT_VERSION)
        if version != _FORMAT_VERSION:
            raise ConfigurationError(
                f"calibration state format_version {version!r} is not supported "
                f"(this otfparsl reads {_FORMAT_VERSION})."
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown keys in calibration state: {unknown}; allowed: {sorted(known)}."
            )
        return cls(**data)

    def to_json(self) -> str:
        """Return the state as a JSON string."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Calibrator:
        """Rebuild a calibrator from :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state to ``path`` atomically (temporary file, fsync, rename)."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibrator:
        """Read a state written by :meth:`save`."""
        target = Path(path)
        if not target.is_file():
            raise ConfigurationError(
                f"calibration state file not found: {str(target)!r}. Check the run directory."
            )
        return cls.from_json(target.read_text(encoding="utf-8"))
