"""EnsembleCalculator: an ASE calculator over M posterior samples of a Bayesian potential.

Standard keys (``energy``, ``free_energy``, ``forces``, ``stress``) hold the predictive mean, so
every ASE integrator, optimizer and writer works unchanged. ``energy_std``, ``forces_std`` and
``stress_std`` hold the predictive standard deviation and ``*_members`` the per-sample values
(leading axis M). One call fills all keys.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from otfparsl.bayes.model import BayesianModel
from otfparsl.from_settings import energy_sigma_eV, model_spec
from otfparsl.models import load_adapter
from otfparsl.models.base import ModelAdapter
from otfparsl.run.chains import load_samples
from otfparsl.run.directory import RunDirectory
from otfparsl.settings import RunSettings
from otfparsl.training import build_bayesian_model
from otfparsl.units import STRESS_SIGMA_EV_PER_A3

Sample = dict[str, torch.Tensor]


class EnsembleCalculator(Calculator):
    """Predictive mean and uncertainty of M weight samples of one foundation model.

    Parameters
    ----------
    adapter
        The foundation model (architecture, neighbour lists, device).
    samples
        M weight samples (name -> tensor) of the Bayesian model's trainable parameters.
    energy_sigma_eV
        Fixed energy noise sigma_E of the likelihood (0.1 K), eV.
    stress_sigma_eV_per_A3
        Fixed stress noise sigma_S, eV/Å^3.
    variance_ddof
        Divisor of the spread of member means: 1 -> M - 1 (default, the original's
        ``torch.var``), 0 -> M.

    Notes
    -----
    method.md section 4: mean = (1/M) sum_m y_m and
    var = Var_m(y_m) + (1/M) sum_m sigma_m^2, with sigma_E and sigma_S fixed and the force
    sigma learned per atom by each sample's sigma head. The neighbour list is built once per
    structure; the M members are then evaluated on that one batch with
    ``torch.func.functional_call`` (a loop: forces come from autograd inside the model, which
    ``vmap`` cannot batch).
    """

    implemented_properties = (
        "energy", "free_energy", "forces", "stress",
        "energy_std", "forces_std", "stress_std",
        "energy_members", "forces_members", "stress_members", "forces_sigma_members",
    )  # fmt: skip

    def __init__(
        self,
        adapter: ModelAdapter,
        samples: Sequence[Sample],
        energy_sigma_eV: float,
        stress_sigma_eV_per_A3: float = STRESS_SIGMA_EV_PER_A3,
        variance_ddof: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not samples:
            raise ValueError("an ensemble needs at least one weight sample")
        self.adapter = adapter
        self.model: BayesianModel = build_bayesian_model(adapter)
        self.model.eval()
        self.energy_sigma_eV = float(energy_sigma_eV)
        self.stress_sigma_eV_per_A3 = float(stress_sigma_eV_per_A3)
        self.variance_ddof = int(variance_ddof)
        self.samples: list[Sample] = []
        self.set_samples(samples)

    @classmethod
    def from_chain_files(
        cls, adapter: ModelAdapter, paths: Sequence[str | os.PathLike], energy_sigma_eV: float, **kwargs
    ) -> EnsembleCalculator:
        """Build an ensemble from chain files (one sample each), in one call."""
        return cls(adapter, load_samples(paths), energy_sigma_eV, **kwargs)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str | None = None) -> EnsembleCalculator:
        """Load the fine-tuned ensemble of a finished (or running) on-the-fly run.

        Built from the run's ``run.yaml`` and chain files alone (no Parsl), on ``device``
        (default: the run's ``model.device``).
        """
        rd = RunDirectory(run_dir)
        settings = RunSettings.from_yaml(rd.run_yaml)
        return cls.from_chain_files(
            load_adapter(model_spec(settings.model, device=device)),
            rd.chain_files(),
            energy_sigma_eV=energy_sigma_eV(settings.calibration),
            variance_ddof=settings.bayes.variance_ddof,
        )

    @property
    def n_members(self) -> int:
        """Number of weight samples M."""
        return len(self.samples)

    def set_samples(self, samples: Sequence[Sample]) -> None:
        """Replace the weight samples; cached results are invalidated."""
        device = next(self.model.parameters()).device
        self.samples = [{k: v.to(device) for k, v in s.items()} for s in samples]
        self.reset()

    def calculate(
        self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        self.adapter.check_atoms(self.atoms)
        members = self.predict_members(self.atoms)
        self.results = summarise_members(
            members, self.energy_sigma_eV, self.stress_sigma_eV_per_A3, self.variance_ddof
        )

    def predict_members(self, atoms: Atoms) -> dict[str, np.ndarray]:
        """Evaluate every member on ``atoms``.

        Returns
        -------
        dict
            ``energy`` (M,) eV, ``forces`` (M, n_atoms, 3) eV/Å, ``forces_sigma`` (M, n_atoms)
            eV/Å and, for periodic cells, ``stress`` (M, 3, 3) eV/Å^3.
        """
        periodic = bool(np.all(atoms.pbc))
        batch = self.adapter.collate([self.adapter.prepare(atoms)])
        out: dict[str, list[np.ndarray]] = {"energy": [], "forces": [], "forces_sigma": [], "stress": []}
        for sample in self.samples:
            pred = torch.func.functional_call(
                self.model, sample, (batch,), {"compute_stress": periodic, "training": False}
            )
            out["energy"].append(pred.energy.detach().cpu().double().numpy()[0])
            out["forces"].append(pred.forces.detach().cpu().double().numpy())
            out["forces_sigma"].append(pred.force_sigma.detach().cpu().double().numpy())
            if periodic and pred.stress is not None:
                out["stress"].append(pred.stress.detach().cpu().double().numpy()[0])
        return {k: np.asarray(v) for k, v in out.items() if len(v)}


def summarise_members(
    members: dict[str, np.ndarray],
    energy_sigma_eV: float,
    stress_sigma_eV_per_A3: float,
    variance_ddof: int = 1,
) -> dict[str, np.ndarray | float]:
    """Turn per-member predictions into the calculator's results (method.md section 4).

    Parameters
    ----------
    members
        Output of :meth:`EnsembleCalculator.predict_members`.
    energy_sigma_eV, stress_sigma_eV_per_A3
        Fixed noise sigmas of the likelihood.
    variance_ddof
        1: spread with divisor M - 1 (default, the original code); 0: divisor M. With M = 1
        the spread is 0.

    Returns
    -------
    dict
        ASE results: means in the standard keys, ``*_std`` and ``*_members``; stress in Voigt
        order (6,) like every ASE calculator.
    """
    energies = members["energy"]
    n_members = len(energies)
    ddof = variance_ddof if n_members > 1 else 0

    def spread(values: np.ndarray) -> np.ndarray:
        return np.var(values, axis=0, ddof=ddof)

    # a diverged sample can overflow here; the inf/nan results are what the caller checks
    with np.errstate(over="ignore", invalid="ignore"):
        energy_var = spread(energies) + energy_sigma_eV**2
        forces = members["forces"]
        forces_var = spread(forces) + np.mean(members["forces_sigma"] ** 2, axis=0)[:, None]
    results: dict[str, np.ndarray | float] = {
        "energy": float(energies.mean()),
        "free_energy": float(energies.mean()),
        "forces": forces.mean(axis=0),
        "energy_std": float(np.sqrt(energy_var)),
        "forces_std": np.sqrt(forces_var),
        "energy_members": energies.copy(),
        "forces_members": forces.copy(),
        "forces_sigma_members": members["forces_sigma"].copy(),
    }
    if "stress" in members:
        stress = members["stress"]
        stress_var = spread(stress) + stress_sigma_eV_per_A3**2
        results["stress"] = full_3x3_to_voigt_6_stress(stress.mean(axis=0))
        results["stress_std"] = full_3x3_to_voigt_6_stress(np.sqrt(stress_var))
        results["stress_members"] = np.array([full_3x3_to_voigt_6_stress(s) for s in stress])
    return results
