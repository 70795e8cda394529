"""Contract checks for model adapters, shipped as library code so every adapter meets the same bar.

Each check predicts through the adapter's public pieces (``prepare`` -> ``collate`` ->
``core``), returns the largest error it measured, and raises ``AssertionError`` with the
numbers when that error exceeds ``tol``. They are test helpers (hence ``AssertionError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.mixing import SumCalculator

from otfparsl.bayes.types import Prediction
from otfparsl.models.base import ModelAdapter

__all__ = [
    "MACE_MP_0_MEDIUM_PARAMETERS",
    "PerturbedEMT",
    "build_mace_mp0_medium_architecture",
    "check_batched_equals_single",
    "check_forces_are_gradient",
    "check_rotation_invariance_of_features",
    "check_stress_is_strain_derivative",
    "predict",
]


def predict(adapter: ModelAdapter, structures: Sequence[Atoms], compute_stress: bool = False,
            training: bool = False) -> Prediction:
    """Predict a list of structures in one batch through ``prepare``, ``collate`` and ``core``."""
    batch = adapter.collate([adapter.prepare(a) for a in structures])
    return adapter.core(batch.inputs, compute_stress=compute_stress, training=training)


def _energy(adapter: ModelAdapter, atoms: Atoms) -> float:
    return float(predict(adapter, [atoms]).energy[0])


def _fail(name: str, err: float, tol: float, detail: str = "") -> None:
    if not err <= tol:
        raise AssertionError(f"{name}: max error {err:.3e} exceeds tol {tol:.3e}. {detail}")


def check_forces_are_gradient(adapter: ModelAdapter, atoms: Atoms, delta: float = 1e-4,
                              tol: float = 1e-6) -> float:
    """Check forces = -dE/dr by central finite differences of the energy.

    Parameters
    ----------
    adapter
        The adapter under test.
    atoms
        A structure; every Cartesian component of every atom is displaced by ``±delta`` Å.
    delta
        Displacement in Å.
    tol
        Largest allowed absolute difference in eV/Å.

    Returns
    -------
    float
        Max |F_model + dE/dr_FD| in eV/Å.
    """
    forces = predict(adapter, [atoms]).forces.detach().cpu().double().numpy()
    fd = np.zeros_like(forces)
    for i in range(len(atoms)):
        for j in range(3):
            e = []
            for sign in (1.0, -1.0):
                moved = atoms.copy()
                moved.positions[i, j] += sign * delta
                e.append(_energy(adapter, moved))
            fd[i, j] = -(e[0] - e[1]) / (2.0 * delta)
    err = float(np.abs(forces - fd).max())
    _fail("forces vs -dE/dr", err, tol, f"model {forces.ravel()[:6]} fd {fd.ravel()[:6]}")
    return err


def check_stress_is_strain_derivative(adapter: ModelAdapter, atoms: Atoms, delta: float = 1e-4,
                                      tol: float = 1e-6) -> float:
    """Check stress = (1/V) dE/d(strain) (ASE sign) by central finite symmetric strains.

    Parameters
    ----------
    adapter
        The adapter under test.
    atoms
        A periodic structure.
    delta
        Strain amplitude (dimensionless); off-diagonal strains put ``delta/2`` in (i, j) and
        (j, i).
    tol
        Largest allowed absolute difference in eV/Å^3.

    Returns
    -------
    float
        Max |stress_model - stress_FD| in eV/Å^3.
    """
    if not all(atoms.pbc):
        raise ValueError("the strain check needs a structure periodic in all directions")
    stress = predict(adapter, [atoms], compute_stress=True).stress[0]
    stress = stress.detach().cpu().double().numpy()
    volume = atoms.get_volume()
    fd = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            e = []
            for sign in (1.0, -1.0):
                eps = np.zeros((3, 3))
                eps[i, j] += sign * delta / 2.0
                eps[j, i] += sign * delta / 2.0
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
                e.append(_energy(adapter, strained))
            fd[i, j] = fd[j, i] = (e[0] - e[1]) / (2.0 * delta * volume)
    err = float(np.abs(stress - fd).max())
    _fail("stress vs (1/V) dE/d(strain)", err, tol, f"model {stress.ravel()} fd {fd.ravel()}")
    return err


def check_batched_equals_single(adapter: ModelAdapter, structures: Sequence[Atoms],
                                tol: float = 1e-8) -> float:
    """Check that one batched prediction equals predicting each structure alone.

    Compares energy, forces, stress (where every structure is periodic) and features.

    Returns
    -------
    float
        Max absolute difference over all predicted quantities (mixed units).
    """
    stress = all(all(a.pbc) for a in structures)
    batched = predict(adapter, structures, compute_stress=stress)
    singles = [predict(adapter, [a], compute_stress=stress) for a in structures]
    pairs = [(batched.energy, torch.cat([s.energy for s in singles])),
             (batched.forces, torch.cat([s.forces for s in singles])),
             (batched.features, torch.cat([s.features for s in singles]))]
    if stress:
        pairs.append((batched.stress, torch.cat([s.stress for s in singles])))
    err = max(float((a - b).abs().max()) for a, b in pairs)
    _fail("batched vs single", err, tol)
    return err


def check_rotation_invariance_of_features(adapter: ModelAdapter, atoms: Atoms, seed: int = 0,
                                          tol: float = 1e-8) -> float:
    """Check features and energy are invariant, and forces rotate, under a random rotation.

    The structure (and its cell) is rotated rigidly about a random axis by a random angle.

    Returns
    -------
    float
        Max of |features' - features|, |E' - E| and |F' - F R^T| (mixed units).
    """
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    angle = float(rng.uniform(20.0, 160.0))
    rotated = atoms.copy()
    rotated.rotate(angle, axis, center=(0.0, 0.0, 0.0), rotate_cell=True)
    ref = predict(adapter, [atoms])
    new = predict(adapter, [rotated])
    r = _rotation_matrix(angle, axis)
    forces_back = new.forces.detach().cpu().double().numpy() @ r  # F' = F R^T -> F = F' R
    err = max(float((new.features - ref.features).abs().max()),
              float((new.energy - ref.energy).abs().max()),
              float(np.abs(forces_back - ref.forces.detach().cpu().double().numpy()).max()))
    _fail("rotation invariance", err, tol)
    return err


def _rotation_matrix(angle_deg: float, axis: np.ndarray) -> np.ndarray:
    """Return the matrix R with ``Atoms.rotate(angle_deg, axis)``: r' = R r."""
    probe = Atoms("H3", positions=np.eye(3))
    probe.rotate(angle_deg, axis, center=(0.0, 0.0, 0.0))
    return probe.positions.T


