"""Inputs that used to fail only after the run directory was written, refused or honoured up front.

Frame selection (``file.extxyz@N``), velocities kept from the structure (and through the run's
saved copy), the sampler and calibrator built in preflight, the run directory's rights and free
space, and PySCF bases that must cover every element.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import shutil
from types import SimpleNamespace

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from otfparsl.errors import ConfigurationError
from otfparsl.structures import keep_input_velocities, read_structure, split_frame

WATER = "3\n\nO 0.0 0.0 0.119\nH 0.0 0.763 -0.477\nH 0.0 -0.763 -0.477\n"


def _water(shift: float = 0.0) -> Atoms:
    atoms = Atoms("OH2", positions=[[0, 0, 0.119], [0, 0.763, -0.477], [0, -0.763, -0.477]])
    atoms.positions += shift
    return atoms


# ----------------------------------------------------------------------------- frames
@pytest.fixture()
def three_frames(tmp_path):
    path = tmp_path / "traj.extxyz"
    ase.io.write(path, [_water(shift) for shift in (0.0, 1.0, 2.0)], format="extxyz")
    return path


@pytest.mark.parametrize(
    ("selector", "shift"), [("@0", 0.0), ("@1", 1.0), ("@2", 2.0), ("@-1", 2.0), ("@-3", 0.0)]
)
def test_a_named_frame_is_read(three_frames, selector, shift):
    atoms = read_structure(f"{three_frames}{selector}")
    assert np.allclose(atoms.positions, _water(shift).positions)


def test_several_frames_need_a_selector(three_frames):
    with pytest.raises(
        ConfigurationError,
        match=r"holds 3 frames; .*traj.extxyz@-1 \(the last\) or traj.extxyz@N \(N from 0 to 2\)",
    ):
        read_structure(three_frames)
    with pytest.raises(ConfigurationError, match="frame 3 of structure file .* holds 3 frame"):
        read_structure(f"{three_frames}@3")


def test_one_frame_needs_no_selector_and_a_literal_name_wins(tmp_path):
    (tmp_path / "mol.xyz").write_text(WATER)
    assert len(read_structure(tmp_path / "mol.xyz")) == 3
    assert len(read_structure(f"{tmp_path / 'mol.xyz'}@-1")) == 3
    literal = tmp_path / "mol.xyz@1"  # a file really named so is that file, not frame 1
    literal.write_text(WATER)
    assert split_frame(literal) == (literal, None)
    assert len(read_structure(literal)) == 3


def test_the_selector_survives_the_yaml_path_resolution(three_frames):
    from otfparsl.settings import RunSettings

    run_yaml = three_frames.parent / "run.yaml"
    run_yaml.write_text("structure: traj.extxyz@1\nmd:\n  segments:\n    - duration_fs: 5\n")
    settings = RunSettings.from_yaml(run_yaml)
    assert settings.structure == f"{three_frames.resolve()}@1"
    assert np.allclose(read_structure(settings.structure).positions, _water(1.0).positions)


# ----------------------------------------------------------------------------- velocities
def _with_momenta(tmp_path) -> tuple:
    """A water file with momenta of about 300 K (written through extxyz, as a trajectory is)."""
    atoms = _water()
    rng = np.random.default_rng(3)
    atoms.set_momenta(rng.normal(size=(3, 3)) * np.sqrt(atoms.get_masses())[:, None] * 0.05)
    path = tmp_path / "moving.extxyz"
    ase.io.write(path, atoms, format="extxyz")
    return path, read_structure(path).get_momenta()


def test_velocities_survive_reading_and_the_runs_saved_structure(tmp_path):
    from otfparsl.workflow.driver import _extxyz  # what the run writes as RUN_DIR/structure.extxyz

    path, momenta = _with_momenta(tmp_path)
    assert np.any(momenta)
    saved = tmp_path / "structure.extxyz"
    saved.write_text(_extxyz(read_structure(path)))
    assert np.array_equal(
        read_structure(saved).get_momenta(), momenta
    )  # a resumed run starts alike


class _Programme:
    """A programme with no segment: records whether velocities were drawn."""

    segments: tuple = ()

    def __init__(self) -> None:
        self.drawn = False

    def initialize_velocities(self, atoms: Atoms, seed: int) -> None:
        self.drawn = True
        atoms.set_momenta(np.ones((len(atoms), 3)))


def _start_walker(atoms: Atoms, monkeypatch) -> _Programme:
    from otfparsl.workflow import walkers

    monkeypatch.setattr(
        walkers, "OnTheFlyCalculator", lambda learner, walker: SimpleNamespace(step_count=0)
    )
    programme = _Programme()
    ctx = SimpleNamespace(
        settings=SimpleNamespace(md=SimpleNamespace(seed=1)), learner=None, programme=programme
    )
    walkers._run_walker(0, atoms, ctx, None)
    return programme


def test_a_walker_starts_from_the_structures_velocities(tmp_path, monkeypatch, caplog):
    path, momenta = _with_momenta(tmp_path)
    atoms = read_structure(path)
    temperature = atoms.get_temperature()
    with caplog.at_level(logging.WARNING, logger="otfparsl.structures"):
        programme = _start_walker(atoms, monkeypatch)
    assert not programme.drawn
    assert np.array_equal(atoms.get_momenta(), momenta)
    assert f"velocities of the input structure ({temperature:.1f} K" in caplog.text


def test_a_walker_draws_velocities_for_a_structure_at_rest(monkeypatch, caplog):
    atoms = _water()
    atoms.set_momenta(np.zeros((3, 3)))  # zero momenta are no velocities
    with caplog.at_level(logging.WARNING, logger="otfparsl.structures"):
        programme = _start_walker(atoms, monkeypatch)
    assert programme.drawn and not caplog.text
    assert not keep_input_velocities(_water())


# ----------------------------------------------------------------------------- sampler, calibrator
@pytest.fixture()
def water_settings(tmp_path):
    from otfparsl.settings import RunSettings

    (tmp_path / "mol.xyz").write_text(WATER)
    return RunSettings.from_dict({
        "structure": str(tmp_path / "mol.xyz"),
        "model": {"family": "mace", "source": "tiny"},
        "bayes": {"n_chains": 2, "n_steps": 10, "noise_off_steps": 2, "noise_ramp_steps": 2},
        "labeler": {"kind": "pyscf", "options": {"xc": "hf", "basis": "sto-3g"}},
        "md": {"segments": [{"duration_fs": 2.0}]},
    })  # fmt: skip


def test_preflight_builds_the_calibrator_with_the_family_defaults(water_settings, monkeypatch):
    from otfparsl.from_settings import model_spec
    from otfparsl.models import cached_adapter
    from otfparsl.preflight import check_run

    adapter = cached_adapter(model_spec(water_settings.model))
    monkeypatch.setattr(
        adapter, "defaults", dataclasses.replace(adapter.defaults, calibration_a=-1.0)
    )
    with pytest.raises(
        ConfigurationError, match=r"^calibration: a must be a finite number > 0; got -1.0"
    ):
        check_run(water_settings)


def test_preflight_turns_a_foreign_refusal_into_a_configuration_error(water_settings, monkeypatch):
    from otfparsl import preflight

    def refuse(*args):
        raise TypeError("'<' not supported")

    monkeypatch.setattr(preflight, "sampler_config", refuse)
    with pytest.raises(
        ConfigurationError, match=r"^bayes: .*mace family's defaults.*TypeError: '<' not supported"
    ):
        preflight.check_sampler_and_calibrator(water_settings)


# ----------------------------------------------------------------------------- run directory
def test_a_writable_run_dir_passes_and_nothing_is_created(tmp_path):
    from otfparsl.preflight import check_run_dir_writable

    check_run_dir_writable(tmp_path / "runs" / "t")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_or_full_run_dir_is_refused(tmp_path, monkeypatch):
    from otfparsl.preflight import check_run_dir_writable

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigurationError, match="is a file, not a folder"):
        check_run_dir_writable(tmp_path / "file" / "run")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 500_000, 500_000))
    with pytest.raises(ConfigurationError, match="has 0.5 MB free, a run needs at least 10 MB"):
        check_run_dir_writable(tmp_path / "run")
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False)
    with pytest.raises(ConfigurationError, match=f"'{tmp_path}', is not writable by this user"):
        check_run_dir_writable(tmp_path / "run")


# ----------------------------------------------------------------------------- PySCF bases
def test_pyscf_basis_must_cover_every_element():
    pytest.importorskip("pyscf")
    from otfparsl.labelers.pyscf import PySCFLabeler, elements_without_basis

    assert elements_without_basis("sto-3g", ["O", "H", "Au", "H"]) == ["Au"]
    assert elements_without_basis({"H": "sto-3g", "default": "6-31g"}, ["O", "H"]) == []
    assert elements_without_basis({"H": "sto-3g"}, ["O", "H"]) == ["O"]
    assert elements_without_basis("no-such-basis", ["H"]) == ["H"]
    PySCFLabeler(xc="hf", basis="sto-3g").check_structure(_water())
    with pytest.raises(
        ConfigurationError, match=r"basis='6-31g' has no functions for element\(s\) \['Au'\]"
    ):
        PySCFLabeler(xc="hf", basis="6-31g").check_structure(
            Atoms("Au2", positions=[[0, 0, 0], [0, 0, 2.5]])
        )


def test_pyscf_pbc_checks_its_basis_with_the_structure():
    pytest.importorskip("pyscf")
    from otfparsl.labelers.pyscf_pbc import PySCFPeriodicLabeler

    PySCFPeriodicLabeler().check_structure(bulk("Si", "diamond", a=5.43))
    with pytest.raises(ConfigurationError, match="PySCF has no basis 'gth-szv' for La"):
        PySCFPeriodicLabeler().check_structure(bulk("La", "fcc", a=5.3, cubic=True))
