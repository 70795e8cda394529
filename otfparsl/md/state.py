"""Checkpoint and restore the exact state of an ASE MD run at a step boundary.

A checkpoint taken with :func:`capture_md_state` after ``k`` steps and applied with
:func:`restore_md_state` to a *fresh* dynamics (built by
:func:`otfparsl.md.dynamics.make_dynamics` with the same :class:`~otfparsl.md.dynamics.Segment`
and seed) on atoms of the same composition continues the run so that
``dynamics.run(n_total - k)`` reproduces the uninterrupted trajectory bit for bit. The state is a
plain dict of numpy arrays, Python scalars and dicts that survives
``otfparsl.jsonable.loads(otfparsl.jsonable.dumps(state))`` exactly.

What is saved, per integrator (ASE 3.29):

- all: positions (Å), momenta (ASE units), cell (Å), pbc, atomic numbers, masses (amu),
  the class name, the time step and ``dynamics.nsteps``. ``nsteps`` matters beyond bookkeeping:
  :meth:`ase.md.md.MolecularDynamics.irun` with ``nsteps == 0`` recomputes forces and calls the
  observers before the first step; with ``nsteps > 0`` it does not, and ``run(steps)`` sets
  ``max_steps = nsteps + steps``.
- ``Langevin``: the ``bit_generator.state`` of ``dynamics.rng`` (a ``numpy.random.Generator``).
  Everything else it uses (``c1``..``c5`` from time step, temperature, friction and masses) is
  rebuilt identically by the constructor; ``v``, ``rnd_pos``, ``rnd_vel`` are recomputed at every
  step.
- ``VelocityVerlet``: nothing beyond the atoms.
- ``MelchionnaNPT`` (ASE's ``NPT``): ``initialized``, ``timeelapsed``, the strain rate ``eta`` and
  ``eta_past``, the thermostat ``zeta``, ``zeta_past``, ``zeta_integrated``, the boxes ``h``,
  ``h_past``, ``inv_h``, the scaled positions ``q``, ``q_past``, ``q_future`` (the integrator is a
  centred-difference scheme, not self-starting), and the derived constants ``pfact`` (which
  depends on the cell volume *when the dynamics was constructed*), ``tfact`` and
  ``desiredEkin``. Restoring therefore works even when the fresh atoms were built from the
  checkpointed (already deformed) cell.

Caveats. (1) Bit-identity also needs a calculator whose results are a pure function of the
positions, cell and numbers. MACE/CHGNet on CPU rebuild their graph on every call and are;
ASE's :class:`~ase.calculators.emt.EMT` is not quite, because its neighbour list keeps pairs up
to a skin beyond the cutoff and is only rebuilt when atoms have moved, so a fresh EMT can differ
in the last bits from the one used during the run. (2) Observers, loggers and trajectories
attached to the dynamics are not part of the state; attach them again after restoring. (3) The
segment parameters (time step, temperature, friction, pressure, coupling times) must be those of
the checkpointed run; they are checked and a mismatch raises
:class:`~otfparsl.errors.ConfigurationError`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ase import Atoms
from ase.cell import Cell
from ase.md.md import MolecularDynamics

from otfparsl.errors import ConfigurationError

logger = logging.getLogger(__name__)

STATE_FORMAT = 1

# MelchionnaNPT variables set in __init__ (always present) and by initialize() (after the first
# run() call), and constants derived from the atoms at construction time.
_NPT_ALWAYS = ("initialized", "timeelapsed", "eta", "zeta", "zeta_integrated")
_NPT_INITIALIZED = ("eta_past", "zeta_past", "h", "h_past", "inv_h", "q", "q_past", "q_future")
_NPT_CONSTANTS = ("pfact", "tfact", "desiredEkin")

# Parameters fixed by the Segment: a fresh dynamics must have exactly the checkpointed values.
_PARAMETERS = {
    "Langevin": ("dt", "temp", "fr", "fix_com"),
    "VelocityVerlet": ("dt",),
    "MelchionnaNPT": (
        "dt",
        "temperature",
        "ttime",
        "pfactor_given",
        "externalstress",
        "mask",
        "frac_traceless",
    ),
}


def _copy(value: Any) -> Any:
    """Return an independent copy of ``value`` (arrays and Cells as arrays, numpy scalars Python)."""
    if isinstance(value, np.ndarray | Cell):
        return np.array(value, dtype=float if isinstance(value, Cell) else value.dtype)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _class_name(dynamics: MolecularDynamics) -> str:
    name = type(dynamics).__name__
    if name not in _PARAMETERS:
        raise ConfigurationError(
            f"cannot checkpoint dynamics of type {name!r}; supported: {sorted(_PARAMETERS)} "
            "(build the dynamics with otfparsl.md.make_dynamics)."
        )
    return name


def _rng_state(dynamics: MolecularDynamics) -> dict[str, Any]:
    rng = getattr(dynamics, "rng", None)
    if not isinstance(rng, np.random.Generator):
        raise ConfigurationError(
            f"Langevin noise must come from a numpy.random.Generator to be checkpointed; got "
            f"{type(rng).__name__}. Pass rng=numpy.random.default_rng(seed) (make_dynamics does)."
        )
    return rng.bit_generator.state


def capture_md_state(atoms: Atoms, dynamics: MolecularDynamics) -> dict[str, Any]:
    """Return the complete state of ``dynamics`` acting on ``atoms`` at a step boundary.

    Parameters
    ----------
    atoms
        The atoms the dynamics integrates (``dynamics.atoms``).
    dynamics
        A ``Langevin`` (with a ``numpy.random.Generator``), ``VelocityVerlet`` or
        ``MelchionnaNPT`` dynamics, between two steps (not inside an observer of ``irun``
        that runs before ``nsteps`` is incremented).

    Returns
    -------
    dict
        ``{"format", "dynamics", "nsteps", "parameters", "atoms", "rng", "npt"}``: ``atoms``
        holds ``numbers`` (N,), ``masses`` (N,) amu, ``positions`` (N, 3) Å, ``momenta`` (N, 3)
        ASE units, ``cell`` (3, 3) Å, ``pbc`` (3,); ``rng`` is the Langevin bit-generator state
        (else None); ``npt`` the MelchionnaNPT variables (else None). All values are copies.
    """
    if dynamics.atoms is not atoms:
        raise ConfigurationError(
            "capture_md_state: `atoms` is not the object the dynamics integrates "
            "(dynamics.atoms); pass the same Atoms object."
        )
    name = _class_name(dynamics)
    state: dict[str, Any] = {
        "format": STATE_FORMAT,
        "dynamics": name,
        "nsteps": int(dynamics.nsteps),
        "parameters": {p: _copy(getattr(dynamics, p)) for p in _PARAMETERS[name]},
        "atoms": {
            "numbers": atoms.get_atomic_numbers().copy(),
            "masses": atoms.get_masses().copy(),
            "positions": atoms.get_positions().copy(),
            "momenta": atoms.get_momenta().copy(),
            "cell": np.array(atoms.get_cell()),
            "pbc": atoms.get_pbc().copy(),
        },
        "rng": _rng_state(dynamics) if name == "Langevin" else None,
        "npt": None,
    }
    if name == "MelchionnaNPT":
        keys = _NPT_ALWAYS + _NPT_CONSTANTS
        if dynamics.initialized:
            keys += _NPT_INITIALIZED
        state["npt"] = {k: _copy(getattr(dynamics, k)) for k in keys}
    return state


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and bool(np.array_equal(a, b))
    return a == b


def _check_fits(atoms: Atoms, dynamics: MolecularDynamics, state: dict[str, Any]) -> None:
    """Raise ConfigurationError if ``state`` cannot be applied to ``atoms``/``dynamics``."""
    if state.get("format") != STATE_FORMAT:
        raise ConfigurationError(
            f"MD state has format {state.get('format')!r}; this version reads format "
            f"{STATE_FORMAT}. Restart the run from its last structure instead."
        )
    name = _class_name(dynamics)
    if state["dynamics"] != name:
        raise ConfigurationError(
            f"MD state was captured from {state['dynamics']!r} dynamics but is being restored "
            f"into {name!r}; build the dynamics with the checkpointed Segment's ensemble."
        )
    saved = state["atoms"]
    if len(saved["numbers"]) != len(atoms):
        raise ConfigurationError(
            f"MD state has {len(saved['numbers'])} atoms but the atoms to restore into have "
            f"{len(atoms)}; restore into a copy of the checkpointed structure."
        )
    if not np.array_equal(saved["numbers"], atoms.get_atomic_numbers()):
        raise ConfigurationError(
            "MD state atomic numbers differ from those of the atoms to restore into "
            f"(first mismatch at index "
            f"{int(np.argmax(saved['numbers'] != atoms.get_atomic_numbers()))}); "
            "restore into a copy of the checkpointed structure."
        )
    if not np.array_equal(saved["masses"], atoms.get_masses()):
        raise ConfigurationError(
            "MD state atomic masses differ from those of the atoms to restore into; set the "
            "same masses before building the dynamics."
        )
    for param, value in state["parameters"].items():
        if not _same(value, _copy(getattr(dynamics, param))):
            raise ConfigurationError(
                f"MD state was captured with {name}.{param}={value!r} but the fresh dynamics "
                f"has {getattr(dynamics, param)!r}; build it from the checkpointed Segment."
            )


def restore_md_state(atoms: Atoms, dynamics: MolecularDynamics, state: dict[str, Any]) -> None:
    """Put ``atoms`` and a fresh ``dynamics`` into the state captured by :func:`capture_md_state`.

    After this, ``dynamics.run(n_total - state["nsteps"])`` continues the checkpointed run
    (bit-identically for a calculator that is a pure function of the structure; see the module
    docstring).

    Parameters
    ----------
    atoms
        Atoms with the checkpointed numbers and masses and a calculator attached; must be
        ``dynamics.atoms``. Positions, momenta, cell and pbc are overwritten.
    dynamics
        A dynamics freshly built by :func:`otfparsl.md.make_dynamics` on ``atoms`` with the
        checkpointed Segment and seed (never run).
    state
        Output of :func:`capture_md_state`, possibly after a JSON round trip.

    Raises
    ------
    ConfigurationError
        If the state does not fit: another dynamics class or format, a different number of
        atoms, atomic numbers or masses, or different integrator parameters.
    """
    if dynamics.atoms is not atoms:
        raise ConfigurationError(
            "restore_md_state: `atoms` is not the object the dynamics integrates "
            "(dynamics.atoms); build the dynamics on the atoms you restore into."
        )
    _check_fits(atoms, dynamics, state)
    saved = state["atoms"]
    atoms.set_pbc(np.asarray(saved["pbc"], dtype=bool))
    atoms.set_cell(np.asarray(saved["cell"], dtype=float), scale_atoms=False)
    atoms.set_positions(np.asarray(saved["positions"], dtype=float), apply_constraint=False)
    atoms.set_momenta(np.asarray(saved["momenta"], dtype=float), apply_constraint=False)
    if state["rng"] is not None:
        _rng_state(dynamics)  # type check
        dynamics.rng.bit_generator.state = state["rng"]
    if state["npt"] is not None:
        for key, value in state["npt"].items():
            setattr(dynamics, key, _copy(value))
    dynamics.nsteps = int(state["nsteps"])
    logger.debug("restored %s state at step %d", state["dynamics"], dynamics.nsteps)