def pretrain_on_reference(
    adapter,
    frames: Sequence[Atoms],
    n_steps: int = 300,
    learning_rate: float = 5e-3,
    seed: int = 0,
) -> float:
    """Fit an adapter's core in place to reference-labelled frames (Adam on energy + forces).

    Turns an in-process model (the tiny MACE) into a small "foundation" that roughly knows a
    reference potential (EMT, LJ), so on-the-fly tests start from a physical model as a real run
    starts from MACE-MP-0. Energies are fitted per atom after removing their mean.

    Parameters
    ----------
    adapter
        The model to fit (its ``core`` parameters change).
    frames
        Structures whose ``calc`` holds the reference energy and forces.
    n_steps
        Adam steps over the whole set.
    learning_rate
        Adam step size.
    seed
        Seed of torch's global generator during the fit.

    Returns
    -------
    float
        Final force RMSE on ``frames`` (eV/Å).
    """
    from otfparsl.models.base import attach_labels

    torch.manual_seed(seed)
    energies = [a.get_potential_energy() / len(a) for a in frames]
    mean_e = float(np.mean(energies))
    items = [
        attach_labels(adapter.prepare(a), a, energy_offset_eV=-mean_e * len(a)) for a in frames
    ]
    batch = adapter.collate(items)
    n_atoms = torch.bincount(batch.structure_index).to(batch.energy.dtype)
    optimiser = torch.optim.Adam(adapter.core.parameters(), lr=learning_rate)
    rmse = float("nan")
    for _ in range(n_steps):
        optimiser.zero_grad()
        pred = adapter.core(batch.inputs, False, True)
        e_pred = pred.energy - pred.energy.mean().detach()
        e_ref = batch.energy - batch.energy.mean()
        force_mse = ((pred.forces - batch.forces) ** 2).mean()
        loss = force_mse + (((e_pred - e_ref) / n_atoms) ** 2).mean()
        loss.backward()
        optimiser.step()
        rmse = float(force_mse.detach().sqrt())
    return rmse


#: Parameters of MACE-MP-0 medium (2023-12-03-mace-128-L1_epoch-199.model): the published 4.69 M.
MACE_MP_0_MEDIUM_PARAMETERS = 4_688_656


