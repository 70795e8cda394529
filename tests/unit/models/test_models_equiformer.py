"""EquiformerV2 adapter (fairchem-core 1.0.0): agreement with fairchem, contracts, sampling.

Runs only where the ``equiformer`` extra is installed, i.e. in its own environment
(README, "A second environment: EquiformerV2"): ``pytest -m equiformer``. The model is the
tiny random EquiformerV2 of the adapter (float32, seed 0); fairchem's own call builds its graph
on the fly and draws random edge-frame rolls, so it agrees with the adapter (fixed rolls) to
float32 round-off plus the model's approximate roll invariance (~1e-6 eV/Å here).
"""

from __future__ import annotations

import dataclasses
import importlib.util

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.emt import EMT

from otfparsl.bayes import SGHMCConfig
from otfparsl.bayes.chain import load_sample, read_chain_header
from otfparsl.errors import ConfigurationError, ModelError
from otfparsl.models import ModelAdapter, load_adapter
from otfparsl.models.base import ModelSpec, attach_labels
from otfparsl.models.equiformer import build_model, import_fairchem, tiny_kwargs
from otfparsl.testing import (
    check_batched_equals_single,
    check_rotation_invariance_of_features,
    predict,
)
from otfparsl.training import ChainJob, build_bayesian_model, init_chain_files, update_chain_file

pytestmark = pytest.mark.equiformer
if importlib.util.find_spec("fairchem") is None:  # tests/conftest.py does not collect it then
    pytest.skip("needs fairchem-core: the equiformer extra, installed in its own environment "
                "(README); run pytest -m equiformer there", allow_module_level=True)

SPEC = ModelSpec(family="equiformer", source="tiny", dtype="float32", seed=0)
#: Measured with the tiny model: rolls and float32 round-off (eV, eV/Å, feature units).
TOL = 2e-5
#: The parameters of this architecture (use_grid_mlp=True) that no output depends on.
GRADIENT_FREE = {
    "model.energy_block.so3_linear_1.weight", "model.energy_block.so3_linear_1.bias",
    "model.energy_block.grid_mlp.0.weight", "model.energy_block.grid_mlp.2.weight",
    "model.energy_block.grid_mlp.4.weight", "model.force_block.so2_conv_2.so2_m_conv.1.fc.weight",
    "model.force_block.proj.bias",
}  # fmt: skip


@pytest.fixture(scope="module")
def adapter():
    return load_adapter(SPEC)


@pytest.fixture(scope="module")
def fc():
    return import_fairchem()


def fairchem_call(model: torch.nn.Module, atoms: Atoms) -> dict[str, torch.Tensor]:
    """fairchem's own prediction: AtomsToGraphs + collater, graph built on the fly."""
    from fairchem.core.datasets import data_list_collater
    from fairchem.core.preprocessing import AtomsToGraphs

    a2g = AtomsToGraphs(r_energy=False, r_forces=False, r_distances=False, r_edges=False,
                        r_pbc=True)  # fmt: skip
    batch = data_list_collater([a2g.convert(atoms)], otf_graph=True)
    model.eval()
    with torch.no_grad():
        return model(batch)


def fresh_tiny(fc) -> torch.nn.Module:
    """The tiny model exactly as the adapter builds it, untouched by the adapter."""
    return build_model(SPEC, fc)[0]


def test_is_a_model_adapter_with_l0_features(adapter):
    assert isinstance(adapter, ModelAdapter)
    assert adapter.n_features == 32  # sphere_channels x 1 resolution
    d = adapter.defaults
    assert (d.sigma_tl, d.step_size, d.head_hidden) == (0.02, 1e-4, (64, 16))
    assert (d.calibration_a, d.calibration_b) == (1.5, 10.0)
    assert adapter.supports_stress is False


