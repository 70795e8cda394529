"""The cluster workflows (LaMnO3, CaZrS3 + protons): their YAMLs validate, their VASP inputs are
the settings they cite (pymatgen's MPRelaxSet; the paper's INCAR and KPOINTS)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from otfparsl.cli import app
from otfparsl.labelers.vasp import VaspLabeler
from otfparsl.preflight import check_labeler, check_md
from otfparsl.settings import RunSettings
from otfparsl.structures import read_structure
from otfparsl.units import KCAL_PER_MOL_EV

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
LAMNO3 = WORKFLOWS / "lamno3" / "run.yaml"
CAZRS3 = {
    5: WORKFLOWS / "cazrs3_proton" / "run_K5.yaml",
    15: WORKFLOWS / "cazrs3_proton" / "run_K15.yaml",
}
CLUSTER_YAMLS = [LAMNO3, *CAZRS3.values()]
POTCARS = ("La", "Mn_pv", "O", "Ca_sv", "Zr_sv", "S", "H")


@pytest.fixture(scope="module")
def mace_mp0_file(tmp_path_factory) -> Path:
    """MACE-MP-0 medium's architecture (89 elements) with random weights: validation offline."""
    pytest.importorskip("mace")
    from otfparsl.testing import build_mace_mp0_medium_architecture

    return build_mace_mp0_medium_architecture(
        tmp_path_factory.mktemp("mp0") / "mace-mp-0-medium.model"
    )


@pytest.fixture
def placeholder_potcars(tmp_path, monkeypatch) -> Path:
    """A POTCAR tree of placeholder files (VASP's are licensed and never here)."""
    for name in POTCARS:
        folder = tmp_path / "pp" / "potpaw_PBE" / name
        folder.mkdir(parents=True)
        (folder / "POTCAR").write_text(f"PLACEHOLDER POTCAR {name}\n")
    monkeypatch.setenv("VASP_PP_PATH", str(tmp_path / "pp"))
    return tmp_path / "pp"


def _incar(path: Path) -> dict[str, str]:
    lines = [line.split("=", 1) for line in path.read_text().splitlines() if "=" in line]
    return {key.strip().upper(): value.split("#")[0].strip() for key, value in lines}


def _same(written: str, original: str) -> bool:
    """INCAR values equal as numbers, or as words (``.TRUE.`` = ``True``, ``Auto`` = ``AUTO``)."""
    try:
        return float(written) == float(original)
    except ValueError:
        return written.strip(".").lower() == original.strip(".").lower()


def _write_inputs(run_yaml: Path, workdir: Path) -> tuple[RunSettings, dict[str, str], list[str]]:
    settings = RunSettings.from_yaml(run_yaml)
    atoms = read_structure(settings.structure)
    VaspLabeler(**settings.labeler.options).write_inputs(atoms, workdir)
    return settings, _incar(workdir / "INCAR"), (workdir / "KPOINTS").read_text().splitlines()


@pytest.mark.parametrize("run_yaml", CLUSTER_YAMLS, ids=lambda p: p.parent.name + "/" + p.name)
def test_cluster_yamls_are_the_papers_runs(run_yaml):
    settings = RunSettings.from_yaml(run_yaml)
    assert settings.model.family == "mace" and settings.model.source == "mace-mp-0:medium"
    assert (settings.bayes.n_chains, settings.bayes.n_steps) == (8, 2000)
    assert settings.labeler.kind == "vasp"
    atoms = read_structure(settings.structure)
    check_md(settings.md, atoms)  # NPT: the LaMnO3 cell is triangular
    check_labeler(settings.labeler, atoms)


def test_programmes_and_thresholds():
    lamno3 = RunSettings.from_yaml(LAMNO3)
    assert [(s.ensemble, s.temperature_K, s.duration_fs, s.timestep_fs, s.pressure_bar) for s in lamno3.md.segments] == [
        ("npt", 300, 25000, 0.5, 1.0), ("npt", 800, 100000, 0.5, 1.0), ("npt", 300, 25000, 0.5, 1.0)]  # fmt: skip
    assert lamno3.calibration.energy_threshold_eV == pytest.approx(6 * KCAL_PER_MOL_EV, abs=1e-4)
    assert lamno3.analyses == ["lamno3_order"]
    for k_kcal, path in CAZRS3.items():
        run = RunSettings.from_yaml(path)
        assert run.calibration.energy_threshold_eV == pytest.approx(
            k_kcal * KCAL_PER_MOL_EV, abs=1e-4
        )
        assert [(s.ensemble, s.temperature_K, s.duration_fs, s.timestep_fs) for s in run.md.segments] == [
            ("langevin", 1500, 1000, 0.75), ("nve", 1500, 30000, 1.5)]  # fmt: skip
        assert run.analyses == ["cazrs3_protons"]
        assert len(read_structure(run.structure)) == 162


