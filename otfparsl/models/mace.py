"""MACE adapter (mace-torch): MACE-MP-0 by name, any ``.model`` file, or a tiny in-process MACE.

Sources (``ModelSpec.source``):

- ``"tiny"``: a small ScaleShiftMACE built in process from ``spec.seed`` (deterministic,
  synthetic weights; for tests and examples). Options (``spec.options``): ``r_max`` (Å, 4.5),
  ``channels`` (16), ``max_ell`` (2), ``num_interactions`` (2), ``correlation`` (2).
- ``"mace-mp-0:<size>"`` (``small``, ``medium``, ``large``): mace-torch's own
  ``download_mace_mp_checkpoint`` **downloads** the file on first use (cached in
  ``~/.cache/mace``); the file is then loaded exactly as a local ``.model`` file
  (:func:`load_mace_model_file`). The tests never download: they save MACE-MP-0 medium's
  architecture with random weights (:func:`otfparsl.testing.build_mace_mp0_medium_architecture`)
  and load it through that same function.
- any other string: a path to a local ``.model`` file saved with ``torch.save(model)``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from otfparsl.bayes.types import Batch, Prediction
from otfparsl.errors import ConfigurationError, ModelError
from otfparsl.models.base import (
    FamilyDefaults,
    ModelFamily,
    ModelSpec,
    PreparedStructure,
    collate_labels,
    structure_index,
    torch_dtype,
)

logger = logging.getLogger(__name__)

#: Elements of the tiny model: H C N O and the EMT metals Al Ni Cu Pd Ag Pt Au.
TINY_ATOMIC_NUMBERS: tuple[int, ...] = (1, 6, 7, 8, 13, 28, 29, 46, 47, 78, 79)
_TINY_OPTIONS = {
    "r_max": 4.5, "channels": 16, "max_ell": 2, "num_interactions": 2, "correlation": 2
}


def build_tiny_mace(
    seed: int, dtype: torch.dtype = torch.float64, **options: float
) -> torch.nn.Module:
    """Build a small ScaleShiftMACE with deterministic random weights.

    Parameters
    ----------
    seed
        Seed of the weight initialisation (the global torch RNG is left untouched).
    dtype
        Floating point type of the weights.
    **options
        ``r_max`` (Å), ``channels``, ``max_ell``, ``num_interactions``, ``correlation``.

    Returns
    -------
    torch.nn.Module
        The MACE model. Its E0s (synthetic: -1 eV - 0.1 eV x element index) and the
        scale/shift are buffers, not parameters.
    """
    from mace import modules  # first: mace sets up torch.load for e3nn's constants

    # isort: split
    from e3nn import o3

    unknown = set(options) - set(_TINY_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown tiny-MACE options {sorted(unknown)}; allowed: {sorted(_TINY_OPTIONS)}"
        )
    opt = {**_TINY_OPTIONS, **options}
    ch = int(opt["channels"])
    n_el = len(TINY_ATOMIC_NUMBERS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=float(opt["r_max"]), num_bessel=8, num_polynomial_cutoff=5,
            max_ell=int(opt["max_ell"]),
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
            num_interactions=int(opt["num_interactions"]), num_elements=n_el,
            hidden_irreps=o3.Irreps(f"{ch}x0e + {ch}x1o"), MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=-1.0 - 0.1 * np.arange(n_el), avg_num_neighbors=8.0,
            atomic_numbers=list(TINY_ATOMIC_NUMBERS), correlation=int(opt["correlation"]),
            gate=torch.nn.functional.silu, atomic_inter_scale=1.0, atomic_inter_shift=0.0,
        )
    return model.to(dtype)


#: The MACE-MP-0 sizes of ``source="mace-mp-0:<size>"`` (mace-torch's names for them).
MACE_MP_0_SIZES: tuple[str, ...] = ("small", "medium", "large")


def load_mace_model_file(path: str | Path) -> torch.nn.Module:
    """Load a MACE model saved with ``torch.save(model)`` (a ``.model`` file), on CPU.

    The one loader of MACE files: a local path and a downloaded MACE-MP-0 both come here.

    Parameters
    ----------
    path
        The ``.model`` file.

    Returns
    -------
    torch.nn.Module
        The MACE model in the dtype it was saved in.

    Raises
    ------
    ModelError
        When the file does not hold a MACE model.
    """
    import mace  # noqa: F401  (sets up torch.load for e3nn's constants, see build_tiny_mace)

    model = torch.load(Path(path), map_location="cpu", weights_only=False)
    missing = [a for a in ("atomic_numbers", "r_max", "products") if not hasattr(model, a)]
    if not isinstance(model, torch.nn.Module) or missing:
        raise ModelError(
            f"{str(path)!r} does not hold a MACE model (got {type(model).__name__}, missing "
            f"{missing}); give a file written with torch.save(model) by mace-torch."
        )
    return model


def _download_mace_mp_0(size: str) -> Path:
    """Return the local path of MACE-MP-0 ``size``, downloading it on first use."""
    if size not in MACE_MP_0_SIZES:
        raise ConfigurationError(
            f"unknown MACE-MP-0 size {size!r}; allowed: {list(MACE_MP_0_SIZES)} "
            "(source 'mace-mp-0:medium')"
        )
    from mace.calculators import foundations_models

    logger.info("locating MACE-MP-0 %s (mace-torch downloads it on first use)", size)
    try:
        return Path(foundations_models.download_mace_mp_checkpoint(size))
    except OSError as exc:  # URLError, a refused connection, a proxy: no file and no network
        raise ModelError(
            f"MACE-MP-0 {size} is not in mace-torch's cache (~/.cache/mace) and could not be "
            f"downloaded ({type(exc).__name__}: {exc}). Run once where there is internet (e.g. "
            "python -c \"from mace.calculators import mace_mp; mace_mp('medium')\") and copy "
            "~/.cache/mace to this machine, or set model.source to the path of the .model file."
        ) from exc


def _load_mace_model(spec: ModelSpec, dtype: torch.dtype) -> torch.nn.Module:
    """Build or load the MACE model named by ``spec.source``."""
    if spec.source == "tiny":
        return build_tiny_mace(spec.seed, dtype, **dict(spec.options))
    if spec.source.startswith("mace-mp-0"):
        return load_mace_model_file(_download_mace_mp_0(spec.source.partition(":")[2] or "medium"))
    path = Path(spec.source).expanduser()
    if not path.is_file():
        raise ConfigurationError(
            f"MACE source {spec.source!r} is neither 'tiny', 'mace-mp-0:<size>' nor an "
            "existing .model file. Give one of those."
        )
    return load_mace_model_file(path)


def _invariant_feature_index(model: torch.nn.Module) -> torch.Tensor:
    """Return the positions of the l=0 (``0e``) channels in MACE's concatenated node_feats."""
    import mace  # noqa: F401  (before e3nn, see build_tiny_mace)
    from e3nn import o3

    index: list[int] = []
    offset = 0
    for product in model.products:
        irreps = o3.Irreps(str(product.linear.irreps_out))
        for (_mul, ir), sl in zip(irreps, irreps.slices(), strict=False):
            if ir.l == 0 and ir.p == 1:
                index.extend(range(offset + sl.start, offset + sl.stop))
        offset += irreps.dim
    return torch.tensor(index, dtype=torch.long)