@pytest.mark.parametrize("name", ["ethanol", "cu_cell"])
def test_energy_and_forces_equal_fairchem_own_call(adapter, fc, request, name):
    atoms = request.getfixturevalue(name)
    ref = fairchem_call(fresh_tiny(fc), atoms)
    pred = predict(adapter, [atoms])
    assert abs(float(pred.energy[0] - ref["energy"][0])) < TOL
    assert float((pred.forces - ref["forces"]).abs().max()) < TOL
    assert float(ref["forces"].abs().max()) > 1e-3  # a non-trivial comparison


def test_forces_are_direct_not_conservative(adapter, ethanol):
    forces = predict(adapter, [ethanol]).forces
    assert float(forces.sum(0).norm()) > 1e-3  # a gradient force would sum to zero


@pytest.mark.parametrize("name", ["ethanol", "cu_cell"])
def test_rotation_equivariance(adapter, request, name):
    atoms = request.getfixturevalue(name)
    check_rotation_invariance_of_features(adapter, atoms, seed=3, tol=TOL)


def test_batched_equals_single(adapter, ethanol, cu_cell, al_cell, water):
    check_batched_equals_single(adapter, [ethanol, cu_cell, water, al_cell], tol=1e-6)


def test_predictions_do_not_depend_on_global_rng(adapter, cu_cell):
    torch.manual_seed(1)
    a = predict(adapter, [cu_cell])
    torch.manual_seed(2)
    b = predict(adapter, [cu_cell])
    state = torch.get_rng_state()
    c = predict(adapter, [cu_cell])
    assert torch.equal(a.forces, b.forces) and torch.equal(b.forces, c.forces)
    assert torch.equal(torch.get_rng_state(), state)  # fairchem's rolls leave it untouched


def test_molecule_without_cell_equals_boxed_molecule(adapter, ethanol):
    boxed = ethanol.copy()
    boxed.cell = [20.0, 20.0, 20.0]  # images >= 16 Å apart, cutoff 5 Å
    boxed.pbc = True
    a, b = predict(adapter, [ethanol]), predict(adapter, [boxed])
    assert float((a.energy - b.energy).abs().max()) < TOL
    assert float((a.forces - b.forces).abs().max()) < TOL


def test_gradient_free_parameters_are_not_sampled(adapter, ethanol, cu_cell):
    assert set(adapter.frozen_parameters) == GRADIENT_FREE
    params = dict(adapter.core.named_parameters())
    assert len(params) == 130 and all(not params[n].requires_grad for n in GRADIENT_FREE)
    model = build_bayesian_model(adapter)
    sampled = set(model.trainable_state())
    assert not {f"core.{n}" for n in GRADIENT_FREE} & sampled
    assert len(sampled) == 130 - 7 + len(list(model.head.parameters()))
    # every sampled core parameter does get a gradient from energy, forces and features
    batch = adapter.collate([adapter.prepare(a) for a in (ethanol, cu_cell)])
    pred = model(batch, False, True)
    loss = pred.energy.sum() + pred.forces.pow(2).sum() + pred.force_sigma.sum()
    grads = torch.autograd.grad(loss, [p for n, p in model.core.named_parameters()
                                       if p.requires_grad], allow_unused=True)
    assert all(g is not None and bool(g.any()) for g in grads)


def test_no_stress_head(adapter, cu_cell):
    assert predict(adapter, [cu_cell], compute_stress=True).stress is None
    cu_cell.calc = EMT()
    cu_cell.get_stress()
    batch = adapter.collate([attach_labels(adapter.prepare(cu_cell), cu_cell)])
    assert batch.energy is not None and batch.stress is None and batch.stress_mask is None
    with pytest.raises(ModelError, match="no stress head.*NVT"):
        adapter.require_stress()