def build_mace_mp0_medium_architecture(path: str | Path, seed: int = 0) -> Path:
    """Save MACE-MP-0 medium's exact architecture, with random weights, as a ``.model`` file.

    Lets the tests run the MACE-MP-0 path (:func:`otfparsl.models.mace.load_mace_model_file`,
    the 256 invariant features, the chain updates) at its real size without downloading it.
    The architecture is that of mace-torch's ``mace_mp(model="medium")``
    (2023-12-03-mace-128-L1_epoch-199.model): ScaleShiftMACE, hidden irreps 128x0e + 128x1o,
    2 residual interactions (``RealAgnosticResidualInteractionBlock``, the first one too),
    r_max 6 Å, 10 Bessel functions, polynomial cutoff p = 5, spherical harmonics up to
    l = 3, correlation order 3, radial MLP [64, 64, 64], readout MLP 16x0e, SiLU, 89 elements
    Z = 1..89, full (not reduced) Clebsch-Gordan products, as the 2023 file.

    Parameters
    ----------
    path
        Where to write the ``.model`` file (``torch.save`` of the module, float32; 22 MB).
    seed
        Seed of the random weights (the global torch RNG is left untouched).

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    Not the trained model: E0s are synthetic (-1 eV - 0.01 eV x Z), the scale is 1 eV, the shift
    0, and the average neighbour count 30; energies and forces are those of random weights.
    The parameter count equals MACE-MP-0 medium's, :data:`MACE_MP_0_MEDIUM_PARAMETERS`.
    """
    from mace import modules  # first: mace sets up torch.load for e3nn's constants

    # isort: split
    from e3nn import o3

    from otfparsl.errors import ModelError

    z = np.arange(1, 90)
    residual = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=6.0, num_bessel=10, num_polynomial_cutoff=5, max_ell=3,
            interaction_cls=residual, interaction_cls_first=residual, num_interactions=2,
            num_elements=len(z), hidden_irreps=o3.Irreps("128x0e + 128x1o"),
            MLP_irreps=o3.Irreps("16x0e"), atomic_energies=-1.0 - 0.01 * z,
            avg_num_neighbors=30.0, atomic_numbers=[int(n) for n in z], correlation=3,
            gate=torch.nn.functional.silu, radial_MLP=[64, 64, 64], use_reduced_cg=False,
            atomic_inter_scale=1.0, atomic_inter_shift=0.0,
        )  # fmt: skip
    n_parameters = sum(p.numel() for p in model.parameters())
    if n_parameters != MACE_MP_0_MEDIUM_PARAMETERS:
        raise ModelError(
            f"the MACE-MP-0 medium architecture built by this mace-torch has {n_parameters} "
            f"parameters, not {MACE_MP_0_MEDIUM_PARAMETERS}; mace-torch changed its defaults."
        )
    path = Path(path)
    torch.save(model.to(torch.float32), path)
    return path


def emt_copper_frames(n_frames: int = 16, seed: int = 0, stress: bool = False) -> list[Atoms]:
    """Rattled (0.08 Å) and strained (±3 %) 4-atom Cu cells labelled with EMT.

    The reference data of the tiny-MACE "foundation" in tests and benchmarks; ``stress=True``
    also computes the EMT stress.
    """
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.61 * (1 + rng.uniform(-0.03, 0.03)), cubic=True)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_forces()
        if stress:
            atoms.get_stress()
        frames.append(atoms)
    return frames


class PerturbedEMT(SumCalculator):
    """EMT plus a weak Lennard-Jones term: a "DFT" that the EMT-fitted tiny MACE does not know.

    The reference of the truth tests: the foundation (a tiny MACE fitted to EMT copper) is close
    to it but not equal, as MACE-MP-0 is to a real DFT setting, so on-the-fly fine-tuning has
    something to learn and the audit something to find. Use it as the ``ase`` labeller
    ``{name: "otfparsl.testing:PerturbedEMT", kwargs: {epsilon_eV: 0.05}}``.

    Parameters
    ----------
    epsilon_eV
        Depth of the added Lennard-Jones well, eV.
    sigma_A
        Lennard-Jones sigma, Å (the minimum sits at 2^(1/6) sigma).
    directory
        Accepted as every ASE calculator's; nothing is written.
    """

    def __init__(self, epsilon_eV: float = 0.05, sigma_A: float = 2.3, directory: str = ".") -> None:
        from ase.calculators.emt import EMT
        from ase.calculators.lj import LennardJones

        lj = LennardJones(epsilon=epsilon_eV, sigma=sigma_A, rc=3 * sigma_A, smooth=True)
        super().__init__([EMT(), lj])
