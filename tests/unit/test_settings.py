"""Run settings: published defaults, typo suggestions, range checks, YAML round trip."""

from __future__ import annotations

import pytest

from otfparsl.errors import ConfigurationError
from otfparsl.settings import RunSettings
from otfparsl.units import KCAL_PER_MOL_EV

MINIMAL = {"structure": "x.xyz", "md": {"segments": [{"duration_fs": 10}]}}


def test_defaults_are_the_published_values():
    s = RunSettings.from_dict(MINIMAL)
    assert s.bayes.n_chains == 8
    assert s.bayes.n_steps == 2000
    assert s.bayes.batch_size == 5
    assert s.bayes.noise_off_steps == 398 and s.bayes.noise_ramp_steps == 100
    assert s.bayes.priority == "unbiased"
    assert s.calibration.confidence == 0.95
    assert s.calibration.skip_first_steps == 3
    assert s.bayes.variance_ddof == 1
    assert s.calibration.energy_threshold_eV == pytest.approx(0.5 * KCAL_PER_MOL_EV)
    assert s.md.segments[0].friction_per_fs == 0.01


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"calibraton": {}}, "Did you mean 'calibration'"),
        ({"md": {"segments": [{"duration_fs": 1, "temprature_K": 3}]}}, "Did you mean 'temperature_K'"),
        ({"bayes": {"n_chain": 4}}, "Did you mean 'n_chains'"),
        ({"calibration": {"confidence": 95}}, "Did you mean 0.95"),
        ({"md": {"segments": [{"duration_fs": 1, "temperature_K": -3}]}}, "temperature_K"),
        ({"bayes": {"priority": "biased"}}, "priority"),
        ({"bayes": {"n_steps": 100}}, "exceed n_steps"),
        ({"calibration": {"ema_decay": 1.5}}, "ema_decay must be in (0, 1)"),
        ({"md": {"segments": []}}, "segments"),
    ],
)
def test_bad_settings_get_one_clear_message(patch, expected):
    with pytest.raises(ConfigurationError, match=None) as info:
        RunSettings.from_dict({**MINIMAL, **patch})
    assert expected in str(info.value)


def test_yaml_round_trip_and_relative_structure(tmp_path):
    (tmp_path / "mol.xyz").write_text("1\n\nH 0 0 0\n")
    path = tmp_path / "run.yaml"
    path.write_text("structure: mol.xyz\nmd:\n  segments:\n    - duration_fs: 5\n")
    s = RunSettings.from_yaml(path)
    assert s.structure == str((tmp_path / "mol.xyz").resolve())
    again = tmp_path / "again.yaml"
    again.write_text(s.to_yaml())
    assert RunSettings.from_yaml(again) == s


def test_missing_run_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="does not exist"):
        RunSettings.from_yaml(tmp_path / "nope.yaml")


def test_the_sghmc_implementation_is_a_setting():
    from otfparsl.from_settings import sampler_config
    from otfparsl.models.base import FamilyDefaults
    from otfparsl.settings import BayesSettings

    defaults = FamilyDefaults(sigma_tl=0.2, step_size=1e-3, head_hidden=(32, 16))
    assert sampler_config(BayesSettings(), defaults).sampler == "flat"
    assert sampler_config(BayesSettings(sampler="reference"), defaults).sampler == "reference"
