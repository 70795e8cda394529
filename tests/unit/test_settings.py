"""Run settings: published defaults, typo suggestions, range checks, YAML round trip."""

from __future__ import annotations

import typing

import pytest

from otfparsl.errors import ConfigurationError
from otfparsl.settings import (
    BayesSettings,
    CalibrationSettings,
    LabelerSettings,
    MDSettings,
    ModelSettings,
    RunSettings,
    SegmentSettings,
)
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
        ({"calibration": {"energy_threshold_eV": float("inf")}}, "energy_threshold_eV: must be a finite number"),
        ({"calibration": {"gamma_rate": float("nan")}}, "gamma_rate: must be a finite number"),
        ({"bayes": {"step_size": float("-inf")}}, "step_size: must be a finite number"),
        ({"calibration": {"confidence": True}}, "confidence: a boolean is not a number here"),
        ({"bayes": {"n_chains": True}}, "n_chains: a boolean is not a number here"),
        ({"bayes": {"variance_ddof": False}}, "variance_ddof: a boolean is not a number here"),
        ({"labeler": {"retries": True}}, "retries: a boolean is not a number here"),
        ({"bayes": {"batch_size": 1}}, "batch_size must be >= 2 with priority 'unbiased'"),
        ({"name": ".."}, "name: must be a plain folder name"),
        ({"name": "runs\\x"}, "name: must be a plain folder name"),
        ({"name": "a\x00b"}, "name: must be a plain folder name"),
        ({"name": " t"}, "name: must be a plain folder name"),
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


def _number_kinds(annotation) -> set[str]:
    """{'float', 'int'}: the number types an annotation admits (through unions and Literal)."""
    if annotation is float or annotation is int:
        return {annotation.__name__}
    if typing.get_origin(annotation) is typing.Literal:
        return {"int"} if any(type(a) is int for a in typing.get_args(annotation)) else set()
    return set().union(*(_number_kinds(a) for a in typing.get_args(annotation)))


SECTIONS = {"model": ModelSettings, "bayes": BayesSettings, "calibration": CalibrationSettings,
            "labeler": LabelerSettings, "md": MDSettings, "segment": SegmentSettings}  # fmt: skip


def _with(section: str, name: str, value) -> dict:
    if section == "segment":
        return {**MINIMAL, "md": {"segments": [{"duration_fs": 10, name: value}]}}
    return {**MINIMAL, section: {name: value}}


def test_every_number_setting_refuses_booleans_and_non_finite_values():
    """No float setting accepts .inf, .nan or true; no integer setting accepts true (pydantic would)."""
    checked = {"float": 0, "int": 0}
    for section, model in SECTIONS.items():
        for name, field in model.model_fields.items():
            kinds = _number_kinds(field.annotation)
            for kind in kinds:
                checked[kind] += 1
            if kinds:
                with pytest.raises(ConfigurationError, match=f"{name}: a boolean is not a number here"):
                    RunSettings.from_dict(_with(section, name, True))
            if "float" in kinds:
                for value in (float("inf"), float("-inf"), float("nan")):
                    with pytest.raises(ConfigurationError, match=rf"{name}: (must be a finite number|Input should be)"):
                        RunSettings.from_dict(_with(section, name, value))
    assert checked == {"float": 16, "int": 17}, checked


def test_batch_of_one_is_allowed_with_uniform_priority():
    s = RunSettings.from_dict({**MINIMAL, "bayes": {"batch_size": 1, "priority": "uniform"}})
    assert s.bayes.batch_size == 1


def test_a_model_file_is_found_next_to_the_yaml_and_a_keyword_stays(tmp_path):
    (tmp_path / "mol.xyz").write_text("1\n\nH 0 0 0\n")
    (tmp_path / "mine.model").write_bytes(b"weights")
    (tmp_path / "weights").write_bytes(b"weights")  # no suffix, no separator: resolved as it exists
    run = "structure: mol.xyz\nmd:\n  segments:\n    - duration_fs: 5\nmodel:\n  family: mace\n"
    cases = {
        "mine.model": str(tmp_path / "mine.model"),
        "weights": str(tmp_path / "weights"),
        "sub/missing.pt": str(tmp_path / "sub" / "missing.pt"),  # a path: its error names where
        "tiny": "tiny",
        "mace-mp-0:medium": "mace-mp-0:medium",
        "0.3.0": "0.3.0",
        "7net-0": "7net-0",
        "/abs/x.model": "/abs/x.model",
        "~/x.model": "~/x.model",
    }
    for source, expected in cases.items():
        (tmp_path / "run.yaml").write_text(run + f"  source: {source!r}\n")
        assert RunSettings.from_yaml(tmp_path / "run.yaml").model.source == expected, source