def test_sghmc_chain_update_runs_and_moves_the_weights(adapter, tmp_path, cu_cell, al_cell):
    frames = []
    for atoms in (cu_cell, al_cell):
        atoms.calc = EMT()
        atoms.get_forces()
        atoms.get_stress()  # periodic, stress-labelled data: the stress term is left out
        frames.append(atoms)
    ase.io.write(tmp_path / "labels.extxyz", frames, format="extxyz")
    config = SGHMCConfig(n_steps=4, batch_size=2, step_size=adapter.defaults.step_size,
                         noise_off_steps=1, noise_ramp_steps=1)  # fmt: skip
    [path] = init_chain_files(adapter, tmp_path / "chains", 1, 5, config, adapter.defaults.sigma_tl)
    before = load_sample(path)
    e_pre = float(predict(adapter, [frames[0]]).energy[0])
    job = ChainJob(index=0, chain_path=str(path), labels_path=str(tmp_path / "labels.extxyz"),
                   n_labels=2, model=SPEC, energy_offset_eV=e_pre - frames[0].get_potential_energy(),
                   energy_sigma_eV=0.01)  # fmt: skip
    stats = update_chain_file(job)
    after = load_sample(path)
    assert stats["n_steps"] == 4 and stats["n_retries"] == 0 and np.isfinite(stats["final_loss"])
    assert read_chain_header(path)["n_updates"] == 1
    assert set(after) == set(before) and not {f"core.{n}" for n in GRADIENT_FREE} & set(after)
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(moved) > 0.9 * len(before)  # SGHMC moves (almost) every sampled tensor


def _hydra_key(key: str) -> str:
    key = key[len("module."):]
    if key.startswith(("energy_block.", "force_block.")):
        return f"module.output_heads.{'energy' if key[0] == 'e' else 'forces'}.{key}"
    return f"module.backbone.{key}"


