"""VASP labeler: environment checks and input writing (VASP itself is not available here)."""

from __future__ import annotations

import pytest
from ase.build import bulk, molecule

from otfparsl.errors import ConfigurationError
from otfparsl.labelers import make_labeler
from otfparsl.labelers.vasp import VaspLabeler


@pytest.fixture
def no_vasp_env(monkeypatch):
    for var in ("ASE_VASP_COMMAND", "VASP_COMMAND", "VASP_SCRIPT", "VASP_PP_PATH"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake_pp(tmp_path):
    """A POTCAR tree with recognisable placeholder files (not real pseudopotentials)."""
    root = tmp_path / "pp"
    for name in ("Cu", "Mn_pv", "O"):
        folder = root / "potpaw_PBE" / name
        folder.mkdir(parents=True)
        (folder / "POTCAR").write_text(f"PLACEHOLDER POTCAR {name}\n")
    return root


def test_missing_command_gives_clear_error(tmp_path, no_vasp_env, fake_pp):
    labeler = make_labeler("vasp", pp_path=str(fake_pp))
    with pytest.raises(ConfigurationError, match="ASE_VASP_COMMAND") as info:
        labeler.label(bulk("Cu"), tmp_path / "w")
    assert "pass command=" in str(info.value)
    assert not (tmp_path / "w").exists()  # nothing was started


def test_command_not_on_path(tmp_path, no_vasp_env, monkeypatch, fake_pp):
    monkeypatch.setenv("ASE_VASP_COMMAND", "no_such_vasp_binary_xyz -n 4")
    with pytest.raises(ConfigurationError, match="not on PATH"):
        VaspLabeler(pp_path=str(fake_pp)).label(bulk("Cu"), tmp_path / "w")


def test_environment_command_found(no_vasp_env, monkeypatch):
    monkeypatch.setenv("VASP_COMMAND", "true vasp_std")
    assert VaspLabeler().resolve_command() == "true vasp_std"


def test_missing_potcars_gives_clear_error(tmp_path, no_vasp_env):
    with pytest.raises(ConfigurationError, match="VASP_PP_PATH is not set"):
        VaspLabeler().write_inputs(bulk("Cu"), tmp_path / "w")
    with pytest.raises(ConfigurationError, match="does not exist"):
        VaspLabeler(pp_path=str(tmp_path / "nowhere")).write_inputs(bulk("Cu"), tmp_path / "w")


def test_missing_element_potcar(tmp_path, no_vasp_env, fake_pp):
    with pytest.raises(ConfigurationError, match="POTCAR"):
        VaspLabeler(pp_path=str(fake_pp)).write_inputs(bulk("Ag"), tmp_path / "w")


def test_input_files_carry_the_settings(tmp_path, no_vasp_env, monkeypatch, fake_pp):
    monkeypatch.setenv("VASP_PP_PATH", str(fake_pp))
    atoms = bulk("MnO", "rocksalt", a=4.4) * (2, 1, 1)
    labeler = VaspLabeler(
        incar={"ENCUT": 520, "EDIFF": 1e-6, "ISMEAR": 0, "SIGMA": 0.05, "NELM": 120},
        kpts=(3, 2, 1),
        gamma=True,
        setups={"Mn": "_pv"},
    )
    labeler.write_inputs(atoms, tmp_path / "call")
    incar = {
        line.split("=")[0].strip(): line.split("=")[1].strip()
        for line in (tmp_path / "call" / "INCAR").read_text().splitlines()
        if "=" in line
    }
    assert float(incar["ENCUT"]) == 520 and float(incar["EDIFF"]) == 1e-6
    assert incar["ISMEAR"] == "0" and incar["NELM"] == "120" and incar["GGA"] == "PE"
    kpoints = (tmp_path / "call" / "KPOINTS").read_text().splitlines()
    assert kpoints[2].strip().lower().startswith("g") and kpoints[3].split() == ["3", "2", "1"]
    potcar = (tmp_path / "call" / "POTCAR").read_text()
    assert potcar.index("Mn_pv") < potcar.index("POTCAR O")  # POSCAR species order
    poscar = (tmp_path / "call" / "POSCAR").read_text().splitlines()
    assert poscar[5].split() == ["Mn", "O"] and poscar[6].split() == ["2", "2"]


def test_single_point_and_periodic_only(tmp_path, fake_pp):
    with pytest.raises(ConfigurationError, match="single points"):
        VaspLabeler(incar={"NSW": 50})
    with pytest.raises(ConfigurationError, match="periodic"):
        VaspLabeler(pp_path=str(fake_pp)).write_inputs(molecule("H2O"), tmp_path / "m")
