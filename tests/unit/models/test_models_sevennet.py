"""SevenNet-0 adapter (the paper's NequIP family, weights in the sevenn wheel): physics contracts,
agreement with sevenn's own calculator, one chain update, run YAML."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

pytest.importorskip("sevenn")

from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402

from otfparsl.errors import ConfigurationError, ModelError  # noqa: E402
from otfparsl.models import ModelAdapter, family_defaults, load_adapter  # noqa: E402
from otfparsl.models.base import ModelSpec  # noqa: E402
from otfparsl.testing import (  # noqa: E402
    check_batched_equals_single,
    check_forces_are_gradient,
    check_rotation_invariance_of_features,
    check_stress_is_strain_derivative,
    predict,
)

#: Trainable parameters of SevenNet-0 (11Jul2024); its 183 fixed scale/shift/denominator values
#: are buffers.
SEVENNET_0_SAMPLED_PARAMETERS = 842_440


def _load_offline(dtype: str):
    """Load SevenNet-0 with every network connection refused."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during SevenNet load")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        return load_adapter(ModelSpec(family="sevennet", source="7net-0", dtype=dtype))


@pytest.fixture(scope="module")
def sn32():
    """SevenNet-0 in its native float32, loaded with the network refused."""
    return _load_offline("float32")


@pytest.fixture(scope="module")
def sn64():
    """SevenNet-0 cast to float64, for tight finite-difference checks."""
    return _load_offline("float64")


@pytest.fixture
def si_rattled() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(stdev=0.05, seed=4)
    return atoms


