"""MD from explicit parameters: thermostat, energy conservation, NPT, programmes (EMT Cu)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from otfparsl.errors import ConfigurationError
from otfparsl.md import Segment, TemperatureProgramme, make_dynamics, target_temperature_K


def _cu(repeat=(2, 2, 2)):
    atoms = bulk("Cu", cubic=True) * repeat
    atoms.calc = EMT()
    return atoms


def _temperatures(atoms, dyn, n_steps):
    temps = []
    dyn.attach(lambda: temps.append(atoms.get_temperature()), interval=1)
    dyn.run(n_steps)
    return np.array(temps[1:])


def test_langevin_thermalises_to_target():
    atoms = _cu()
    seg = Segment(temperature_K=500.0, duration_fs=800.0, timestep_fs=2.0, friction_per_fs=0.05)
    dyn = make_dynamics(atoms, seg, seed=1)
    assert target_temperature_K(dyn) == pytest.approx(500.0)
    assert dyn.fr * units.fs == pytest.approx(0.05)  # friction 0.05 per fs in ASE time units
    assert dyn.dt == pytest.approx(2.0 * units.fs)
    temps = _temperatures(atoms, dyn, seg.n_steps)  # starts at rest: 0 K
    assert seg.n_steps == 400
    assert 400.0 < temps[200:].mean() < 600.0


def test_langevin_is_deterministic_in_the_seed():
    seg = Segment(temperature_K=300.0, duration_fs=40.0, timestep_fs=2.0)

    def trajectory(seed):
        atoms = _cu((1, 1, 2))
        make_dynamics(atoms, seg, seed=seed).run(seg.n_steps)
        return atoms.positions.copy()

    np.testing.assert_array_equal(trajectory(3), trajectory(3))
    assert np.abs(trajectory(3) - trajectory(4)).max() > 1e-4


def test_nve_conserves_energy():
    atoms = _cu()
    TemperatureProgramme([Segment(300.0, 400.0, "nve", timestep_fs=2.0)]).initialize_velocities(
        atoms, seed=5
    )
    dyn = make_dynamics(atoms, Segment(300.0, 400.0, "nve", timestep_fs=2.0), seed=0)
    assert target_temperature_K(dyn) is None
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    dyn.run(200)
    energies = np.array(energies)
    kinetic0 = 1.5 * len(atoms) * units.kB * 300.0  # 1.24 eV
    assert np.abs(energies - energies[0]).max() < 3e-3 * kinetic0
    assert abs(energies[-20:].mean() - energies[:20].mean()) < 1e-3 * kinetic0


def test_programme_steps_and_targets():
    segs = [
        Segment(300.0, 200.0, timestep_fs=2.0, friction_per_fs=0.05),
        Segment(800.0, 400.0, timestep_fs=2.0, friction_per_fs=0.05),
        Segment(300.0, 400.0, timestep_fs=2.0, friction_per_fs=0.05),
    ]
    prog = TemperatureProgramme(segs)
    assert list(prog) == [(0, 100), (1, 200), (2, 200)]
    assert prog.total_steps == 500 and prog.total_duration_fs == pytest.approx(1000.0)
    assert prog.locate(0) == (0, 0) and prog.locate(100) == (1, 0) and prog.locate(499) == (2, 199)
    atoms = _cu()
    prog.initialize_velocities(atoms, seed=2)
    assert 150.0 < atoms.get_temperature() < 450.0
    assert np.abs(atoms.get_momenta().sum(axis=0)).max() < 1e-10
    means = []
    for index, n_steps, dyn in prog.iter_dynamics(atoms, seed=2):
        assert target_temperature_K(dyn) == pytest.approx(segs[index].temperature_K)
        temps = _temperatures(atoms, dyn, n_steps)
        means.append(temps[n_steps // 2 :].mean())
    assert 600.0 < means[1] < 1000.0
    assert means[1] > means[0] + 250.0 and means[1] > means[2] + 250.0
    assert 200.0 < means[2] < 420.0


def test_velocities_carry_over_between_segments():
    prog = TemperatureProgramme([Segment(300.0, 4.0, "nve", 2.0), Segment(300.0, 4.0, "nve", 2.0)])
    atoms = _cu((1, 1, 1))
    prog.initialize_velocities(atoms, seed=9)
    dyns = prog.iter_dynamics(atoms, seed=9)
    _, n, dyn = next(dyns)
    dyn.run(n)
    momenta = atoms.get_momenta().copy()
    next(dyns)
    np.testing.assert_array_equal(atoms.get_momenta(), momenta)


def test_npt_runs_and_responds_to_pressure():
    mean_volume = {}
    for pressure_bar in (1.0, 1.0e5):
        atoms = _cu()
        seg = Segment(300.0, 100.0, "npt", 2.0, pressure_bar=pressure_bar, barostat_time_fs=20.0)
        dyn = make_dynamics(atoms, seg, seed=0)
        assert target_temperature_K(dyn) == pytest.approx(300.0)
        volumes = []
        dyn.attach(lambda atoms=atoms, volumes=volumes: volumes.append(atoms.get_volume()))
        dyn.run(seg.n_steps)
        assert np.all(np.isfinite(atoms.positions))
        mean_volume[pressure_bar] = np.mean(volumes)
    v0 = _cu().get_volume()
    assert abs(mean_volume[1.0] - v0) < 0.03 * v0  # near the EMT equilibrium volume
    # 10 GPa on Cu (bulk modulus ~140 GPa) compresses by ~7 %: the pressure unit is right
    assert 0.88 < mean_volume[1.0e5] / mean_volume[1.0] < 0.97


def test_npt_rejects_molecules_and_bad_cells():
    mol = molecule("H2O")
    mol.calc = EMT()
    with pytest.raises(ConfigurationError, match="periodic"):
        make_dynamics(mol, Segment(300.0, 10.0, "npt"), seed=0)
    skew = bulk("Cu")  # fcc primitive cell: not triangular
    skew.calc = EMT()
    with pytest.raises(ConfigurationError, match="triangular"):
        make_dynamics(skew, Segment(300.0, 10.0, "npt"), seed=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ensemble": "nvt"}, "ensemble"),
        ({"timestep_fs": -1.0}, "timestep_fs"),
        ({"duration_fs": 0.1}, "duration_fs"),
    ],
)
def test_invalid_segments_rejected(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        Segment(**{"temperature_K": 300.0, "duration_fs": 100.0, **kwargs})
    with pytest.raises(ConfigurationError, match="at least one"):
        TemperatureProgramme([])
