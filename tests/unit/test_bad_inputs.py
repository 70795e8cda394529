"""Bad input gets one clear line (``error: Type: message``, exit 2) and nothing is written over.

One table of bad inputs, each made from a tiny valid run (water, tiny MACE, PySCF HF/STO-3G),
run through the command line: ``validate`` always, ``run`` where the input is wrong whatever
the machine (a pre-existing run directory must stay byte-identical and no new one may appear).
"""

from __future__ import annotations

import collections
import copy
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from ase.build import bulk
from typer.testing import CliRunner

from otfparsl.cli import app
from otfparsl.errors import ConfigurationError, OtfparslError
from otfparsl.settings import RunSettings

WATER = "3\n\nO 0.0 0.0 0.119\nH 0.0 0.763 -0.477\nH 0.0 -0.763 -0.477\n"
VALID: dict[str, Any] = {
    "name": "t",
    "structure": "mol.xyz",
    "model": {"family": "mace", "source": "tiny"},
    "bayes": {"n_chains": 2, "n_steps": 10, "noise_off_steps": 2, "noise_ramp_steps": 2},
    "labeler": {"kind": "pyscf", "options": {"xc": "hf", "basis": "sto-3g"}},
    "md": {"segments": [{"duration_fs": 2.0}]},
}
BAD_SITE = """
from parsl.config import Config
from parsl.executors import ThreadPoolExecutor


def make_config(run_dir, **options):
    return Config(executors=[ThreadPoolExecutor(label="chains"), ThreadPoolExecutor(label="dft")])
"""
VASP_VARS = ("ASE_VASP_COMMAND", "VASP_COMMAND", "VASP_SCRIPT", "VASP_PP_PATH")


def _merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "options":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _seg(**kw: Any) -> dict:
    return {"md": {"segments": [{"duration_fs": 2.0, **kw}]}}


def _vasp(**options: Any) -> dict:
    return {"structure": "cu.xyz", "labeler": {"kind": "vasp", "options": options, "retries": 0}}


def _no_write_access(monkeypatch: pytest.MonkeyPatch) -> None:
    """This user may read but not write anywhere (as on a read-only or foreign folder)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not mode & os.W_OK and real(path, mode, **kw))


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file system has 1 MB free."""
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))


_NAME_MESSAGE = "name: must be a plain folder name (the run directory defaults to runs/NAME)"


@dataclass(frozen=True)
class Case:
    """One bad input: how to make it, and the one line it must produce."""

    id: str
    error: str
    message: str
    patch: dict = field(default_factory=dict)
    text: str | None = None  # the whole run file instead of VALID + patch
    missing: bool = False  # pass a run file that does not exist
    commands: tuple[str, ...] = ("validate", "run")
    args: Callable[[Path], list[str]] | None = None  # extra CLI arguments (site profiles)
    setup: Callable[[pytest.MonkeyPatch], None] | None = None  # the machine's state (disk, rights)