@functools.lru_cache(maxsize=2)
def traceable_mace(spec: ModelSpec) -> torch.nn.Module:
    """Return the model of ``spec`` built for ``torch.compile`` (one per spec and process).

    e3nn's code generation is off while it is built or unpickled, so no TorchScript module is
    inside (TorchScript's graph executor silently corrupts nested ``torch.func`` gradients of
    MACE, issue 10), and MACE's ``simplify`` traces the modules it registers for compilation.
    Its own weights are never used: :meth:`MACECore.functional_forward` supplies the chain's.

    Raises
    ------
    ModelError
        If a TorchScript module is still inside (a model this path does not know).
    """
    from mace.tools.compile import disable_e3nn_codegen, simplify

    dtype = torch_dtype(spec)
    with disable_e3nn_codegen():
        model = _load_mace_model(spec, dtype)
        if spec.source != "tiny":  # a file keeps its TorchScript: rebuild from its config
            model = _rebuilt(model)
    model = simplify(model).to(dtype=dtype, device=torch.device(spec.device))
    scripted = [n for n, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]
    if scripted:
        raise ModelError(
            f"the MACE model {spec.source!r} keeps TorchScript modules ({scripted[:3]}) with e3nn "
            "code generation off; its chain gradients cannot be compiled (bayes.gradients: autograd)."
        )
    return model


def _rebuilt(model: torch.nn.Module) -> torch.nn.Module:
    """Return a new instance of a loaded MACE model's class with its config and state.

    Unpickling a ``.model`` file restores e3nn's TorchScript modules whatever the code-generation
    setting; a model built anew (under ``disable_e3nn_codegen``) has none. mace-torch's
    ``extract_config_mace_model`` reads the constructor arguments back from the model (as its
    cuEquivariance converter does).
    """
    from mace.tools.scripts_utils import extract_config_mace_model

    config = extract_config_mace_model(model)
    if "error" in config:
        raise ModelError(f"cannot rebuild the MACE model for compilation: {config['error']}")
    if isinstance(config.get("atomic_numbers"), torch.Tensor):  # mace would copy-construct it
        config["atomic_numbers"] = [int(z) for z in config["atomic_numbers"]]
    rebuilt = model.__class__(**config)
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.to(next(model.parameters()).dtype)


