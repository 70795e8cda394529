"""Compiled chain gradients as a run builds them: inductor code, float32, stress, varying batches.

``long``: inductor compiles the tiny MACE's gradient in minutes on a cold cache (2 cores), once
per minibatch shape class (one and several structures). The same program traced without code
generation is compared step by step in tests/unit/bayes/test_functional.py.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

pytest.importorskip("mace")

from otfparsl.bayes import Chain, SGHMCConfig, TransferPrior, functional  # noqa: E402
from otfparsl.models import ModelSpec, attach_labels, load_adapter  # noqa: E402
from otfparsl.testing import emt_copper_frames  # noqa: E402
from otfparsl.training import build_bayesian_model  # noqa: E402
from otfparsl.units import STRESS_SIGMA_EV_PER_A3  # noqa: E402

pytestmark = [pytest.mark.long, pytest.mark.slow]

# batch 2 of 4 structures: minibatches of one and of two distinct structures (two graph shapes)
CONFIG = SGHMCConfig(n_steps=30, noise_off_steps=6, noise_ramp_steps=3, batch_size=2, step_size=1e-3)


def _cells(adapter):
    frames = emt_copper_frames(4, seed=1, stress=True)
    return [attach_labels(adapter.prepare(a), a, 20.0) for a in frames]


def _update(adapter, data, gradients: str) -> torch.Tensor:
    model = build_bayesian_model(adapter, copy.deepcopy(adapter.core))
    config = SGHMCConfig(**{**CONFIG.__dict__, "gradients": gradients})
    chain = Chain(model, TransferPrior.from_model(model, adapter.defaults.sigma_tl), config, seed=5)
    chain.update(data, adapter.collate, 0.01, STRESS_SIGMA_EV_PER_A3, True, max_retries=0)
    return torch.cat([v.reshape(-1) for v in chain.sample().values()])


def test_inductor_compiled_update_equals_autograd_update(caplog):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    functional.reset_fallback()
    try:
        adapter = load_adapter(ModelSpec(family="mace", source="tiny", dtype="float32"))
        data = _cells(adapter)
        start = torch.cat([p.detach().reshape(-1) for p in adapter.core.parameters()])
        reference = _update(adapter, data, "autograd")
        with caplog.at_level(logging.INFO, logger="otfparsl.bayes"):
            compiled = _update(adapter, data, "compiled")
            again = _update(adapter, data, "compiled")  # the second update reuses the compiled code
    finally:
        torch.set_num_threads(threads)
    assert functional.compiled_disabled_reason() is None
    # each update's first step, plus the first minibatch of the other graph (one structure/two)
    assert caplog.text.count("checked against autograd") >= 2
    assert torch.equal(compiled, again)
    moved = float(torch.linalg.vector_norm(reference[: start.numel()] - start))
    difference = float(torch.linalg.vector_norm(compiled - reference))
    assert moved > 1e-3
    # float32: rounding differences, amplified over 30 SGHMC steps, stay far below the move
    assert difference < 1e-2 * moved
