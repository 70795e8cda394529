"""MD checkpoint/restore: a resumed run continues bit-identically (EMT Cu, Langevin/NVE/NPT)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

from otfparsl import jsonable
from otfparsl.errors import ConfigurationError
from otfparsl.md import Segment, capture_md_state, make_dynamics, restore_md_state

SEED = 11
K_STEPS = 12


class _PureEMT(EMT):
    """EMT that rebuilds its neighbour list at every call, so results depend only on the structure.

    Plain EMT keeps a skin neighbour list that is rebuilt only when atoms have moved, which makes
    a fresh calculator differ from a long-lived one in the last bits (see otfparsl.md.state).
    """

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, list(properties), [*system_changes, "numbers"])


def _cu_cubic() -> Atoms:
    return bulk("Cu", "fcc", a=3.6, cubic=True) * (1, 1, 2)


def _cu_cluster() -> Atoms:
    d = 2.55 / np.sqrt(2.0)  # tetrahedron with Cu-Cu edges of 2.55 Å
    pos = d * np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=float)
    return Atoms("Cu4", positions=pos, pbc=False)


def _cu_triangular() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)  # primitive fcc cell: not triangular
    atoms.set_cell(atoms.cell.standard_form()[0], scale_atoms=True)  # lower triangular
    return atoms


CASES = {
    "langevin-bulk": (_cu_cubic, Segment(600.0, 100.0, "langevin", timestep_fs=2.0)),
    "langevin-cluster": (_cu_cluster, Segment(600.0, 100.0, "langevin", timestep_fs=2.0)),
    "nve-bulk": (_cu_cubic, Segment(600.0, 100.0, "nve", timestep_fs=2.0)),
    "npt-bulk": (
        _cu_triangular,
        Segment(600.0, 100.0, "npt", timestep_fs=2.0, pressure_bar=5e4, barostat_time_fs=30.0),
    ),
}


def _start(build) -> Atoms:
    atoms = build()
    MaxwellBoltzmannDistribution(atoms, temperature_K=600.0, rng=np.random.default_rng(3))
    Stationary(atoms)
    return atoms


def _fresh(start: Atoms, segment: Segment):
    atoms = start.copy()
    atoms.calc = _PureEMT()
    return atoms, make_dynamics(atoms, segment, seed=SEED)


def _assert_same_tree(a, b, where="state"):
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    else:
        assert a == b, where


def _uninterrupted(start: Atoms, segment: Segment, n_steps: int) -> Atoms:
    atoms, dyn = _fresh(start, segment)
    dyn.run(n_steps)
    return atoms


def _checkpoint(start: Atoms, segment: Segment, n_steps: int) -> dict:
    atoms, dyn = _fresh(start, segment)
    dyn.run(n_steps)
    state = capture_md_state(atoms, dyn)
    reloaded = jsonable.loads(jsonable.dumps(state))
    _assert_same_tree(state, reloaded)
    return reloaded


def _resume(start: Atoms, segment: Segment, state: dict, n_steps: int):
    atoms, dyn = _fresh(start, segment)
    restore_md_state(atoms, dyn, state)
    dyn.run(n_steps)
    return atoms, dyn


@pytest.mark.parametrize("case", sorted(CASES))
def test_resumed_run_is_bit_identical(case):
    build, segment = CASES[case]
    start = _start(build)
    reference = _uninterrupted(start, segment, 2 * K_STEPS)
    state = _checkpoint(start, segment, K_STEPS)
    assert state["nsteps"] == K_STEPS
    resumed, dyn = _resume(start, segment, state, K_STEPS)

    assert dyn.nsteps == 2 * K_STEPS
    assert np.array_equal(resumed.positions, reference.positions)
    assert np.array_equal(resumed.get_momenta(), reference.get_momenta())
    assert np.array_equal(resumed.cell[:], reference.cell[:])
    # the comparison is not trivial: atoms moved, and moved on after the checkpoint
    assert np.abs(reference.positions - start.positions).max() > 1e-3
    assert np.abs(reference.positions - state["atoms"]["positions"]).max() > 1e-3
    if segment.ensemble == "npt":
        assert np.abs(reference.cell[:] - start.cell[:]).max() > 1e-4  # the barostat acted


def test_npt_resumes_on_atoms_built_from_the_checkpoint():
    """The real workflow: fresh atoms are the checkpointed (already deformed) structure.

    The barostat constant ``pfact`` depends on the cell volume at construction, so it must come
    from the state, not from the fresh dynamics.
    """
    build, segment = CASES["npt-bulk"]
    start = _start(build)
    reference = _uninterrupted(start, segment, 2 * K_STEPS)
    state = _checkpoint(start, segment, K_STEPS)
    saved = state["atoms"]
    from_checkpoint = Atoms(
        numbers=saved["numbers"], positions=saved["positions"], cell=saved["cell"], pbc=True
    )
    from_checkpoint.set_momenta(saved["momenta"])
    _, fresh_dyn = _fresh(from_checkpoint, segment)
    assert fresh_dyn.pfact != state["npt"]["pfact"]  # the volume did change

    resumed, _ = _resume(from_checkpoint, segment, state, K_STEPS)
    assert np.array_equal(resumed.positions, reference.positions)
    assert np.array_equal(resumed.cell[:], reference.cell[:])


@pytest.mark.parametrize("run_zero", [False, True])
def test_npt_checkpoint_before_the_first_step(run_zero):
    """Never run (integrator not initialised) or after ``run(0)`` (initialised, nsteps 0)."""
    build, segment = CASES["npt-bulk"]
    start = _start(build)
    reference = _uninterrupted(start, segment, K_STEPS)
    atoms, dyn = _fresh(start, segment)
    if run_zero:
        dyn.run(0)
    state = jsonable.loads(jsonable.dumps(capture_md_state(atoms, dyn)))
    assert state["nsteps"] == 0
    assert state["npt"]["initialized"] == int(run_zero)
    assert ("q_past" in state["npt"]) is run_zero
    resumed, _ = _resume(start, segment, state, K_STEPS)
    assert np.array_equal(resumed.positions, reference.positions)
    assert np.array_equal(resumed.get_momenta(), reference.get_momenta())
    assert np.array_equal(resumed.cell[:], reference.cell[:])


@pytest.mark.parametrize(
    ("case", "drop"),
    [("langevin-bulk", "rng"), ("langevin-cluster", "rng"), ("npt-bulk", "npt")],
)
def test_restoring_without_integrator_state_breaks_the_continuation(case, drop):
    """Positions and momenta alone are not enough: the Langevin noise stream / NPT history."""
    build, segment = CASES[case]
    start = _start(build)
    reference = _uninterrupted(start, segment, 2 * K_STEPS)
    state = _checkpoint(start, segment, K_STEPS)
    state[drop] = None  # restore everything else
    resumed, _ = _resume(start, segment, state, K_STEPS)
    assert np.abs(resumed.positions - reference.positions).max() > 1e-8


def test_state_that_does_not_fit_is_rejected():
    _, nve = CASES["nve-bulk"]
    start = _start(_cu_cubic)
    state = _checkpoint(start, nve, 2)

    more_atoms, dyn = _fresh(start * (1, 1, 2), nve)
    with pytest.raises(ConfigurationError, match="has 8 atoms but .* have 16"):
        restore_md_state(more_atoms, dyn, state)

    alloy = start.copy()
    alloy.numbers[3] = 79  # Au
    atoms, dyn = _fresh(alloy, nve)
    with pytest.raises(ConfigurationError, match="atomic numbers differ .* index 3"):
        restore_md_state(atoms, dyn, state)

    atoms, dyn = _fresh(start, CASES["langevin-bulk"][1])
    with pytest.raises(ConfigurationError, match="'VelocityVerlet' dynamics .* 'Langevin'"):
        restore_md_state(atoms, dyn, state)

    atoms, dyn = _fresh(start, Segment(600.0, 100.0, "nve", timestep_fs=1.0))
    with pytest.raises(ConfigurationError, match=r"VelocityVerlet\.dt="):
        restore_md_state(atoms, dyn, state)
    assert np.array_equal(atoms.positions, start.positions)  # nothing was changed


def test_capture_rejects_atoms_that_are_not_the_dynamics_atoms():
    atoms, dyn = _fresh(_start(_cu_cubic), CASES["nve-bulk"][1])
    with pytest.raises(ConfigurationError, match="same Atoms object"):
        capture_md_state(atoms.copy(), dyn)
