"""Read EquiformerV2 checkpoint files of fairchem-core 1.x: architecture, weights, output scales.

A fairchem trainer checkpoint is a ``torch.save``'d dict with ``config`` (the training YAML,
``config["model"]`` naming the model and its keyword arguments), ``state_dict`` (keys possibly
prefixed by ``module.`` once per DataParallel wrapper), ``normalizers`` and optionally ``ema``
and ``elementrefs``. Two layouts of EquiformerV2 exist:

- **flat** (OC20 ``eq2_31M_ec4_allmd.pt``, ``eq2_153M_ec4_allmd.pt``; fairchem-core 1.0.0):
  ``config["model"]`` is ``{"name": "equiformer_v2", **kwargs}`` (older files:
  ``config["model"] = "equiformer_v2"`` and ``config["model_attributes"] = kwargs``); the
  energy and force blocks are ``energy_block.*`` and ``force_block.*``.
- **hydra** (OMat24 / MPtrj / Alexandria eqV2, fairchem-core >= 1.2): ``config["model"]`` is
  ``{"name": "hydra", "backbone": {"model": "equiformer_v2_backbone", **kwargs}, "heads":
  {NAME: {"module": ...}}}``; weights under ``backbone.*`` and
  ``output_heads.NAME.energy_block.*`` / ``output_heads.NAME.force_block.*``. The backbone is
  the flat model without its blocks, so both layouts load into fairchem-core 1.0.0's
  ``EquiformerV2_OC20`` (the same renaming as fairchem's own ``eqv2_to_eqv2_hydra.py``, in the
  other direction). A stress head (``rank2_symmetric_head``) is not read: fairchem-core 1.0.0
  has no such module, so this adapter predicts no stress.

The model's raw outputs are normalised: fairchem's trainer turns them into eV and eV/Å with
``E = E_raw * std_E + mean_E (+ sum of per-element references)``, ``F = F_raw * std_F +
mean_F``. The scales come from ``checkpoint["normalizers"]`` (keys ``energy``/``target`` and
``forces``/``grad_target``, each ``{"mean", "std" | "rmsd"}``), else from the config's
``dataset`` (``normalize_labels`` + ``target_mean/target_std/grad_target_mean/grad_target_std``
or ``transforms.normalizer``); element references from ``checkpoint["elementrefs"]["energy"]``.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from otfparsl.errors import ModelError

logger = logging.getLogger(__name__)

_FLAT_NAMES = ("equiformer_v2", "equiformerv2", "equiformer_v2_oc20", "equiformerv2_oc20")
_ENERGY_HEADS = ("equiformer_v2_energy_head", "equiformerv2_scalar_head")
_FORCE_HEADS = ("equiformer_v2_force_head", "equiformerv2_vector_head")


@dataclass(frozen=True)
class OutputScales:
    """Turn raw model outputs into eV and eV/Å (fairchem's normalizers and element references).

    Attributes
    ----------
    energy_std, energy_mean
        ``E = E_raw * energy_std + energy_mean`` per structure, eV.
    forces_std, forces_mean
        ``F = F_raw * forces_std + forces_mean``, eV/Å.
    element_references
        ``(n_elements,)`` eV per atom of atomic number Z (index Z), added to E; None if unused.
    """

    energy_std: float = 1.0
    energy_mean: float = 0.0
    forces_std: float = 1.0
    forces_mean: float = 0.0
    element_references: torch.Tensor | None = None


@dataclass(frozen=True)
class EquiformerCheckpoint:
    """What a checkpoint file holds, ready to build the model.

    Attributes
    ----------
    kwargs
        Keyword arguments of ``EquiformerV2_OC20`` (unknown keys dropped, see the log).
    state_dict
        Weights under ``EquiformerV2_OC20``'s parameter names.
    scales
        Output normalisation.
    layout
        ``"flat"`` or ``"hydra"``.
    ema
        EMA weights of a training checkpoint, in the order of the model's trainable
        parameters (they replace the state_dict's values, as fairchem's predict does), or None.
    """

    kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    scales: OutputScales
    layout: str
    ema: list[torch.Tensor] | None = None


def read_checkpoint(path: Path, model_class: type) -> EquiformerCheckpoint:
    """Read a fairchem EquiformerV2 checkpoint file (trusted files only: it is unpickled).

    Parameters
    ----------
    path
        The ``.pt`` file.
    model_class
        fairchem's ``EquiformerV2_OC20`` (its signature filters the config's keywords).

    Raises
    ------
    ModelError
        If the file is not a fairchem checkpoint of an EquiformerV2 model.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001  (any unpickling failure: name the file)
        raise ModelError(f"cannot read EquiformerV2 checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise ModelError(
            f"{path} is not a fairchem checkpoint (a dict with 'config' and 'state_dict'); "
            "give a checkpoint file saved by fairchem's trainer, e.g. eq2_31M_ec4_allmd.pt."
        )
    config = ckpt["config"]
    state = {_strip_module(k): v for k, v in ckpt["state_dict"].items()}
    model_cfg = config["model"]
    if isinstance(model_cfg, str):
        model_cfg = {"name": model_cfg, **config.get("model_attributes", {})}
    name = str(model_cfg.get("name", "")).split(".")[-1].lower()
    if name == "hydra":
        kwargs, state = _hydra(model_cfg, state, path)
        layout = "hydra"
    elif name in _FLAT_NAMES:
        kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
        layout = "flat"
    else:
        raise ModelError(
            f"{path} holds a {model_cfg.get('name')!r} model, not EquiformerV2; the equiformer "
            f"family reads {list(_FLAT_NAMES)} and hydra models with an equiformer_v2_backbone."
        )
    accepted = set(inspect.signature(model_class.__init__).parameters) - {"self"}
    dropped = sorted(set(kwargs) - accepted)
    if dropped:
        logger.info("EquiformerV2 config keys not used by fairchem-core 1.0.0: %s", dropped)
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return EquiformerCheckpoint(kwargs, state, _scales(ckpt, config), layout,
                                _ema_weights(ckpt, layout, path))