def save_fairchem_checkpoint(model: torch.nn.Module, path, normalizers: dict, *,
                             hydra: bool = False, ema: list | None = None) -> None:
    """Write a checkpoint as fairchem's trainer does (``BaseTrainer.save``: DataParallel
    ``module.`` prefix, config, normalizers); ``hydra`` renames the weights and the config as
    fairchem's ``eqv2_to_eqv2_hydra.py`` does for the OMat24-style models."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    model_cfg = {"name": "equiformer_v2", "use_pbc": True, "regress_forces": True,
                 "otf_graph": True, **tiny_kwargs()}  # fmt: skip
    if hydra:
        state = {_hydra_key(k): v for k, v in state.items()}
        backbone = {k: v for k, v in model_cfg.items() if k != "name"}
        model_cfg = {"name": "hydra", "backbone": {"model": "equiformer_v2_backbone", **backbone},
                     "heads": {"energy": {"module": "equiformer_v2_energy_head"},
                               "forces": {"module": "equiformer_v2_force_head"}}}  # fmt: skip
    config = {"trainer": "ocp", "model": model_cfg, "task": {"dataset": "lmdb"},
              "dataset": {"src": "train.lmdb", "format": "lmdb"}, "optim": {"batch_size": 8}}
    torch.save({"epoch": 1, "step": 10, "state_dict": state, "normalizers": normalizers,
                "config": config, "val_metrics": None, "amp": None,
                "ema": {"shadow_params": ema, "decay": 0.999, "num_updates": 10} if ema else None},
               path)  # fmt: skip


def test_checkpoint_file_round_trip(fc, tmp_path, cu_cell, ethanol):
    from fairchem.core.modules.normalizer import Normalizer

    model = fresh_tiny(fc)
    e_norm, f_norm = Normalizer(mean=-0.7554, std=2.8873), Normalizer(mean=0.0, std=2.8873)
    normalizers = {"target": e_norm.state_dict(), "grad_target": f_norm.state_dict()}
    save_fairchem_checkpoint(model, tmp_path / "flat.pt", normalizers)
    save_fairchem_checkpoint(model, tmp_path / "hydra.pt", normalizers, hydra=True)
    flat = load_adapter(dataclasses.replace(SPEC, source=str(tmp_path / "flat.pt")))
    hydra = load_adapter(dataclasses.replace(SPEC, source=str(tmp_path / "hydra.pt")))
    for atoms in (cu_cell, ethanol):
        ref = fairchem_call(model, atoms)
        energy, forces = e_norm.denorm(ref["energy"]), f_norm.denorm(ref["forces"])
        for ad in (flat, hydra):
            pred = predict(ad, [atoms])
            assert abs(float(pred.energy[0] - energy[0])) < 3 * TOL  # eV, std 2.9
            assert float((pred.forces - forces).abs().max()) < 3 * TOL
    assert set(flat.frozen_parameters) == GRADIENT_FREE


def test_training_checkpoint_predicts_with_its_ema_weights(fc, tmp_path, cu_cell):
    model = fresh_tiny(fc)
    ema = [p.detach() + 0.01 for p in model.parameters() if p.requires_grad]
    save_fairchem_checkpoint(model, tmp_path / "train.pt", {}, ema=ema)
    ad = load_adapter(dataclasses.replace(SPEC, source=str(tmp_path / "train.pt")))
    with torch.no_grad():
        for p, value in zip([p for p in model.parameters() if p.requires_grad], ema, strict=True):
            p.copy_(value)
    ref = fairchem_call(model, cu_cell)
    pred = predict(ad, [cu_cell])
    assert float((pred.forces - ref["forces"]).abs().max()) < TOL


def test_checkpoints_of_other_models_raise_model_error(fc, tmp_path):
    save_fairchem_checkpoint(fresh_tiny(fc), tmp_path / "flat.pt", {})
    ckpt = torch.load(tmp_path / "flat.pt", weights_only=False)
    ckpt["config"]["model"]["num_layers"] = 3  # the config no longer fits the weights
    torch.save(ckpt, tmp_path / "mismatch.pt")
    with pytest.raises(ModelError, match=r"do not fit.*missing \['blocks\.2"):
        load_adapter(dataclasses.replace(SPEC, source=str(tmp_path / "mismatch.pt")))
    ckpt["config"]["model"]["name"] = "gemnet_oc"
    torch.save(ckpt, tmp_path / "gemnet.pt")
    with pytest.raises(ModelError, match="'gemnet_oc' model, not EquiformerV2"):
        load_adapter(dataclasses.replace(SPEC, source=str(tmp_path / "gemnet.pt")))


def test_bad_inputs_raise_typed_errors(adapter, tmp_path):
    with pytest.raises(ConfigurationError, match="float32 only"):
        load_adapter(dataclasses.replace(SPEC, dtype="float64"))
    with pytest.raises(ConfigurationError, match="neither 'tiny' nor an existing checkpoint"):
        load_adapter(dataclasses.replace(SPEC, source=str(tmp_path / "missing.pt")))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not a fairchem checkpoint"):
        load_adapter(dataclasses.replace(SPEC, source=str(tmp_path / "other.pt")))
    with pytest.raises(ConfigurationError, match="unknown tiny-EquiformerV2 options"):
        load_adapter(dataclasses.replace(SPEC, options=(("channels", 8),)))
    with pytest.raises(ModelError, match=r"atomic numbers 1\.\.89; got \[95\]"):
        adapter.check_atoms(Atoms("Am", positions=[[0, 0, 0]]))
    with pytest.raises(ModelError, match="cell with volume > 0"):
        adapter.check_atoms(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], pbc=True))


def test_npt_with_a_model_without_stress_is_refused_before_the_run(cu_cell):
    from otfparsl.preflight import check_run
    from otfparsl.settings import RunSettings

    def settings(ensemble):
        return RunSettings.from_dict({
            "structure": "unused.xyz", "model": {"family": "equiformer", "source": "tiny"},
            "labeler": {"kind": "ase", "options": {"name": "emt"}},
            "md": {"segments": [{"ensemble": ensemble, "temperature_K": 300, "duration_fs": 10}]},
        })  # fmt: skip

    check_run(settings("langevin"), cu_cell)
    with pytest.raises(ModelError, match="no stress head"):
        check_run(settings("npt"), cu_cell)