@pytest.fixture
def nacl_sheared() -> Atoms:
    """8-atom rock-salt NaCl, sheared by 3 % and rattled (seed 3)."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + [[0, 0.03, 0], [0, 0, 0], [0, 0, 0]]),
                   scale_atoms=True)
    atoms.rattle(stdev=0.05, seed=3)
    return atoms


def test_loads_offline_with_sampled_weights_and_invariant_features(sn32):
    assert isinstance(sn32, ModelAdapter)
    assert sn32.r_cut == 5.0 and len(sn32.type_map) == 89
    assert sn32.n_features == 128  # 128x0e into the readout MLP
    assert sum(p.numel() for p in sn32.core.parameters()) == SEVENNET_0_SAMPLED_PARAMETERS
    assert all(p.requires_grad and p.dtype == torch.float32 for p in sn32.core.parameters())
    buffers = dict(sn32.core.named_buffers())
    assert buffers["model.rescale_atomic_energy.shift"].shape == (89,)
    assert "model.0_convolution.denominator" in buffers
    assert sn32.defaults == family_defaults("sevennet")


def test_core_copies_and_pickles_like_a_module(sn32, ethanol):
    import copy
    import pickle

    copied = copy.deepcopy(sn32.core)
    restored = pickle.loads(pickle.dumps(sn32.core))
    inputs = sn32.collate([sn32.prepare(ethanol)]).inputs
    reference = sn32.core(inputs).energy
    assert torch.equal(copied(inputs).energy, reference)
    assert torch.equal(restored(inputs).energy, reference)


@pytest.mark.slow
def test_energy_forces_stress_equal_sevenn_calculator(sn32, ethanol, nacl_sheared):
    from sevenn.calculator import SevenNetCalculator

    calc = SevenNetCalculator("7net-0", device="cpu")
    for atoms in (ethanol, nacl_sheared):
        periodic = bool(all(atoms.pbc))
        pred = predict(sn32, [atoms], compute_stress=periodic)
        ref = atoms.copy()
        ref.calc = calc
        assert float(pred.energy[0]) == pytest.approx(ref.get_potential_energy(), abs=1e-4)
        assert np.abs(pred.forces.numpy() - ref.get_forces()).max() < 2e-5
        if periodic:
            assert np.abs(pred.stress[0].numpy() - ref.get_stress(voigt=False)).max() < 1e-6


def test_ethanol_energy_is_physical(sn32, ethanol):
    pred = predict(sn32, [ethanol])
    assert -50.0 < float(pred.energy[0]) < -43.0  # PBE ethanol: about -46.7 eV
    assert float(pred.forces.sum(0).abs().max()) < 1e-4  # translation invariance


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ethanol", "si_rattled"])
def test_forces_are_minus_energy_gradient(sn64, request, name):
    atoms = request.getfixturevalue(name)
    check_forces_are_gradient(sn64, atoms, delta=1e-4, tol=1e-6)


def test_stress_is_strain_derivative_ase_sign(sn64, nacl_sheared):
    check_stress_is_strain_derivative(sn64, nacl_sheared, delta=1e-4, tol=1e-7)
    compressed = bulk("Si", "diamond", a=5.43 * 0.97)
    stress = predict(sn64, [compressed], compute_stress=True).stress[0]
    assert float(torch.diagonal(stress).max()) < -1e-3  # compressed pushes out: negative


def test_batched_equals_single(sn32, sn64, ethanol, water, si_rattled, nacl_sheared):
    check_batched_equals_single(sn64, [si_rattled, nacl_sheared], tol=1e-10)  # with stress
    check_batched_equals_single(sn64, [ethanol, si_rattled, water], tol=1e-10)
    check_batched_equals_single(sn32, [ethanol, si_rattled, water], tol=2e-4)


def test_features_rotation_invariant(sn64, ethanol):
    check_rotation_invariance_of_features(sn64, ethanol, seed=5, tol=1e-8)


def test_unknown_element_and_bad_source_raise(sn32):
    with pytest.raises(ModelError, match=r"\['Po'\].*84"):
        sn32.prepare(Atoms("PoO", positions=[[0, 0, 0], [0, 0, 2.0]]))
    with pytest.raises(ConfigurationError, match="7net-0"):
        load_adapter(ModelSpec(family="sevennet", source="8net-9", dtype="float32"))
    with pytest.raises(ConfigurationError, match="dtype"):
        load_adapter(ModelSpec(family="sevennet", source="7net-0", dtype="float16"))


def test_run_yaml_selects_sevennet_with_nequip_defaults(tmp_path):
    from otfparsl.from_settings import make_calibrator, model_spec, sampler_config
    from otfparsl.settings import RunSettings

    run = tmp_path / "run.yaml"
    run.write_text(
        "structure: ethanol.xyz\n"
        "model: {family: sevennet, source: 7net-0}\n"
        "md: {segments: [{duration_fs: 10}]}\n"
    )
    settings = RunSettings.from_yaml(run)
    assert model_spec(settings.model) == ModelSpec(family="sevennet", source="7net-0",
                                                   dtype="float32")
    defaults = family_defaults(settings.model.family)
    assert sampler_config(settings.bayes, defaults).step_size == 1e-4
    calibrator = make_calibrator(settings, defaults)
    assert (calibrator.a, calibrator.b) == (3.0, 10.0)


@pytest.mark.slow
def test_one_chain_update_moves_weights_towards_the_labels(sn32):
    """20 SGHMC steps (noise off 4, ramp 2) on three EMT-labelled Cu3Al cells, float32."""
    from ase.calculators.emt import EMT

    from otfparsl.bayes import BayesianModel, Chain, SGHMCConfig, SigmaHead, TransferPrior
    from otfparsl.models import attach_labels
    from otfparsl.units import FORCE_SIGMA_BASE_EV_PER_A, STRESS_SIGMA_EV_PER_A3

    adapter = sn32
    structures = []
    for k in range(3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms[0].symbol = "Al"
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.get_stress()
        structures.append(atoms)
    head = SigmaHead(adapter.n_features, adapter.defaults.head_hidden, FORCE_SIGMA_BASE_EV_PER_A)
    model = BayesianModel(adapter.core, head)
    pretrained = model.trainable_state()
    prepared = [adapter.prepare(a) for a in structures]
    e_pre = float(model(adapter.collate(prepared[:1]), True, False).energy[0])
    offset = e_pre - structures[0].get_potential_energy()  # method.md section 6
    data = [attach_labels(p, a, offset) for p, a in zip(prepared, structures, strict=True)]
    prior = TransferPrior.from_model(model, adapter.defaults.sigma_tl)

    def force_rmse() -> float:
        batch = adapter.collate(data)
        return float((model(batch, True, False).forces - batch.forces).pow(2).mean().sqrt())

    try:
        before = force_rmse()
        cfg = SGHMCConfig(n_steps=20, noise_off_steps=4, noise_ramp_steps=2,
                          step_size=adapter.defaults.step_size)
        stats = Chain(model, prior, cfg, seed=0).update(
            data, adapter.collate, 0.01, STRESS_SIGMA_EV_PER_A3, True)
        after = force_rmse()
        moved = {n: float((p - pretrained[n]).abs().max())
                 for n, p in model.trainable_state().items()}
    finally:
        model.load_trainable_state(pretrained)  # the fixture is shared
    assert stats.n_steps == 20 and stats.n_retries == 0
    assert after < 0.85 * before  # ~0.12 -> ~0.09 eV/Å
    core_moved = [v for n, v in moved.items() if n.startswith("core.")]
    assert len(core_moved) == len(list(adapter.core.parameters()))
    assert min(core_moved) > 0  # every SevenNet weight tensor is sampled and moved
