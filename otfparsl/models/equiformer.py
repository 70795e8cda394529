"""EquiformerV2 adapter (fairchem-core 1.0.0): any EquiformerV2 checkpoint, or a tiny model.

Sources (``ModelSpec.source``):

- a path to a fairchem checkpoint file of an EquiformerV2 model: OC20 S2EF
  (``eq2_31M_ec4_allmd.pt``, ``eq2_153M_ec4_allmd.pt``) or the hydra-layout eqV2 models
  (OMat24, MPtrj, Alexandria); see :mod:`otfparsl.models._equiformer_checkpoint`. otfparsl
  downloads nothing: fetch the file from fairchem's model page yourself.
- ``"tiny"``: a small EquiformerV2 with random weights from ``spec.seed`` (tests, examples;
  not a physical model). Options (``spec.options``): ``num_layers`` (2), ``sphere_channels``
  (32), ``lmax`` (2), ``max_radius`` (Å, 5.0), ``max_neighbors`` (20).

What the core predicts (ASE units at the boundary):

- energy in eV: the model's output denormalised as fairchem's trainer does (normalizers and
  element references of the checkpoint).
- forces in eV/Å from EquiformerV2's **direct force head**, not -dE/dr. They are
  rotation-equivariant but not conservative (they need not sum to zero, and a closed path can
  gain energy). In the ensemble, ``forces_std`` is the spread of the members' direct forces plus
  the learned sigma; the contract check "forces = -dE/dr" does not apply to this family
  (rotation equivariance and batched = one by one do).
- stress: none. fairchem-core 1.0.0 has no stress head, so ``compute_stress=True`` gives
  ``stress=None``, stress labels are left out of the likelihood (:meth:`collate`), and
  :meth:`EquiformerAdapter.require_stress` raises :class:`~otfparsl.errors.ModelError` for NPT
  or any use that needs a stress.
- features: the l = 0 (rotation-invariant) channels of the final node embedding, after the
  last layer norm (``sphere_channels`` per resolution); the sigma head of method.md section 1.

Sampled parameters: every parameter that receives a gradient. Some do not, in every
configuration (e.g. the energy block's ``so3_linear_1`` and ``grid_mlp`` and the force block's
``proj.bias`` with ``use_grid_mlp=True``): they are found once at load time by one backward
pass on a probe molecule and frozen (``requires_grad=False``), so they are neither sampled nor
under the transfer prior (SGHMC would otherwise let them drift under the prior and the noise
alone). Dropout and drop-path are always off (the model stays in eval mode). Neighbour lists
are built once per structure in :meth:`EquiformerAdapter.prepare` with fairchem's own
``radius_graph_pbc`` (cutoff ``max_radius``, at most ``max_neighbors`` per atom), so the graph
is the one fairchem builds on the fly. A core is not re-entrant: fairchem's rotation modules
keep per-call state, so threads must use separate copies (every chain has its own).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from ase import Atoms

from otfparsl.bayes.types import Batch, Prediction
from otfparsl.errors import ConfigurationError, ModelError
from otfparsl.models._equiformer_checkpoint import (
    OutputScales,
    build_from_checkpoint,
    read_checkpoint,
)
from otfparsl.models.base import (
    FamilyDefaults,
    ModelFamily,
    ModelSpec,
    PreparedStructure,
    collate_labels,
    structure_index,
)

logger = logging.getLogger(__name__)

_TINY_OPTIONS = {"num_layers": 2, "sphere_channels": 32, "lmax": 2, "max_radius": 5.0,
                 "max_neighbors": 20}  # fmt: skip


def import_fairchem() -> SimpleNamespace:
    """Import what the adapter uses from fairchem-core (the torch_scatter stand-in first)."""
    from otfparsl.models import _torch_scatter

    _torch_scatter.install()
    utils = importlib.import_module("fairchem.core.common.utils")
    eqv2 = importlib.import_module("fairchem.core.models.equiformer_v2.equiformer_v2_oc20")
    rot = importlib.import_module("fairchem.core.models.equiformer_v2.edge_rot_mat")
    return SimpleNamespace(EquiformerV2=eqv2.EquiformerV2_OC20,
                           radius_graph_pbc=utils.radius_graph_pbc,
                           init_edge_rot_mat=rot.init_edge_rot_mat)


#: Seed of the edge frames' roll vectors (the same for every structure and call).
EDGE_FRAME_SEED = 0


class SeededEdgeFrames:
    """EquiformerV2's per-edge rotation frames with the random roll drawn per structure from a seed.

    fairchem's ``init_edge_rot_mat`` completes each edge direction to a frame with a random
    vector from torch's global generator (``torch.rand_like``) at every call. The roll does not
    matter in exact arithmetic, but the S2 grid activations make the model only approximately
    invariant to it, so every call would give slightly different energies and forces and
    consume the global random stream. Here fairchem's function is called once per structure
    with the global generator forked and seeded by ``EDGE_FRAME_SEED`` (its state is restored
    afterwards): a structure gets the same frames in every call and in any batch.
    """

    def __init__(self, init_edge_rot_mat) -> None:  # noqa: ANN001  (fairchem's function)
        self.init_edge_rot_mat = init_edge_rot_mat

    def __call__(self, data, edge_index: torch.Tensor, edge_distance_vec: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        device = edge_distance_vec.device
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            devices, generator = [index], torch.cuda.default_generators[index]
        else:
            devices, generator = [], torch.default_generator
        frames = []
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            for part in torch.split(edge_distance_vec, data.neighbors.tolist()):
                generator.manual_seed(EDGE_FRAME_SEED)  # only the forked generator
                frames.append(self.init_edge_rot_mat(part) if len(part) else part.new_zeros(0, 3, 3))
        return torch.cat(frames)


def tiny_kwargs(**options: float) -> dict:
    """Return the ``EquiformerV2_OC20`` keyword arguments of the tiny model.

    The flags are those of the OC20 eqV2 models (layer_norm_sh, grid MLP, separable S2
    activation, grid resolution 18: with fairchem's default grid for lmax 2 the model is
    rotation-equivariant only to ~3e-3 relative, with 18 to ~1e-5); only the sizes are small.
    """
    unknown = set(options) - set(_TINY_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown tiny-EquiformerV2 options {sorted(unknown)}; allowed: {sorted(_TINY_OPTIONS)}"
        )
    opt = {**_TINY_OPTIONS, **options}
    ch, lmax = int(opt["sphere_channels"]), int(opt["lmax"])
    return dict(
        num_layers=int(opt["num_layers"]), sphere_channels=ch, attn_hidden_channels=ch,
        num_heads=2, attn_alpha_channels=8, attn_value_channels=8, ffn_hidden_channels=ch,
        norm_type="layer_norm_sh", lmax_list=[lmax], mmax_list=[min(2, lmax)],
        grid_resolution=18, num_sphere_samples=64, edge_channels=ch, max_radius=float(opt["max_radius"]),
        max_neighbors=int(opt["max_neighbors"]), max_num_elements=90, use_grid_mlp=True,
        use_sep_s2_act=True, weight_init="uniform", alpha_drop=0.1, drop_path_rate=0.05,
    )  # fmt: skip


def build_model(spec: ModelSpec, fc: SimpleNamespace) -> tuple[torch.nn.Module, OutputScales]:
    """Build the fairchem model named by ``spec.source`` (CPU, float32) and its output scales."""
    if spec.source == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = fc.EquiformerV2(None, None, None, **tiny_kwargs(**dict(spec.options)))
        return model, OutputScales()
    if spec.options:
        raise ConfigurationError(
            f"an EquiformerV2 checkpoint takes no options; got {dict(spec.options)}"
        )
    path = Path(spec.source).expanduser()
    if not path.is_file():
        raise ConfigurationError(
            f"EquiformerV2 source {spec.source!r} is neither 'tiny' nor an existing checkpoint "
            "file. Download an EquiformerV2 checkpoint (e.g. eq2_31M_ec4_allmd.pt) from "
            "fairchem's model page and give its path; otfparsl downloads nothing."
        )
    ckpt = read_checkpoint(path, fc.EquiformerV2)
    return build_from_checkpoint(ckpt, fc.EquiformerV2, path), ckpt.scales


class EquiformerCore(torch.nn.Module):
    """EquiformerV2 as a core: ``forward(inputs, compute_stress, training) -> Prediction``.

    Parameters
    ----------
    model
        fairchem's ``EquiformerV2_OC20``; it always runs in eval mode on the graph of ``inputs``.
    scales
        Output normalisation of the checkpoint (identity for the tiny model).
    init_edge_rot_mat
        fairchem's edge-frame function, wrapped in :class:`SeededEdgeFrames`.
    """

    def __init__(self, model: torch.nn.Module, scales: OutputScales, init_edge_rot_mat) -> None:  # noqa: ANN001
        super().__init__()
        model.direct_forces = True  # fairchem then leaves the grad mode to the caller
        model.use_pbc, model.otf_graph = True, False  # the graph comes from prepare()
        model._init_edge_rot_mat = SeededEdgeFrames(init_edge_rot_mat)
        self.model = model.eval()
        self.register_buffer("scale", torch.tensor([scales.energy_std, scales.energy_mean,
                                                    scales.forces_std, scales.forces_mean]))
        refs = scales.element_references
        self.register_buffer("element_references", refs if refs is not None else torch.zeros(0))
        offsets, offset = [], 0
        for lmax in model.lmax_list:
            offsets.append(offset)
            offset += (lmax + 1) ** 2
        self.register_buffer("feature_index", torch.tensor(offsets), persistent=False)

    def train(self, mode: bool = True) -> EquiformerCore:
        """Set the mode of the wrapper; the fairchem model stays in eval mode (no dropout)."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, inputs: dict[str, torch.Tensor], compute_stress: bool = False,
                training: bool = False) -> Prediction:
        """Predict energy (eV), direct forces (eV/Å) and l = 0 features; stress is None.

        Parameters
        ----------
        inputs
            The dict made by :meth:`EquiformerAdapter.collate` (positions ``(A, 3)`` Å, ...).
        compute_stress
            Accepted for the protocol; EquiformerV2 here has no stress head (stress None).
        training
            Keep the graph of the outputs for a loss on them (else computed without grad).
        """
        data = SimpleNamespace(**inputs)
        captured: dict[str, torch.Tensor] = {}
        hook = self.model.norm.register_forward_hook(
            lambda _module, _args, out: captured.__setitem__("x", out))
        try:
            with torch.set_grad_enabled(training and torch.is_grad_enabled()):
                out = self.model(data)
                energy = out["energy"] * self.scale[0] + self.scale[1]
                if self.element_references.numel():
                    per_atom = self.element_references.to(energy.dtype)[data.atomic_numbers]
                    energy = energy.index_add(0, data.batch, per_atom)
                forces = out["forces"] * self.scale[2] + self.scale[3]
                x = captured["x"]
                features = x.index_select(1, self.feature_index).reshape(x.shape[0], -1)
        finally:
            hook.remove()
        return Prediction(energy=energy, forces=forces, stress=None, features=features)


