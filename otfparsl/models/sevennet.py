"""SevenNet adapter (sevenn 0.10.4): SevenNet-0, the paper's NequIP family, offline.

SevenNet-0 is a NequIP architecture (5 interaction blocks, 128 channels, l <= 2, cutoff 5 Å,
0.84 M parameters) trained on MPtrj (PBE/PBE+U); its weights ship inside the sevenn wheel, so
nothing is downloaded. ``ModelSpec.source``:

- ``"7net-0"`` (also ``"sevennet-0"``, ``"7net-0_11July2024"``): SevenNet-0 of 11 July 2024;
- ``"7net-0_22May2024"``: the first SevenNet-0 release; ``"7net-l3i5"``: l <= 3, 5 layers;
- any other string: a path to a sevenn checkpoint file (``checkpoint_*.pth``).

Native dtype float32; ``float64`` is supported (weights and graph are cast).

Conventions at the boundary (ASE units, as the MACE and CHGNet adapters):

- energy: the sum of SevenNet's atomic energies (after its per-species scale and shift), eV.
- forces: -dE/dr in eV/Å by autograd through the edge vectors built from the positions.
- stress: (1/V) dE/d(strain) in eV/Å^3 (ASE sign; sevenn's own calculator gives the same
  quantity), from a symmetric strain of positions and cell; zero for structures that are not
  periodic in all three directions.
- molecules need no cell: the neighbour list (sevenn's own, matscipy) uses no periodic images
  in non-periodic directions.
- features: the 128 invariant (``0e``) channels of the last interaction block, the input of
  SevenNet's readout MLP. These are the features the original code fed its sigma head with
  its NequIP model (``node_features[:, :64]`` of a 64-channel NequIP, SpiceModelLoader.py).

``core.parameters()`` are exactly the weights to sample (842,440 for SevenNet-0): SevenNet's
fixed quantities stored as parameters without gradient (per-species energy scale and shift, the
convolutions' neighbour-count denominators) are turned into buffers, like MACE's E0s and
scale/shift (method.md section 2).

e3nn 0.4.4 unpickles its constants with ``torch.load`` when first imported, which torch >= 2.6
refuses (``weights_only``) unless ``slice`` is allowed; mace-torch works around it by setting
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the whole process when ``mace`` is imported. This
adapter instead allows ``slice`` for that one import (:func:`_import_sevenn`), so it works with
or without mace-torch installed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

#: Module of SevenNet whose input is the per-atom invariant feature vector.
_READOUT = "reduce_input_to_hidden"
#: Module classes replaced by the core's own code (one-hot in collate, energy sum, autograd).
_REPLACED = ("OnehotEmbedding", "AtomReduce", "EdgePreprocess", "ForceOutput",
             "ForceStressOutput", "ForceStressOutputFromEdge")  # fmt: skip


def _import_sevenn() -> Any:
    """Import ``sevenn.util`` with e3nn's constants loadable under torch's weights_only default."""
    if "e3nn.o3" not in sys.modules:
        with torch.serialization.safe_globals([slice]):
            import e3nn.o3  # noqa: F401  (e3nn/o3/_wigner.py torch.loads a pickled slice)
    import sevenn.util

    return sevenn.util


def _load_sevennet(source: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a SevenNet checkpoint shipped in the wheel (by name) or from a file, on CPU.

    Returns
    -------
    tuple
        The ``AtomGraphSequential`` model and its config dict (``cutoff`` Å, ``_type_map``).
    """
    util = _import_sevenn()
    path = Path(source).expanduser()
    if not path.is_file():
        try:
            path = Path(util.pretrained_name_to_path(source))
        except ValueError:
            raise ConfigurationError(
                f"SevenNet source {source!r} is neither a checkpoint shipped with sevenn "
                "('7net-0', '7net-0_22May2024', '7net-l3i5') nor an existing checkpoint file. "
                "Give one of those."
            ) from None
    logger.info("loading SevenNet checkpoint %s", path)
    model, config = util.model_from_checkpoint(str(path))
    return model, config


def _parameters_without_grad_to_buffers(model: torch.nn.Module) -> list[str]:
    """Turn every parameter with ``requires_grad=False`` into a buffer of the same module.

    Returns
    -------
    list of str
        Qualified names of the converted tensors.
    """
    converted = []
    for module_name, module in model.named_modules():
        for name, param in list(module._parameters.items()):
            if param is not None and not param.requires_grad:
                del module._parameters[name]
                module.register_buffer(name, param.detach().clone())
                converted.append(f"{module_name}.{name}" if module_name else name)
    return converted