class MACECore(torch.nn.Module):
    """A MACE model as a core: ``forward(inputs, compute_stress, training) -> Prediction``.

    Its parameters are exactly the MACE parameters (all sampled); E0s and scale/shift are
    buffers of the MACE model. With ``traceable`` (a function returning the same model built
    for ``torch.compile``) it also offers :meth:`functional_forward`, the pure function that the
    compiled chain gradients (:mod:`otfparsl.bayes.functional`) differentiate.
    """

    def __init__(
        self, model: torch.nn.Module, traceable: Callable[[], torch.nn.Module] | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.traceable = traceable
        self.register_buffer("feature_index", _invariant_feature_index(model), persistent=False)

    def functional_forward(self) -> Callable[..., Prediction]:
        """Return :meth:`forward` as a pure function of the weights, forces by ``torch.func.grad``.

        The function ``f(params, inputs, compute_stress) -> Prediction`` takes the core's
        parameters by their names in ``self.named_parameters()`` (``model.*``) and uses no
        ``torch.autograd.grad`` and no ``requires_grad_``, so ``torch.func`` can differentiate it
        again and ``torch.compile`` can trace it; only traced calls are supported (outside a
        compilation MACE marks the positions as requiring grad). Forces, stress and features
        are those of :meth:`forward` with ``training=True``.
        """
        if self.traceable is None:
            raise ModelError("this MACE core was built without a traceable model")
        model = self.traceable()
        feature_index = self.feature_index

        def forward(params: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor],
                    compute_stress: bool) -> Prediction:
            weights = {name.removeprefix("model."): p for name, p in params.items()}
            positions = inputs["positions"]

            def energy(pos: torch.Tensor, displacement: torch.Tensor | None):
                data = {**inputs, "positions": pos}
                if displacement is not None:
                    data["displacement"] = displacement
                out = torch.func.functional_call(
                    model, weights, (data,),
                    {"training": True, "compute_force": False,
                     "compute_displacement": displacement is not None},
                )  # fmt: skip
                return out["energy"].sum(), (out["energy"], out["node_feats"])

            stress = None
            if compute_stress:
                zero = positions.new_zeros((inputs["ptr"].shape[0] - 1, 3, 3))
                (d_pos, d_strain), (total, feats) = torch.func.grad(
                    energy, argnums=(0, 1), has_aux=True)(positions, zero)
                stress = _per_volume(d_strain, inputs)
            else:
                d_pos, (total, feats) = torch.func.grad(
                    lambda pos: energy(pos, None), has_aux=True)(positions)
            return Prediction(energy=total, forces=-d_pos, stress=stress,
                              features=feats.index_select(-1, feature_index))

        return forward

    def forward(self, inputs: dict[str, torch.Tensor], compute_stress: bool = False,
                training: bool = False) -> Prediction:
        """Predict energy, forces = -dE/dr, stress (periodic cells) and invariant features.

        Parameters
        ----------
        inputs
            The dict made by :meth:`MACEAdapter.collate` (positions ``(A, 3)`` Å, ...).
        compute_stress
            Compute the ``(S, 3, 3)`` stress, eV/Å^3, ASE sign ``(1/V) dE/d(strain)``;
            zero for structures that are not periodic in all three directions.
        training
            Keep the graph of forces and stress (``create_graph``) for losses on them.
        """
        data = dict(inputs)
        data["positions"] = inputs["positions"].detach().clone()
        out = self.model(data, training=training, compute_force=True,
                         compute_virials=compute_stress, compute_stress=False)
        stress = None
        if compute_stress:
            # MACE's virials are -dE/d(strain); ASE stress is +(1/V) dE/d(strain).
            stress = _per_volume(-out["virials"], inputs)
        pred = Prediction(energy=out["energy"], forces=out["forces"], stress=stress,
                          features=out["node_feats"].index_select(-1, self.feature_index))
        return pred if training else pred.detached()


