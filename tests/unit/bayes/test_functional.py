"""Compiled chain gradients (otfparsl.bayes.functional): equal to autograd's, checked, with fallback.

The function a run compiles with inductor is traced here with ``backend="eager"`` (the same
torch.func program, dynamo-traced, without code generation: ~40 s instead of minutes); the
inductor build itself is tested in tests/integration/test_compiled_gradients.py (``long``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import pytest
import torch

pytest.importorskip("mace")

from ase.build import molecule  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

from otfparsl.bayes import (  # noqa: E402
    Chain,
    SGHMCConfig,
    TransferPrior,
    functional,  # noqa: E402
)
from otfparsl.bayes.functional import AUTO_MIN_STEPS, choose_gradients  # noqa: E402
from otfparsl.errors import ConfigurationError  # noqa: E402
from otfparsl.models import ModelSpec, attach_labels, load_adapter  # noqa: E402
from otfparsl.models.mace import traceable_mace  # noqa: E402
from otfparsl.testing import emt_copper_frames  # noqa: E402
from otfparsl.training import build_bayesian_model  # noqa: E402
from otfparsl.units import STRESS_SIGMA_EV_PER_A3  # noqa: E402

ENERGY_SIGMA_EV = 0.01
STEPS = SGHMCConfig(n_steps=12, noise_off_steps=4, noise_ramp_steps=2, batch_size=5,
                    step_size=1e-3)


@pytest.fixture(autouse=True)
def _one_thread_and_clean_fallback():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    functional.reset_fallback()
    yield
    functional.reset_fallback()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cells():
    """Tiny MACE (float64) and 3 EMT-labelled Cu cells with stress (periodic: stress path)."""
    adapter = load_adapter(ModelSpec(family="mace", source="tiny"))
    data = [attach_labels(adapter.prepare(a), a, 20.0) for a in emt_copper_frames(3, stress=True)]
    return adapter, data, True


@pytest.fixture(scope="module")
def molecules():
    """Tiny MACE (float32) and 3 rattled ethanol molecules labelled with synthetic values."""
    adapter = load_adapter(ModelSpec(family="mace", source="tiny", dtype="float32"))
    data = []
    for k in range(3):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=k)
        gen = torch.Generator().manual_seed(k)
        atoms.calc = SinglePointCalculator(
            atoms, energy=-11.0 + 0.1 * k,
            forces=torch.randn((len(atoms), 3), generator=gen, dtype=torch.float64).numpy())
        data.append(attach_labels(adapter.prepare(atoms), atoms))
    return adapter, data, False


def _chain(adapter, gradients: str, backend: str = "eager") -> Chain:
    model = build_bayesian_model(adapter, copy.deepcopy(adapter.core))
    chain = Chain(model, TransferPrior.from_model(model, adapter.defaults.sigma_tl),
                  dataclasses.replace(STEPS, gradients=gradients), seed=7)
    chain.compile_backend = backend
    return chain


def _update(chain, case):
    adapter, data, periodic = case
    chain.update(data, adapter.collate, ENERGY_SIGMA_EV, STRESS_SIGMA_EV_PER_A3, periodic,
                 max_retries=0)
    return torch.cat([v.reshape(-1) for v in chain.sample().values()])


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["cells", pytest.param("molecules", marks=pytest.mark.long)])
def test_compiled_chain_follows_the_autograd_chain(case, request, caplog):
    """Same minibatches and noise: the compiled update ends where autograd's does, to rounding.

    Cells: float64 with stress labels (displacement derivative); molecules: float32 (``long``:
    each case traces for about a minute).
    """
    data = request.getfixturevalue(case)
    start = _chain(data[0], "autograd").sample()
    reference = _update(_chain(data[0], "autograd"), data)
    with caplog.at_level(logging.INFO, logger="otfparsl.bayes.chain"):
        compiled = _update(_chain(data[0], "compiled"), data)
    assert functional.compiled_disabled_reason() is None
    assert "gradients: compiled" in caplog.text and "checked against autograd" in caplog.text
    moved = _relative(reference, torch.cat([v.reshape(-1) for v in start.values()]))
    tolerance = 1e-10 if data[0].dtype == torch.float64 else 1e-4
    assert _relative(compiled, reference) < tolerance * max(moved, 1e-6) + tolerance
    assert moved > 1e-6  # the chains really moved


@pytest.mark.slow
def test_a_wrong_compiled_gradient_falls_back_to_autograd(cells, monkeypatch, caplog):
    """The check at the first step catches a gradient off by 1 %; the update is autograd's."""
    real_call = functional.CompiledGradient.__call__

    def off_by_one_percent(self, theta, batch, weights):
        loss, grad = real_call(self, theta, batch, weights)
        return loss, grad * 1.01

    monkeypatch.setattr(functional.CompiledGradient, "__call__", off_by_one_percent)
    reference = _update(_chain(cells[0], "autograd"), cells)
    with caplog.at_level(logging.WARNING, logger="otfparsl.bayes.functional"):
        got = _update(_chain(cells[0], "compiled"), cells)
    assert torch.equal(got, reference)  # autograd from the first step, same minibatches
    assert "differs from autograd's by 1.00e-02" in functional.compiled_disabled_reason()
    assert "compiled chain gradients off in this process" in caplog.text
    later, why = choose_gradients("compiled", _chain(cells[0], "compiled").model, "flat", 2000)
    assert later == "autograd" and "switched off" in why