def test_lamno3_vasp_inputs_are_mprelaxsets_gga_u(tmp_path, placeholder_potcars):
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.vasp.sets import MPRelaxSet

    settings, incar, kpoints = _write_inputs(LAMNO3, tmp_path / "call")
    atoms = read_structure(settings.structure)
    mp = MPRelaxSet(AseAtomsAdaptor.get_structure(atoms))
    mp_incar = mp.incar
    order = (tmp_path / "call" / "POSCAR").read_text().splitlines()[5].split()  # species as written
    assert order == ["La", "Mn", "O"]
    mp_by_species = dict(
        zip(
            ["La", "Mn", "O"],
            zip(mp_incar["LDAUL"], mp_incar["LDAUU"], mp_incar["LDAUJ"], strict=True),
            strict=True,
        )
    )
    written = zip(
        incar["LDAUL"].split(), incar["LDAUU"].split(), incar["LDAUJ"].split(), strict=True
    )
    for symbol, (l_value, u_value, j_value) in zip(order, written, strict=True):
        mp_l, mp_u, mp_j = mp_by_species[symbol]
        assert float(u_value) == mp_u and float(j_value) == mp_j
        assert int(l_value) == mp_l or (
            mp_u == 0 and int(l_value) == -1
        )  # no +U: L = -1 (ASE) or 0 (MP)
    magmom = [
        float(m)
        for chunk in incar["MAGMOM"].split()
        for n, m in [chunk.split("*")]
        for _ in range(int(n))
    ]
    assert magmom == [float(m) for m in mp_incar["MAGMOM"]]  # structure order is La, Mn, O already
    for key in ("ENCUT", "ISMEAR", "SIGMA", "ISPIN", "LDAUTYPE", "LMAXMIX", "NELM", "LORBIT"):
        assert float(incar[key]) == float(mp_incar[key]), key
    for key in ("ALGO", "PREC", "LREAL"):
        assert incar[key].lower() == str(mp_incar[key]).lower(), key
    assert incar["LASPH"] == ".TRUE." and incar["LDAU"] == ".TRUE."
    assert (incar["NSW"], incar["IBRION"], incar["ISIF"]) == (
        "0",
        "-1",
        "2",
    )  # single point with stress
    assert kpoints[2].strip().lower().startswith("g") and kpoints[3].split() == [
        str(n) for n in mp.kpoints.kpts[0]
    ]
    assert mp.kpoints.style.name.lower().startswith("gamma")
    potcar = (tmp_path / "call" / "POTCAR").read_text()
    assert [line.split()[-1] for line in potcar.splitlines()] == list(mp.potcar_symbols)


def test_cazrs3_vasp_inputs_are_the_papers_incar(tmp_path, placeholder_potcars):
    source = _incar(WORKFLOWS / "cazrs3_proton" / "INCAR")
    mapped = {"IBRION": "-1", "EDIFFG": None, "GGA": "PE"}  # single point; relaxation only; xc=PBE
    for k_kcal, path in CAZRS3.items():
        _, incar, kpoints = _write_inputs(path, tmp_path / f"K{k_kcal}")
        for key, value in source.items():
            if key in mapped:
                assert incar.get(key) == mapped[key], key
                continue
            assert _same(incar[key], value), (key, incar[key], value)
        assert incar["NSW"] == "0"
        assert kpoints[2].strip().lower().startswith("g") and kpoints[3].split() == ["2", "2", "2"]
        assert (WORKFLOWS / "cazrs3_proton" / "KPOINTS").read_text().split()[2:6] == [
            "Gamma",
            "2",
            "2",
            "2",
        ]
        potcar = (tmp_path / f"K{k_kcal}" / "POTCAR").read_text()
        assert [line.split()[-1] for line in potcar.splitlines()] == ["Ca_sv", "Zr_sv", "S", "H"]


