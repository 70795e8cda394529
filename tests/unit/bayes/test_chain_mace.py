"""Chain updates on a tiny in-process MACE with EMT labels of Cu/Al cells.

Reduced lengths for test time (the method uses 2000 steps per update): one update of 200
steps with the noise schedule scaled by the same fractions (off 40, ramp 10), and eight
50-step chains (off 10, ramp 3) for the ensemble check. gamma_0 and sigma_TL are MACE's
published defaults. Runs single-threaded: on a busy 2-core machine, multi-threaded CPU
kernels of this tiny model spin-wait and get ~50x slower.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mace")

from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402

from otfparsl.bayes import (  # noqa: E402
    BayesianModel,
    Chain,
    SGHMCConfig,
    SigmaHead,
    TransferPrior,
)
from otfparsl.models import ModelSpec, attach_labels, load_adapter  # noqa: E402
from otfparsl.units import FORCE_SIGMA_BASE_EV_PER_A, STRESS_SIGMA_EV_PER_A3  # noqa: E402

ENERGY_SIGMA_EV = 0.01  # 0.1 K with K = 0.1 eV


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    adapter = load_adapter(ModelSpec(family="mace", source="tiny"))
    structures = []
    for k in range(4):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms[0].symbol = "Al"
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_stress()
        structures.append(atoms)
    head = SigmaHead(adapter.n_features, adapter.defaults.head_hidden, FORCE_SIGMA_BASE_EV_PER_A)
    model = BayesianModel(adapter.core, head)
    prepared = [adapter.prepare(a) for a in structures]
    e_pre = float(model(adapter.collate(prepared[:1]), True, False).energy[0])
    offset = e_pre - structures[0].get_potential_energy()  # method.md section 6
    data = [attach_labels(p, a, offset) for p, a in zip(prepared, structures, strict=False)]
    prior = TransferPrior.from_model(model, adapter.defaults.sigma_tl)
    yield adapter, model, prior, data, model.trainable_state()
    torch.set_num_threads(threads)


def _forces(model, adapter, data):
    batch = adapter.collate(data)
    return model(batch, True, False).forces.detach(), batch.forces


def _rmse(a, b):
    return float(((a - b) ** 2).mean().sqrt())


@pytest.mark.slow
def test_one_update_lowers_force_error_on_its_data(setup):
    adapter, model, prior, data, pretrained = setup
    model.load_trainable_state(pretrained)
    before = _rmse(*_forces(model, adapter, data))
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    cfg = SGHMCConfig(n_steps=200, noise_off_steps=40, noise_ramp_steps=10,
                      step_size=adapter.defaults.step_size)
    stats = Chain(model, prior, cfg, seed=0).update(
        data, adapter.collate, ENERGY_SIGMA_EV, STRESS_SIGMA_EV_PER_A3, True)
    after = _rmse(*_forces(model, adapter, data))
    assert stats.n_steps == 200 and stats.n_retries == 0
    assert after < 0.75 * before  # ~0.60 -> ~0.32 eV/Å
    # buffers (E0s, scale/shift) are neither sampled nor changed
    assert any("atomic_energies" in n for n in buffers) and not set(buffers) & set(pretrained)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())


@pytest.mark.slow
def test_eight_chains_disagree_but_agree_on_average(setup):
    adapter, model, prior, data, pretrained = setup
    model.load_trainable_state(pretrained)
    f_pre, f_ref = _forces(model, adapter, data)
    cfg = SGHMCConfig(n_steps=50, noise_off_steps=10, noise_ramp_steps=3,
                      step_size=adapter.defaults.step_size)
    members = []
    for seed in range(8):
        model.load_trainable_state(pretrained)
        Chain(model, prior, cfg, seed=seed).update(
            data, adapter.collate, ENERGY_SIGMA_EV, STRESS_SIGMA_EV_PER_A3, True)
        members.append(_forces(model, adapter, data)[0])
    f = torch.stack(members)
    spread = float(f.std(0).pow(2).mean().sqrt())
    shift = float((f.mean(0) - f_pre).pow(2).mean().sqrt())
    assert spread > 1e-6  # different seeds give different samples
    assert spread < 0.2 * shift  # ~1.4e-4 vs ~7.7e-3 eV/Å: they move the same way
    assert all(_rmse(m, f_ref) < _rmse(f_pre, f_ref) for m in members)