def test_a_failing_compilation_falls_back_to_autograd(cells, monkeypatch):
    def fails(self, theta, batch, weights):
        raise RuntimeError("inductor: no C++ compiler\nmore lines")

    monkeypatch.setattr(functional.CompiledGradient, "__call__", fails)
    reference = _update(_chain(cells[0], "autograd"), cells)
    got = _update(_chain(cells[0], "compiled"), cells)
    assert torch.equal(got, reference)
    assert functional.compiled_disabled_reason() == "RuntimeError: inductor: no C++ compiler"


def test_choice_of_gradients(cells, toy):
    mace = _chain(cells[0], "auto").model
    assert choose_gradients("auto", mace, "flat", AUTO_MIN_STEPS)[0] == "compiled"
    assert choose_gradients("auto", mace, "flat", AUTO_MIN_STEPS - 1)[0] == "autograd"
    assert choose_gradients("compiled", mace, "flat", 10)[0] == "compiled"
    assert choose_gradients("compiled", mace, "reference", 2000)[0] == "autograd"
    assert choose_gradients("autograd", mace, "flat", 2000)[0] == "autograd"
    from otfparsl.bayes import BayesianModel, SigmaHead

    other = BayesianModel(toy.Core(torch.zeros(3, dtype=torch.float64)), SigmaHead(2, (4,), 0.1))
    mode, why = choose_gradients("compiled", other, "flat", 2000)
    assert mode == "autograd" and "no compiled gradients" in why
    with pytest.raises(ConfigurationError, match="gradients must be one of"):
        SGHMCConfig(gradients="jit")


def test_traceable_model_has_no_torchscript_inside(cells):
    """The TorchScript pitfall (issue 10): the compiled path never differentiates TorchScript.

    The adapter's own model runs e3nn's TorchScript code; the traceable copy has none and the
    same parameter names.
    """
    adapter = cells[0]
    scripted = [m for m in adapter.core.model.modules() if isinstance(m, torch.jit.ScriptModule)]
    traceable = traceable_mace(adapter.spec)
    assert scripted  # what the pitfall needs
    assert not [m for m in traceable.modules() if isinstance(m, torch.jit.ScriptModule)]
    assert [n for n, _ in traceable.named_parameters()] == [
        n.removeprefix("model.") for n, _ in adapter.core.named_parameters()]
    assert traceable_mace(adapter.spec) is traceable  # built once per process


def test_a_run_chain_file_carries_its_gradients_to_the_worker(tmp_path, monkeypatch, caplog):
    """settings -> SGHMCConfig -> chain file -> update task: the worker uses the chain's choice."""
    import ase.io

    from otfparsl.from_settings import sampler_config
    from otfparsl.settings import BayesSettings
    from otfparsl.training import ChainJob, init_chain_files
    from otfparsl.workflow.tasks import update_chain

    assert BayesSettings().gradients == "auto"  # the run default; SGHMCConfig's is autograd
    spec = ModelSpec(family="mace", source="tiny")
    adapter = load_adapter(spec)
    bayes = BayesSettings(gradients="compiled", n_steps=6, noise_off_steps=2, noise_ramp_steps=1)
    [path] = init_chain_files(adapter, tmp_path / "chains", 1, 5,
                              sampler_config(bayes, adapter.defaults), 0.5)
    ase.io.write(tmp_path / "labels.extxyz", emt_copper_frames(1, stress=True), format="extxyz")

    def fails(self, theta, batch, weights):
        raise RuntimeError("compiler missing")

    monkeypatch.setattr(functional.CompiledGradient, "__call__", fails)
    job = ChainJob(index=0, chain_path=str(path), labels_path=str(tmp_path / "labels.extxyz"),
                   n_labels=1, model=spec, energy_offset_eV=0.0, energy_sigma_eV=0.01)
    with caplog.at_level(logging.INFO, logger="otfparsl.bayes"):
        stats = update_chain(job)
    assert stats["n_steps"] == 6
    assert "gradients: compiled" in caplog.text
    assert functional.compiled_disabled_reason() == "RuntimeError: compiler missing"


def test_a_model_file_is_rebuilt_without_torchscript(tmp_path, cells):
    """A .model file unpickles with e3nn's TorchScript whatever the setting: it is rebuilt from
    its config and state, and predicts what the loaded model predicts."""
    adapter = cells[0]
    path = tmp_path / "tiny.model"
    torch.save(adapter.core.model, path)
    spec = ModelSpec(family="mace", source=str(path))
    loaded = load_adapter(spec)
    traceable = traceable_mace(spec)
    assert [m for m in loaded.core.model.modules() if isinstance(m, torch.jit.ScriptModule)]
    assert not [m for m in traceable.modules() if isinstance(m, torch.jit.ScriptModule)]
    inputs = adapter.collate(cells[1][:2]).inputs
    want = loaded.core.model(dict(inputs), compute_force=True)
    got = traceable(dict(inputs), compute_force=True)
    torch.testing.assert_close(got["energy"], want["energy"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["forces"], want["forces"], rtol=1e-12, atol=1e-12)