@pytest.mark.slow
@pytest.mark.parametrize("run_yaml", CLUSTER_YAMLS, ids=lambda p: p.parent.name + "/" + p.name)
def test_cluster_yamls_validate_offline_through_the_cli(run_yaml, tmp_path, mace_mp0_file):
    """``otfparsl validate --no-dft-env`` on the YAML with one test-only change: model.source is a
    local file of MACE-MP-0 medium's architecture instead of the download (same elements)."""
    data = yaml.safe_load(run_yaml.read_text())
    assert data["model"]["source"] == "mace-mp-0:medium"
    data["model"]["source"] = str(mace_mp0_file)
    data["structure"] = str(run_yaml.parent / data["structure"])
    offline = tmp_path / "run.yaml"
    offline.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(app, ["validate", str(offline), "--no-dft-env"])
    assert result.exit_code == 0, result.output
    formula = "La8Mn8O24" if "lamno3" in str(run_yaml) else "H2Ca32S96Zr32"
    output = " ".join(result.output.split())  # rich wraps the last line
    assert f"({formula}), periodic=True; DFT environment not checked (--no-dft-env)" in output
    assert "source: mace-mp-0:medium" not in output  # the file, loaded: its elements were checked
    assert np.isfinite(RunSettings.from_yaml(offline).calibration.energy_threshold_eV)


SMALL_YAMLS = [WORKFLOWS / "lamno3" / "run_small.yaml", WORKFLOWS / "cazrs3_proton" / "run_small.yaml"]


@pytest.mark.parametrize("run_yaml", SMALL_YAMLS, ids=lambda p: p.parent.name + "/" + p.name)
def test_small_variants_validate_through_the_cli(run_yaml):
    """The laptop variants load CHGNet from its wheel and label with CP2K (checked where it is)."""
    pytest.importorskip("chgnet")
    result = CliRunner().invoke(app, ["validate", str(run_yaml), "--no-dft-env"])
    assert result.exit_code == 0, result.output
    formula = "La4Mn4O12" if "lamno3" in str(run_yaml) else "HCa4S12Zr4"
    assert f"({formula}), periodic=True" in " ".join(result.output.split())
    settings = RunSettings.from_yaml(run_yaml)
    assert settings.labeler.kind == "cp2k" and settings.model.family == "chgnet"


def test_committed_small_cazrs3_cell_is_the_builders_output():
    from otfparsl.analysis.systems._cazrs3_structure import cazrs3_proton_cell

    committed = read_structure(WORKFLOWS / "cazrs3_proton" / "cazrs3_h_small.extxyz")
    built = cazrs3_proton_cell(WORKFLOWS / "cazrs3_proton" / "POSCAR")
    assert committed.get_chemical_formula() == built.get_chemical_formula() == "HCa4S12Zr4"
    np.testing.assert_allclose(committed.positions, built.positions, atol=1e-7)
    np.testing.assert_allclose(committed.cell, np.asarray(built.cell), atol=1e-9)
    sulfur = [i for i, s in enumerate(built.get_chemical_symbols()) if s == "S"]
    assert min(built.get_distances(len(built) - 1, sulfur, mic=True)) == pytest.approx(1.336)
    # the host keeps its chemistry: no two atoms closer than the S-H bond
    distances = built.get_all_distances(mic=True) + 10 * np.eye(len(built))
    assert distances.min() == pytest.approx(1.336)


def test_ethanol_small_variant_is_the_demo_shortened():
    """run_small.yaml (the ethanol `long` test) differs from the demo only where its header says."""
    demo = RunSettings.from_yaml(WORKFLOWS / "ethanol" / "run.yaml")
    small = RunSettings.from_yaml(WORKFLOWS / "ethanol" / "run_small.yaml")
    for part in ("structure", "model", "calibration", "labeler", "analyses"):
        assert getattr(small, part) == getattr(demo, part), part
    (segment,), (demo_segment,) = small.md.segments, demo.md.segments
    assert segment.model_copy(update={"duration_fs": demo_segment.duration_fs}) == demo_segment
    assert (segment.duration_fs, small.bayes.n_chains, small.bayes.n_steps) == (100.0, 4, 50)
    assert small.bayes.batch_size == demo.bayes.batch_size and small.bayes.seed == demo.bayes.seed