class SevenNetCore(torch.nn.Module):
    """SevenNet as a core: ``forward(inputs, compute_stress, training) -> Prediction``.

    ``inputs`` is the dict made by :meth:`SevenNetAdapter.collate`: ``positions`` ``(A, 3)`` Å,
    ``onehot`` ``(A, n_species)``, ``species`` ``(A,)`` long, ``edge_index`` ``(2, n_edges)``,
    ``cell_shift`` ``(n_edges, 3)`` (integer image offsets), ``cell`` ``(S, 3, 3)`` Å,
    ``batch`` ``(A,)`` long, ``periodic`` ``(S,)`` bool.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        for name, module in list(model._modules.items()):
            if type(module).__name__ in _REPLACED:
                del model._modules[name]
        if _READOUT not in model._modules:
            raise ModelError(
                f"this SevenNet checkpoint has no {_READOUT!r} module (modules: "
                f"{list(model._modules)}); the adapter needs it to find the invariant features."
            )
        readout = model._modules[_READOUT].linear
        if any(ir.l != 0 or ir.p == -1 for _mul, ir in readout.irreps_in):
            raise ModelError(
                f"SevenNet readout input {readout.irreps_in} is not all invariant scalars (0e)."
            )
        self.n_features = int(readout.irreps_in.dim)
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor], compute_stress: bool = False,
                training: bool = False) -> Prediction:
        """Predict energy (eV), forces (eV/Å), stress (eV/Å^3, ASE sign) and invariant features.

        Parameters
        ----------
        inputs
            The dict made by :meth:`SevenNetAdapter.collate`.
        compute_stress
            Compute the ``(S, 3, 3)`` stress; zero for structures not periodic in 3D.
        training
            Keep the graph of forces and stress (``create_graph``) for losses on them.

        Notes
        -----
        Stress as in ASE: sigma = (1/V) dE/d(epsilon) at epsilon = 0, with positions and cell
        deformed by (1 + epsilon_sym); forces F = -dE/dr.
        """
        from sevenn import _keys as key

        batch = inputs["batch"]
        n_structures = int(inputs["cell"].shape[0])
        pos = inputs["positions"].detach().clone().requires_grad_(True)
        cell = inputs["cell"]
        wrt = [pos]
        if compute_stress:
            strain = torch.zeros((n_structures, 3, 3), dtype=pos.dtype, device=pos.device,
                                 requires_grad=True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            pos_s = pos + torch.bmm(pos.unsqueeze(1), sym[batch]).squeeze(1)
            cell = cell + torch.bmm(cell, sym)
            wrt.append(strain)
        else:
            pos_s = pos
        src, dst = inputs["edge_index"]
        edge_vec = pos_s[dst] - pos_s[src] + torch.einsum(
            "ni,nij->nj", inputs["cell_shift"], cell[batch[src]])
        data = {key.EDGE_VEC: edge_vec, key.EDGE_IDX: inputs["edge_index"],
                key.NODE_FEATURE: inputs["onehot"], key.NODE_ATTR: inputs["onehot"],
                key.ATOM_TYPE: inputs["species"], key.BATCH: batch}  # fmt: skip
        features = None
        for name, module in self.model._modules.items():
            if name == _READOUT:
                features = data[key.NODE_FEATURE]
            data = module(data)
        atomic = data[key.ATOMIC_ENERGY].view(-1)
        energy = torch.zeros(n_structures, dtype=atomic.dtype, device=atomic.device)
        energy = energy.index_add(0, batch, atomic)
        grads = torch.autograd.grad(energy.sum(), wrt, create_graph=training)
        forces = -grads[0]
        stress = None
        if compute_stress:
            periodic = inputs["periodic"]
            volume = torch.where(periodic, torch.linalg.det(inputs["cell"]).abs(),
                                 torch.ones_like(periodic, dtype=pos.dtype))
            stress = grads[1] * (periodic.to(pos.dtype) / volume).view(-1, 1, 1)
        pred = Prediction(energy=energy, forces=forces, stress=stress, features=features)
        return pred if training else pred.detached()


class SevenNetAdapter:
    """SevenNet behind the :class:`~otfparsl.models.base.ModelAdapter` protocol.

    Parameters
    ----------
    spec
        ``family="sevennet"``, ``source`` a checkpoint name (``"7net-0"``) or path, dtype
        ``"float32"`` (native) or ``"float64"``.
    """

    def __init__(self, spec: ModelSpec) -> None:
        if spec.options:
            raise ConfigurationError(f"SevenNet takes no options; got {dict(spec.options)}")
        self.spec = spec
        self.dtype = torch_dtype(spec)
        self.device = torch.device(spec.device)
        model, config = _load_sevennet(spec.source or "7net-0")
        frozen = _parameters_without_grad_to_buffers(model)
        logger.debug("SevenNet tensors kept fixed (buffers): %s", frozen)
        self.r_cut = float(config["cutoff"])
        self.type_map = {int(z): int(i) for z, i in config["_type_map"].items()}
        self.core = SevenNetCore(model).to(self.device, self.dtype)
        self.n_features = self.core.n_features
        self.defaults = FAMILY.defaults

    def check_atoms(self, atoms: Atoms) -> None:
        """Raise ModelError if ``atoms`` holds elements the model was not trained on."""
        unknown = sorted({int(z) for z in atoms.numbers} - set(self.type_map))
        if unknown:
            from ase.data import chemical_symbols

            names = [chemical_symbols[z] for z in unknown]
            raise ModelError(
                f"SevenNet ({self.spec.source}) does not know the element(s) {names} "
                f"(atomic numbers {unknown}); it knows {len(self.type_map)} elements, "
                f"Z = {min(self.type_map)}..{max(self.type_map)} except "
                f"{sorted(set(range(1, max(self.type_map) + 1)) - set(self.type_map))}. "
                "Use a model trained on these elements."
            )

    def prepare(self, atoms: Atoms) -> PreparedStructure:
        """Build the neighbour list of one structure once (sevenn's own builder), on CPU."""
        from sevenn import _keys
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        self.check_atoms(atoms)
        graph = unlabeled_atoms_to_graph(atoms, self.r_cut)
        species = torch.tensor([self.type_map[int(z)] for z in atoms.numbers], dtype=torch.long)
        prepared = {
            "positions": torch.tensor(atoms.positions, dtype=torch.float64),
            "species": species,
            "edge_index": torch.as_tensor(graph[_keys.EDGE_IDX], dtype=torch.long),
            "cell_shift": torch.as_tensor(graph[_keys.CELL_SHIFT], dtype=torch.float64),
            "cell": torch.tensor(atoms.cell.array, dtype=torch.float64).view(1, 3, 3),
        }
        return PreparedStructure(graph=prepared, n_atoms=len(atoms),
                                 periodic=bool(all(atoms.pbc)))

    def collate(self, items: Sequence[PreparedStructure]) -> Batch:
        """Concatenate prepared structures into the input dict of :class:`SevenNetCore`."""
        if not items:
            raise ConfigurationError("cannot collate an empty list of structures")
        dev, dt = self.device, self.dtype
        offsets = np.concatenate([[0], np.cumsum([it.n_atoms for it in items])])
        species = torch.cat([it.graph["species"] for it in items]).to(dev)
        sidx = structure_index(items, dev)
        inputs = {
            "positions": torch.cat([it.graph["positions"] for it in items]).to(dev, dt),
            "species": species,
            "onehot": torch.nn.functional.one_hot(species, len(self.type_map)).to(dt),
            "edge_index": torch.cat([it.graph["edge_index"] + int(o)
                                     for it, o in zip(items, offsets, strict=False)], dim=1).to(dev),
            "cell_shift": torch.cat([it.graph["cell_shift"] for it in items]).to(dev, dt),
            "cell": torch.cat([it.graph["cell"] for it in items]).to(dev, dt),
            "batch": sidx,
            "periodic": torch.tensor([it.periodic for it in items], device=dev),
        }
        return Batch(inputs=inputs, structure_index=sidx, n_structures=len(items),
                     **collate_labels(items, dt, dev))


#: NequIP in the paper (ethanol): sigma_TL 0.2, gamma_0 1e-4 (the original code's; the paper
#: text says 3e-5), head (32, 16) after the invariant features, calibration a=3, b=10.
FAMILY = ModelFamily(
    name="sevennet", adapter="SevenNetAdapter", package="sevenn", extra="sevennet",
    defaults=FamilyDefaults(sigma_tl=0.2, step_size=1e-4, head_hidden=(32, 16),
                            calibration_a=3.0, calibration_b=10.0),
    sources="'7net-0' (SevenNet-0, NequIP; weights ship in the sevenn wheel), "
            "'7net-0_22May2024', '7net-l3i5', or a path to a sevenn checkpoint",
)  # fmt: skip