def build_from_checkpoint(ckpt: EquiformerCheckpoint, model_class: type, path: Path) -> torch.nn.Module:
    """Build ``model_class`` (fairchem's EquiformerV2_OC20) with the checkpoint's weights.

    Raises
    ------
    ModelError
        If the config does not build or the weights do not fit it exactly.
    """
    try:
        model = model_class(None, None, None, **ckpt.kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"{path}: cannot build EquiformerV2 from its config: {exc}") from exc
    result = model.load_state_dict(ckpt.state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"{path}: the weights do not fit the EquiformerV2 of its config (missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}); the file may "
            "be from another architecture or a newer fairchem."
        )
    if ckpt.ema is not None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if len(trainable) != len(ckpt.ema):
            raise ModelError(f"{path}: {len(ckpt.ema)} EMA weights for {len(trainable)} parameters")
        with torch.no_grad():
            for p, value in zip(trainable, ckpt.ema, strict=True):
                p.copy_(value)
    return model


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _hydra(model_cfg: dict, state: dict, path: Path) -> tuple[dict, dict]:
    """Map a hydra backbone + energy/force heads onto the flat model's names."""
    backbone = dict(model_cfg.get("backbone", {}))
    if "equiformer_v2" not in str(backbone.pop("model", "")).lower():
        raise ModelError(f"{path}: the hydra backbone is not an equiformer_v2_backbone")
    heads = model_cfg.get("heads", {})
    energy = [k for k, h in heads.items() if str(h.get("module", "")).lower() in _ENERGY_HEADS]
    forces = [k for k, h in heads.items() if str(h.get("module", "")).lower() in _FORCE_HEADS]
    if len(energy) != 1 or len(forces) != 1:
        raise ModelError(
            f"{path}: expected one EquiformerV2 energy head and one force head, found heads "
            f"{ {k: h.get('module') for k, h in heads.items()} }"
        )
    if heads[energy[0]].get("reduce", "sum") != "sum":
        raise ModelError(f"{path}: only energy heads with reduce='sum' are supported")
    ignored = sorted(set(heads) - {energy[0], forces[0]})
    if ignored:
        logger.warning("%s: heads %s are not used (no stress head in fairchem-core 1.0.0)",
                       path, ignored)
    prefixes = {"backbone.": "", f"output_heads.{energy[0]}.": "", f"output_heads.{forces[0]}.": ""}
    flat = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                flat[key[len(prefix):]] = value
    return backbone, flat


def _ema_weights(ckpt: dict, layout: str, path: Path) -> list[torch.Tensor] | None:
    """Return the EMA weights of a training checkpoint (fairchem predicts with them), or None.

    They are a list in the order of the flat model's trainable parameters.
    """
    ema = ckpt.get("ema")
    if not ema or "shadow_params" not in ema:
        return None
    if layout != "flat":
        raise ModelError(
            f"{path} is a training checkpoint of a hydra model with EMA weights, whose order "
            "this adapter does not reconstruct; save an inference checkpoint with fairchem "
            "(trainer.save(training_state=False)) and load that."
        )
    return [torch.as_tensor(p) for p in ema["shadow_params"]]


def _scales(ckpt: dict, config: dict) -> OutputScales:
    values = {"energy": [1.0, 0.0], "forces": [1.0, 0.0]}
    dataset = config.get("dataset", {})
    if isinstance(dataset, list):
        dataset = dataset[0] if dataset else {}
    if isinstance(dataset, dict) and isinstance(dataset.get("train"), dict):
        dataset = dataset["train"]
    if isinstance(dataset, dict) and dataset.get("normalize_labels", False):
        values["energy"] = [dataset.get("target_std", 1.0), dataset.get("target_mean", 0.0)]
        values["forces"] = [dataset.get("grad_target_std", 1.0),
                            dataset.get("grad_target_mean", 0.0)]
    normalizer = dataset.get("transforms", {}).get("normalizer", {}) if isinstance(dataset, dict) else {}
    for key in ("energy", "forces"):
        if isinstance(normalizer.get(key), dict) and "file" not in normalizer[key]:
            entry = normalizer[key]
            values[key] = [entry.get("rmsd", entry.get("stdev", 1.0)), entry.get("mean", 0.0)]
    aliases = {"target": "energy", "grad_target": "forces"}
    for key, entry in (ckpt.get("normalizers") or {}).items():
        target = aliases.get(key, key)
        if target in values:
            values[target] = [entry.get("rmsd", entry.get("std", 1.0)), entry.get("mean", 0.0)]
    refs = (ckpt.get("elementrefs") or {}).get("energy")
    references = None
    if refs is not None:
        references = torch.as_tensor(refs["element_references"], dtype=torch.float64)
    elif isinstance(dataset, dict) and "element_references" in dataset.get("transforms", {}):
        logger.warning(
            "the checkpoint's energy element references are not stored in it (config "
            "dataset.transforms.element_references); energies miss a composition-dependent term"
        )
    return OutputScales(
        energy_std=float(values["energy"][0]), energy_mean=float(values["energy"][1]),
        forces_std=float(values["forces"][0]), forces_mean=float(values["forces"][1]),
        element_references=references,
    )