def _per_volume(d_energy_d_strain: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return ``(S, 3, 3)`` dE/d(strain) / V (the ASE stress), zero where not periodic."""
    periodic = inputs["periodic"]
    cell = inputs["cell"].view(-1, 3, 3)
    volume = torch.where(periodic, torch.linalg.det(cell).abs(),
                         torch.ones_like(periodic, dtype=cell.dtype))
    return d_energy_d_strain / volume.view(-1, 1, 1) * periodic.view(-1, 1, 1)


class MACEAdapter:
    """MACE behind the :class:`~otfparsl.models.base.ModelAdapter` protocol.

    Parameters
    ----------
    spec
        ``family="mace"``; ``source`` as in the module docstring.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.dtype = torch_dtype(spec)
        self.device = torch.device(spec.device)
        model = _load_mace_model(spec, self.dtype).to(dtype=self.dtype, device=self.device)
        for p in model.parameters():
            p.requires_grad_(True)
        self.core = MACECore(model, functools.partial(traceable_mace, spec)).to(self.device)
        self.n_features = int(self.core.feature_index.numel())
        self.defaults = FAMILY.defaults
        self.r_max = float(model.r_max)
        self.atomic_numbers = [int(z) for z in model.atomic_numbers]
        self._z_to_index = {z: i for i, z in enumerate(self.atomic_numbers)}

    def check_atoms(self, atoms: Atoms) -> None:
        """Raise ModelError if ``atoms`` holds elements the model was not trained on."""
        unknown = sorted(set(int(z) for z in atoms.numbers) - set(self._z_to_index))
        if unknown:
            from ase.data import chemical_symbols

            names = [chemical_symbols[z] for z in unknown]
            known = [chemical_symbols[z] for z in self.atomic_numbers]
            raise ModelError(
                f"the MACE model ({self.spec.source}) does not know the element(s) {names}; "
                f"it knows {known}. Use a model trained on these elements."
            )

    def prepare(self, atoms: Atoms) -> PreparedStructure:
        """Build the neighbour list of one structure once (mace.data, matscipy), on CPU."""
        from mace.data.neighborhood import get_neighborhood

        self.check_atoms(atoms)
        pbc = tuple(bool(p) for p in atoms.pbc)
        cell = np.array(atoms.cell.array, dtype=float)
        edge_index, shifts, unit_shifts, _ = get_neighborhood(
            positions=atoms.positions, cutoff=self.r_max, pbc=pbc, cell=cell.copy())
        species = torch.tensor([self._z_to_index[int(z)] for z in atoms.numbers])
        graph = {
            "positions": torch.tensor(atoms.positions, dtype=torch.float64),
            "species": species,
            "edge_index": torch.tensor(edge_index, dtype=torch.long),
            "shifts": torch.tensor(shifts, dtype=torch.float64),
            "unit_shifts": torch.tensor(unit_shifts, dtype=torch.float64),
            "cell": torch.tensor(cell, dtype=torch.float64),
        }
        return PreparedStructure(graph=graph, n_atoms=len(atoms), periodic=all(pbc))

    def collate(self, items: Sequence[PreparedStructure]) -> Batch:
        """Concatenate prepared structures into the input dict of ``MACE.forward``."""
        if not items:
            raise ConfigurationError("cannot collate an empty list of structures")
        dev, dt = self.device, self.dtype
        counts = [it.n_atoms for it in items]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        species = torch.cat([it.graph["species"] for it in items])
        node_attrs = torch.nn.functional.one_hot(species, len(self.atomic_numbers))
        sidx = structure_index(items, dev)
        inputs = {
            "positions": torch.cat([it.graph["positions"] for it in items]).to(dev, dt),
            "node_attrs": node_attrs.to(dev, dt),
            "edge_index": torch.cat([it.graph["edge_index"] + int(o)
                                     for it, o in zip(items, offsets, strict=False)], dim=1).to(dev),
            "shifts": torch.cat([it.graph["shifts"] for it in items]).to(dev, dt),
            "unit_shifts": torch.cat([it.graph["unit_shifts"] for it in items]).to(dev, dt),
            "cell": torch.cat([it.graph["cell"] for it in items]).to(dev, dt),
            "batch": sidx,
            "ptr": torch.tensor(offsets, dtype=torch.long, device=dev),
            "periodic": torch.tensor([it.periodic for it in items], device=dev),
        }
        return Batch(inputs=inputs, structure_index=sidx, n_structures=len(items),
                     **collate_labels(items, dt, dev))


#: MACE in the paper (MACE-MP-0 medium): sigma_TL 0.5, gamma_0 1e-3, head (64, 16), a=1.5, b=10.
FAMILY = ModelFamily(
    name="mace", adapter="MACEAdapter", package="mace", extra="mace",
    defaults=FamilyDefaults(sigma_tl=0.5, step_size=1e-3, head_hidden=(64, 16),
                            calibration_a=1.5, calibration_b=10.0),
    sources="'mace-mp-0:small|medium|large' (downloads once), a path to a .model file, or 'tiny' (tests)",
)  # fmt: skip