def freeze_gradient_free_parameters(core: EquiformerCore, probe: dict) -> list[str]:
    """Freeze (``requires_grad=False``) the parameters that get no gradient, return their names.

    One backward pass of ``sum(c_E E) + sum(c_F F) + sum(c_h h)`` on the probe batch with
    random cotangents c (fixed seed): a parameter whose gradient is absent or exactly zero
    there does not influence energy, forces or features.
    """
    named = [(n, p) for n, p in core.named_parameters() if p.requires_grad]
    pred = core(probe, False, True)
    gen = torch.Generator().manual_seed(0)
    total = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)).sum()
                for t in (pred.energy, pred.forces, pred.features))
    grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    frozen = [n for (n, p), g in zip(named, grads, strict=True) if g is None or not bool(g.any())]
    for name, p in named:
        if name in frozen:
            p.requires_grad_(False)
    return frozen


class EquiformerAdapter:
    """EquiformerV2 behind the :class:`~otfparsl.models.base.ModelAdapter` protocol.

    Parameters
    ----------
    spec
        ``family="equiformer"``; ``source`` a checkpoint path or ``"tiny"``; ``dtype`` must
        be ``"float32"``: fairchem-core 1.0.0's EquiformerV2 builds its Wigner matrices and
        periodic image offsets in float32 whatever the weights' type.

    Attributes
    ----------
    supports_stress
        False: no stress head (see :meth:`require_stress`).
    frozen_parameters
        Names (in ``core``) of the parameters that get no gradient and are not sampled.
    """

    supports_stress = False

    def __init__(self, spec: ModelSpec) -> None:
        if spec.dtype != "float32":
            raise ConfigurationError(
                f"the EquiformerV2 adapter runs in float32 only (fairchem-core 1.0.0 builds its "
                f"Wigner matrices in float32); got dtype {spec.dtype!r}. Set model.dtype: float32."
            )
        self.spec = spec
        self.dtype = torch.float32
        self.device = torch.device(spec.device)
        self._fc = import_fairchem()
        model, scales = build_model(spec, self._fc)
        self.r_max = float(model.max_radius)
        self.max_neighbors = int(model.max_neighbors)
        self._strict = bool(model.enforce_max_neighbors_strictly)
        self.max_atomic_number = int(model.max_num_elements) - 1
        if scales.element_references is not None:  # index Z: must cover every known element
            self.max_atomic_number = min(self.max_atomic_number,
                                         len(scales.element_references) - 1)
        self.core = EquiformerCore(model, scales, self._fc.init_edge_rot_mat).to(self.device, self.dtype)
        self.n_features = int(model.sphere_channels) * len(model.lmax_list)
        self.defaults = FAMILY.defaults
        from ase.build import molecule

        probe = molecule("CH3CH2OH")
        probe.rattle(0.05, seed=0)
        self.frozen_parameters = tuple(
            freeze_gradient_free_parameters(self.core, self.collate([self.prepare(probe)]).inputs))
        logger.info("EquiformerV2 (%s): %d parameter tensors get no gradient and are not "
                    "sampled: %s", spec.source, len(self.frozen_parameters), self.frozen_parameters)

    def require_stress(self) -> None:
        """Raise ModelError: this model family predicts no stress (NPT needs one)."""
        raise ModelError(
            f"the EquiformerV2 model ({self.spec.source}) has no stress head (fairchem-core "
            "1.0.0 has none), so it cannot run NPT or report stress. Use NVT/NVE MD, or a "
            "model family with stress (mace, chgnet)."
        )

    def check_atoms(self, atoms: Atoms) -> None:
        """Raise ModelError for unknown elements or a cell that cannot be made periodic."""
        bad = sorted({int(z) for z in atoms.numbers if not 1 <= z <= self.max_atomic_number})
        if bad:
            raise ModelError(
                f"the EquiformerV2 model ({self.spec.source}) knows atomic numbers "
                f"1..{self.max_atomic_number}; got {bad}. Use a model trained on these elements."
            )
        if any(atoms.pbc) and abs(atoms.cell.volume) < 1e-6:
            raise ModelError(
                f"a periodic structure (pbc={atoms.pbc.tolist()}) needs a cell with volume > 0; "
                f"got cell {atoms.cell.array.tolist()}. Set the full cell (with vacuum along "
                "non-periodic directions) or pbc=False for a molecule."
            )

    def prepare(self, atoms: Atoms) -> PreparedStructure:
        """Build the neighbour list once (fairchem's radius_graph_pbc, max_neighbors), on CPU."""
        self.check_atoms(atoms)
        pbc = torch.tensor(np.asarray(atoms.pbc, dtype=bool)).view(1, 3)
        cell = np.array(atoms.cell.array, dtype=float) if any(atoms.pbc) else np.zeros((3, 3))
        data = SimpleNamespace(
            pos=torch.tensor(atoms.positions, dtype=torch.float32),
            cell=torch.tensor(cell, dtype=torch.float32).view(1, 3, 3),
            natoms=torch.tensor([len(atoms)]), pbc=pbc)
        edge_index, offsets, neighbors = self._fc.radius_graph_pbc(
            data, self.r_max, self.max_neighbors, self._strict)
        graph = {
            "pos": torch.tensor(atoms.positions, dtype=torch.float64),
            "atomic_numbers": torch.tensor(atoms.numbers, dtype=torch.long),
            "cell": torch.tensor(cell, dtype=torch.float64).view(1, 3, 3),
            "edge_index": edge_index.long(),
            "cell_offsets": offsets.to(torch.float64),
            "neighbors": neighbors.long().view(1),
        }
        return PreparedStructure(graph=graph, n_atoms=len(atoms), periodic=bool(all(atoms.pbc)))

    def collate(self, items: Sequence[PreparedStructure]) -> Batch:
        """Concatenate prepared structures; stress labels are dropped (no stress head)."""
        if not items:
            raise ConfigurationError("cannot collate an empty list of structures")
        dev, dt = self.device, self.dtype
        starts = np.concatenate([[0], np.cumsum([it.n_atoms for it in items])[:-1]])
        sidx = structure_index(items, dev)
        inputs = {
            "pos": torch.cat([it.graph["pos"] for it in items]).to(dev, dt),
            "atomic_numbers": torch.cat([it.graph["atomic_numbers"] for it in items]).to(dev),
            "cell": torch.cat([it.graph["cell"] for it in items]).to(dev, dt),
            "edge_index": torch.cat([it.graph["edge_index"] + int(s)
                                     for it, s in zip(items, starts, strict=True)], dim=1).to(dev),
            "cell_offsets": torch.cat([it.graph["cell_offsets"] for it in items]).to(dev, dt),
            "neighbors": torch.cat([it.graph["neighbors"] for it in items]).to(dev),
            "natoms": torch.tensor([it.n_atoms for it in items], device=dev),
            "batch": sidx,
        }
        labels = collate_labels(items, dt, dev)
        if labels["stress"] is not None:
            logger.debug("EquiformerV2 has no stress head: stress labels are not used")
        labels["stress"], labels["stress_mask"] = None, None
        return Batch(inputs=inputs, structure_index=sidx, n_structures=len(items), **labels)


#: EquiformerV2 in the paper (OC20 adsorbate ablation): sigma_TL 0.02, gamma_0 1e-4; the paper
#: gives no head sizes, method.md section 1 chooses (n_l0 -> 64 -> 16 -> 1); the calibration
#: prior is the original code's (a=1.5, b=10).
FAMILY = ModelFamily(
    name="equiformer", adapter="EquiformerAdapter", package="fairchem", extra="equiformer",
    defaults=FamilyDefaults(sigma_tl=0.02, step_size=1e-4, head_hidden=(64, 16),
                            calibration_a=1.5, calibration_b=10.0),
    sources="a path to an EquiformerV2 checkpoint file (OC20 eq2_31M/153M, OMat24 eqV2; not "
            "downloaded), or 'tiny' (tests); no stress head: NVT/NVE only",
)  # fmt: skip