CASES = [
    Case(
        "misspelt-top-key",
        "ConfigurationError",
        "unknown setting 'calibraton'. Did you mean 'calibration'?",
        {"calibraton": {"confidence": 0.9}},
    ),
    Case(
        "misspelt-nested-key",
        "ConfigurationError",
        "Did you mean 'temperature_K'?",
        _seg(temprature_K=300),
    ),
    Case(
        "misspelt-bayes-key",
        "ConfigurationError",
        "unknown setting 'bayes.n_chain'. Did you mean 'n_chains'?",
        {"bayes": {"n_chain": 4}},
    ),
    Case(
        "unknown-section",
        "ConfigurationError",
        "unknown setting 'sampler'. Allowed: analyses, bayes, calibration",
        {"sampler": {"n_steps": 3}},
    ),
    Case(
        "confidence-percent",
        "ConfigurationError",
        "confidence must be in (0, 1); got 95.0. Did you mean 0.95?",
        {"calibration": {"confidence": 95}},
    ),
    Case(
        "negative-temperature",
        "ConfigurationError",
        "md.segments.0.temperature_K: Input should be greater than 0",
        _seg(temperature_K=-300),
    ),
    Case(
        "zero-duration",
        "ConfigurationError",
        "md.segments.0.duration_fs: Input should be greater than 0",
        {"md": {"segments": [{"duration_fs": 0}]}},
    ),
    Case(
        "timestep-too-large",
        "ConfigurationError",
        "timestep_fs: Input should be less than or equal to 10",
        _seg(timestep_fs=50),
    ),
    Case(
        "duration-below-one-step",
        "ConfigurationError",
        "duration_fs=0.2 is shorter than one step of timestep_fs=0.5",
        _seg(duration_fs=0.2),
    ),
    Case(
        "zero-chains",
        "ConfigurationError",
        "bayes.n_chains: Input should be greater than or equal to 1",
        {"bayes": {"n_chains": 0}},
    ),
    Case(
        "noise-schedule-too-long",
        "ConfigurationError",
        "(8 + 4) exceed n_steps (10)",
        {"bayes": {"noise_off_steps": 8, "noise_ramp_steps": 4}},
    ),
    Case(
        "structure-missing",
        "ConfigurationError",
        "nowhere.xyz' does not exist",
        {"structure": "nowhere.xyz"},
    ),
    Case(
        "structure-unparsable",
        "ConfigurationError",
        "cannot read structure file",
        {"structure": "garbage.xyz"},
    ),
    Case(
        "overlapping-atoms",
        "ConfigurationError",
        "0.100 Å apart (minimum 0.5 Å): overlapping atoms",
        {"structure": "overlap.xyz"},
    ),
    Case(
        "element-unknown-to-model",
        "ModelError",
        "does not know the element(s) ['Xe']",
        {"structure": "xe.xyz"},
    ),
    Case(
        "model-device-missing",
        "ConfigurationError",
        "model.device = 'cuda:99' but this machine sees",
        {"model": {"device": "cuda:99"}},
    ),
    Case(
        "npt-on-molecule",
        "ConfigurationError",
        "md.segments[0] (npt): NPT needs a periodic cell in all three directions",
        _seg(ensemble="npt"),
    ),
    Case(
        "npt-cell-not-triangular",
        "ConfigurationError",
        "NPT (Melchionna) needs a triangular cell",
        {
            "structure": "cu_primitive.xyz",
            "labeler": {"kind": "ase", "options": {"name": "emt"}},
            **_seg(ensemble="npt"),
        },
    ),
    Case(
        "pyscf-on-periodic-cell",
        "ConfigurationError",
        "the 'pyscf' labeller handles molecules only",
        {"structure": "cu.xyz"},
    ),
    Case(
        "pyscf-spin-parity",
        "ConfigurationError",
        "spin (2S) = 1 does not fit 10 electrons",
        {"labeler": {"options": {"xc": "hf", "basis": "sto-3g", "spin": 1}}},
    ),
    Case(
        "vasp-on-molecule",
        "ConfigurationError",
        "the 'vasp' labeller needs a periodic cell",
        {"labeler": {"kind": "vasp", "options": {}}},
    ),
    Case(
        "unknown-labeler-option",
        "ConfigurationError",
        "labeler.options: unknown option 'basiss' (= 'sto-3g') of the 'pyscf' labeler. Did you mean 'basis'?",
        {"labeler": {"options": {"xc": "hf", "basiss": "sto-3g"}}},
    ),
    Case(
        "bad-retry-override-option",
        "ConfigurationError",
        "labeler.retries[1] (retry 2): unknown option 'level_shfit'",
        {"labeler": {"retries": [{"max_cycle": 300}, {"level_shfit": 0.5}]}},
    ),
    Case(
        "bad-retry-override-value",
        "ConfigurationError",
        "labeler.retries[0] (retry 1): damp must be in [0, 1)",
        {"labeler": {"retries": [{"damp": 1.5}]}},
    ),
    Case(
        "unknown-labeler-kind",
        "ConfigurationError",
        "labeler.kind: unknown labeler kind 'gaussian'; allowed: ase, cp2k, pyscf, pyscf_pbc, vasp",
        {"labeler": {"kind": "gaussian"}},
    ),
    Case(
        "yaml-not-a-mapping",
        "ConfigurationError",
        "must hold a mapping of settings",
        text="- structure\n- md\n",
    ),
    Case(
        "yaml-invalid",
        "ConfigurationError",
        "is not valid YAML",
        text="structure: [mol.xyz\nmd: {\n",
    ),
    Case("run-file-missing", "ConfigurationError", "missing.yaml' does not exist", missing=True),
    Case(
        "vasp-command-missing",
        "ConfigurationError",
        "no VASP command: none of ASE_VASP_COMMAND",
        _vasp(),
        commands=("validate",),
    ),
    Case(
        "vasp-program-not-on-path",
        "ConfigurationError",
        "program 'vasp_std_not_here' is not on PATH",
        _vasp(command="vasp_std_not_here"),
        commands=("validate",),
    ),
    Case(
        "potcar-folder-missing",
        "ConfigurationError",
        "potpaw_PBE' does not exist",
        _vasp(command="true", pp_path="no_pp_here"),
        commands=("validate",),
    ),
    Case(
        "potcar-element-missing",
        "ConfigurationError",
        "no POTCAR for 1 element(s)",
        _vasp(command="true", pp_path="pp"),
        commands=("validate",),
    ),
    Case(
        "ase-calculator-unknown",
        "ConfigurationError",
        "cannot load the ASE calculator 'nosuchcode'",
        {"labeler": {"kind": "ase", "options": {"name": "nosuchcode"}}},
        commands=("validate",),
    ),
    Case(
        "threshold-infinite",
        "ConfigurationError",
        "calibration.energy_threshold_eV: must be a finite number; .inf and .nan are not allowed",
        {"calibration": {"energy_threshold_eV": float("inf")}},
    ),
    Case(
        "step-size-nan",
        "ConfigurationError",
        "bayes.step_size: must be a finite number",
        {"bayes": {"step_size": float("nan")}},
    ),
    Case(
        "gamma-shape-infinite",
        "ConfigurationError",
        "calibration.gamma_shape: must be a finite number; .inf and .nan are not allowed, write a number (got inf)",
        {"calibration": {"gamma_shape": float("inf")}},
    ),
    Case(
        "temperature-boolean",
        "ConfigurationError",
        "md.segments.0.temperature_K: a boolean is not a number here; write a number",
        _seg(temperature_K=True),
    ),
    Case(
        "n-chains-boolean",
        "ConfigurationError",
        "bayes.n_chains: a boolean is not a number here",
        {"bayes": {"n_chains": True}},
    ),
    Case(
        "batch-size-one",
        "ConfigurationError",
        "batch_size must be >= 2 with priority 'unbiased'",
        {"bayes": {"batch_size": 1}},
    ),
    Case("name-parent-folder", "ConfigurationError", f"{_NAME_MESSAGE}", {"name": ".."}),
    Case("name-with-slash", "ConfigurationError", "(got 'a/b')", {"name": "a/b"}),
    Case("name-empty", "ConfigurationError", f"{_NAME_MESSAGE}", {"name": ""}),
    Case("name-trailing-space", "ConfigurationError", "(got 't ')", {"name": "t "}),
    Case(
        "basis-lacks-element",
        "ConfigurationError",
        "labeler.options: basis='sto-3g' has no functions for element(s) ['Au']",
        {"structure": "au2.xyz"},
    ),
    Case(
        "multi-frame-structure",
        "ConfigurationError",
        "holds 2 frames; name the one to start from: structure: two_frames.xyz@-1 (the last)",
        {"structure": "two_frames.xyz"},
    ),
    Case(
        "frame-out-of-range",
        "ConfigurationError",
        "frame 5 of structure file",
        {"structure": "two_frames.xyz@5"},
    ),
    Case(
        "model-file-relative-to-yaml",
        "ConfigurationError",
        "/in/weights/none.model' is neither 'tiny'",
        {"model": {"source": "weights/none.model"}},
    ),
    Case(
        "run-dir-inside-a-file",
        "ConfigurationError",
        "mol.xyz', is a file, not a folder",
        commands=("run",),
        args=lambda tmp: ["--run-dir", str(tmp / "mol.xyz" / "run")],
    ),
    Case(
        "run-dir-not-writable",
        "ConfigurationError",
        "is not writable by this user",
        commands=("run",),
        setup=_no_write_access,
    ),
    Case(
        "disk-full",
        "ConfigurationError",
        "its file system has 1.0 MB free, a run needs at least 10 MB",
        commands=("run",),
        setup=_disk_full,
    ),
    Case(
        "site-without-three-roles",
        "SiteError",
        "must define exactly the executors ['chains', 'dft', 'local']",
        commands=("run", "sites check"),
        args=lambda tmp: ["--site", str(tmp / "badsite.py")],
    ),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Structure files and a site profile shared by every case."""
    import ase.io

    from otfparsl.preflight import check_model
    from otfparsl.settings import ModelSettings

    tmp = tmp_path_factory.mktemp("inputs")
    (tmp / "mol.xyz").write_text(WATER)
    # load the tiny model once (shared by every case); mace prints a notice on its first build
    check_model(ModelSettings(**VALID["model"]), ase.io.read(tmp / "mol.xyz"))
    (tmp / "overlap.xyz").write_text("2\n\nH 0 0 0\nH 0 0 0.1\n")
    (tmp / "xe.xyz").write_text("2\n\nXe 0 0 0\nO 0 0 3.0\n")
    (tmp / "au2.xyz").write_text("2\n\nAu 0 0 0\nAu 0 0 2.5\n")
    (tmp / "two_frames.xyz").write_text(WATER + WATER)
    (tmp / "garbage.xyz").write_text("this is not\na structure file\n\x00\x01\n")
    ase.io.write(tmp / "cu.xyz", bulk("Cu", "fcc", a=3.6, cubic=True), format="extxyz")
    ase.io.write(tmp / "cu_primitive.xyz", bulk("Cu", "fcc", a=3.6), format="extxyz")
    (tmp / "pp" / "potpaw_PBE" / "Au").mkdir(parents=True)
    (tmp / "pp" / "potpaw_PBE" / "Au" / "POTCAR").write_text("fake\n")
    (tmp / "badsite.py").write_text(BAD_SITE)
    return tmp


def _write_run(case: Case, inputs: Path, folder: Path) -> Path:
    folder.mkdir()
    path = folder / "run.yaml"
    if case.missing:
        return folder / "missing.yaml"
    if case.text is not None:
        path.write_text(case.text)
        return path
    data = _merge(VALID, case.patch)
    data["structure"] = str(inputs / data["structure"])
    options = data["labeler"].get("options", {})
    if "pp_path" in options:
        options["pp_path"] = str(inputs / options["pp_path"])
    path.write_text(yaml.safe_dump(data))
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _assert_one_line(result, case: Case) -> None:
    text = result.output.strip()
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output!r} {result.exception!r}"
    assert "Traceback" not in result.output
    assert "\n" not in text, f"more than one line: {text!r}"
    assert text.startswith(f"error: {case.error}: "), text
    assert case.message in text, text


@pytest.fixture()
def no_vasp_env(monkeypatch):
    for name in VASP_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture()
def no_real_run(monkeypatch):
    """Should a bad input get past the checks, fail at once instead of running MD."""
    from otfparsl.workflow import driver

    def refuse(*args, **kwargs):
        raise AssertionError("the run started: the bad input was not caught")

    monkeypatch.setattr(driver, "_run", refuse, raising=False)


def _old_run_yaml(run_yaml) -> str:
    """The run.yaml of an earlier run: the same settings when they are valid (it would be resumed)."""
    try:
        return RunSettings.from_yaml(run_yaml).resolve_paths(Path.cwd()).to_yaml()
    except OtfparslError:
        return "name: old\n"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(
    case, inputs, tmp_path, monkeypatch, no_vasp_env, no_real_run
):
    run_yaml = _write_run(case, inputs, tmp_path / "in")
    extra = case.args(inputs) if case.args else []
    if case.setup is not None:
        case.setup(monkeypatch)
    runner = CliRunner()
    if "validate" in case.commands:
        _assert_one_line(runner.invoke(app, ["validate", str(run_yaml)]), case)
    if "run" in case.commands:
        old = tmp_path / "old_run"
        old.mkdir()
        (old / "run.yaml").write_text(_old_run_yaml(run_yaml))
        (old / "sentinel.txt").write_bytes(b"keep me\x00\n")
        before = _snapshot(old)
        _assert_one_line(
            runner.invoke(app, ["run", str(run_yaml), "--run-dir", str(old), *extra]), case
        )
        assert _snapshot(old) == before
        assert sorted(p.name for p in old.iterdir()) == ["run.yaml", "sentinel.txt"]
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        _assert_one_line(runner.invoke(app, ["run", str(run_yaml), *extra]), case)
        assert list(cwd.iterdir()) == [], "a run directory appeared for a bad input"
    if "sites check" in case.commands:
        runinfo = tmp_path / "site_check"
        _assert_one_line(
            runner.invoke(app, ["sites", "check", *extra[1:], "--run-dir", str(runinfo)]), case
        )
        assert not runinfo.exists()


def test_debug_shows_the_traceback(inputs, tmp_path):
    run_yaml = _write_run(CASES[0], inputs, tmp_path / "in")
    with pytest.raises(ConfigurationError, match="Did you mean 'calibration'"):
        CliRunner().invoke(app, ["--debug", "validate", str(run_yaml)], catch_exceptions=False)
    result = CliRunner().invoke(app, ["--debug", "validate", str(run_yaml)])
    assert result.exit_code == 1 and isinstance(result.exception, ConfigurationError)


def test_the_valid_base_run_passes(inputs, tmp_path, no_vasp_env):
    """The table's base input is valid: every failure above comes from its one change."""
    run_yaml = _write_run(Case("valid", "", ""), inputs, tmp_path / "in")
    result = CliRunner().invoke(app, ["validate", str(run_yaml)])
    assert result.exit_code == 0, result.output
    assert "valid: 3 atoms (H2O)" in result.output
