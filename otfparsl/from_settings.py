"""Turn run settings into the core's explicit values: model spec, sampler config, calibrator.

The core never receives a settings object (conventions, "Settings are data"): these functions
are the one place where the run YAML's sections become :class:`~otfparsl.models.base.ModelSpec`,
:class:`~otfparsl.bayes.sghmc.SGHMCConfig`, :class:`~otfparsl.calibration.Calibrator` and the
:class:`~otfparsl.md.TemperatureProgramme` with its segments, with
the model family's published defaults filling what the YAML leaves open. No Parsl.
"""

from __future__ import annotations

from otfparsl.bayes.sghmc import SGHMCConfig
from otfparsl.calibration import Calibrator
from otfparsl.md import Segment, TemperatureProgramme
from otfparsl.models.base import FamilyDefaults, ModelSpec
from otfparsl.settings import (
    BayesSettings,
    CalibrationSettings,
    MDSettings,
    ModelSettings,
    RunSettings,
    SegmentSettings,
)
from otfparsl.units import ENERGY_SIGMA_FRACTION_OF_K


def model_spec(model: ModelSettings, device: str | None = None) -> ModelSpec:
    """Turn the model settings into a :class:`ModelSpec` (on ``device``, default the settings')."""
    return ModelSpec(
        family=model.family,
        source=model.source,
        dtype=model.dtype,
        device=device or model.device,
        seed=model.seed,
    )


def sampler_config(bayes: BayesSettings, defaults: FamilyDefaults) -> SGHMCConfig:
    """Build the SGHMC settings from the run settings and the family's published defaults."""
    return SGHMCConfig(
        n_steps=bayes.n_steps,
        batch_size=bayes.batch_size,
        step_size=bayes.step_size or defaults.step_size,
        noise_off_steps=bayes.noise_off_steps,
        noise_ramp_steps=bayes.noise_ramp_steps,
        priority=bayes.priority,
        sampler=bayes.sampler,
        gradients=bayes.gradients,
    )


def programme(md: MDSettings) -> TemperatureProgramme:
    """Turn the YAML temperature programme into the core's validated MD segments."""
    return TemperatureProgramme([segment_from_settings(seg) for seg in md.segments])


def segment_from_settings(segment: SegmentSettings) -> Segment:
    """The core's MD segment of one YAML segment (the one place the two meet)."""
    return Segment(**segment.model_dump())


def energy_sigma_eV(calibration: CalibrationSettings) -> float:
    """sigma_E of the likelihood, eV: a fixed fraction of the threshold K (method.md section 1)."""
    return ENERGY_SIGMA_FRACTION_OF_K * calibration.energy_threshold_eV


def make_calibrator(settings: RunSettings, defaults: FamilyDefaults) -> Calibrator:
    """Build the calibrator from the settings (Gamma prior defaults from the model family)."""
    cal = settings.calibration
    return Calibrator(
        energy_threshold_eV=cal.energy_threshold_eV,
        a=cal.gamma_shape or defaults.calibration_a,
        b=cal.gamma_rate or defaults.calibration_b,
        confidence_level=cal.confidence,
        skip_first_steps=cal.skip_first_steps,
        ema_decay=cal.ema_decay,
        min_counted=cal.min_counted_interventions,
        force_threshold_eV_per_A=cal.force_threshold_eV_per_A,
    )
