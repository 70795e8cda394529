"""Compiled chain gradients: the data term's gradient as one ``torch.compile``d function.

A chain step needs ĝ, the gradient of ``-(1/B) Σ_b w_b log p(y_b | θ)`` w.r.t. all weights θ,
where the likelihood contains the forces -dE/dr: a double derivative. The autograd path
(:func:`~otfparsl.bayes.chain.minibatch_objective` + ``torch.autograd.grad``) builds that graph
anew in every step. Here the same quantity is written as a pure function of the flat weight
buffer (forces by ``torch.func.grad`` inside, ĝ by ``torch.func.grad_and_value`` outside),
traced once per process by ``torch.compile`` and run as generated kernels (issue 10: 2-3x per
gradient for MACE on CPU).

A core offers it by a method ``functional_forward()`` that returns its forward as a pure
function ``f(params, inputs, compute_stress) -> Prediction`` (MACE:
:meth:`otfparsl.models.mace.MACECore.functional_forward`). The compiled
gradient is **checked**: at the first step of every update, and at the first minibatch of a
shape that compiles another graph (one structure vs several), it is compared with the autograd
gradient of the same minibatch; a difference above the dtype's tolerance, or a failure to
compile, switches this process back to autograd with a warning in the log (the fallback of
:func:`choose_gradients`).

Compilation costs time once per process and model (minutes cold on a small CPU, about a minute
with a warm cache; docs/performance.md section 6). Inductor's cache is kept in
``$XDG_CACHE_HOME/otfparsl/inductor`` (``~/.cache/...``) unless ``TORCHINDUCTOR_CACHE_DIR`` is
set, so it survives reboots and is shared by the nodes of a cluster with one home.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from otfparsl.bayes.likelihood import log_likelihood
from otfparsl.bayes.model import BayesianModel
from otfparsl.bayes.types import Batch

logger = logging.getLogger(__name__)

#: ``"auto"`` compiles only updates of at least this many steps: compiling the tiny MACE costs
#: 67 s (warm cache) to 328 s (cold) per worker on a 2-core CPU and saves 17.6 ms per step
#: (docs/performance.md section 6): 4 chains x 1000 steps per worker pay back a warm compile in
#: one update; short updates (tests, quick demos) would not.
AUTO_MIN_STEPS = 1000

#: Largest ``||ĝ_compiled - ĝ_autograd|| / ||ĝ_autograd||`` accepted by the check, per dtype.
CHECK_TOLERANCE: dict[torch.dtype, float] = {torch.float64: 1e-8, torch.float32: 1e-3}


def supports_compiled(model: BayesianModel) -> bool:
    """True when the model's core can give its prediction as a pure function of its weights."""
    core = model.core
    return callable(getattr(core, "functional_forward", None)) and getattr(core, "traceable", None) is not None


def choose_gradients(mode: str, model: BayesianModel, sampler: str, n_steps: int) -> tuple[str, str]:
    """Return ``("compiled" | "autograd", why)`` for a chain update.

    ``"compiled"`` needs a core with ``functional_forward`` and the flat sampler (the reference
    sampler differentiates the prior through autograd); ``"auto"`` also needs
    :data:`AUTO_MIN_STEPS` steps per update. A process whose compiled gradient failed its check
    or its compilation uses autograd from then on.
    """
    if mode == "autograd":
        return "autograd", "bayes.gradients is 'autograd'"
    if not supports_compiled(model):
        return "autograd", f"{type(model.core).__name__} has no compiled gradients (only MACE has)"
    if sampler != "flat":
        return "autograd", "the reference sampler differentiates the prior through autograd"
    if mode == "auto" and n_steps < AUTO_MIN_STEPS:
        return "autograd", f"{n_steps} steps per update < {AUTO_MIN_STEPS}: compiling would not pay"
    if _FALLBACK.reason is not None:
        return "autograd", f"compiled gradients were switched off in this process: {_FALLBACK.reason}"
    return "compiled", "compiled chain gradients (torch.compile of torch.func)"


@dataclass
class _Fallback:
    reason: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def disable(self, reason: str) -> None:
        with self.lock:
            if self.reason is None:
                self.reason = reason
                logger.warning("compiled chain gradients off in this process, autograd from now on: %s", reason)


_FALLBACK = _Fallback()
_CACHE: dict[tuple, Callable] = {}
_CACHE_LOCK = threading.Lock()


def use_persistent_cache() -> Path:
    """Point inductor's cache to a directory that persists (unless the user set one); return it."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(base / "otfparsl" / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


class CompiledGradient:
    """ĝ and the data term of one minibatch from the flat weight buffer, compiled once per process.

    Parameters
    ----------
    model
        The chain's model (its core offers ``functional_forward``); only its structure is used:
        the weights come from ``theta`` at each call.
    names, shapes
        The trainable parameters in the order of the flat buffer (the chain's order).
    energy_sigma_eV, stress_sigma_eV_per_A3, compute_stress
        As in :func:`~otfparsl.bayes.chain.minibatch_objective`.
    backend
        ``torch.compile`` backend: ``"inductor"`` (generated kernels) or ``"eager"`` (traced,
        not code-generated: the same function for tests, without the compile time).
    """

    def __init__(
        self,
        model: BayesianModel,
        names: Sequence[str],
        shapes: Sequence[torch.Size],
        energy_sigma_eV: float,
        stress_sigma_eV_per_A3: float,
        compute_stress: bool,
        backend: str = "inductor",
    ) -> None:
        head = model.head
        key = (
            model.core.traceable(), head.n_features, tuple(m.out_features for m in head.mlp
            if isinstance(m, torch.nn.Linear)), head.base_sigma, tuple(names),
            tuple(tuple(s) for s in shapes), float(energy_sigma_eV), float(stress_sigma_eV_per_A3),
            bool(compute_stress), backend,
        )  # fmt: skip
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = (_build(model, list(names), list(shapes), energy_sigma_eV,
                                      stress_sigma_eV_per_A3, compute_stress, backend), set())
            self._fn, self._checked = _CACHE[key]

    @staticmethod
    def _shape_class(batch: Batch) -> int:
        # torch.compile specialises sizes 0 and 1: one structure is another graph than several
        return min(batch.n_structures, 2)

    def shape_checked(self, batch: Batch) -> bool:
        """True when this process has checked the compiled graph that serves ``batch``."""
        return self._shape_class(batch) in self._checked

    def mark_checked(self, batch: Batch) -> None:
        """Record that the graph serving ``batch`` passed the check against autograd."""
        self._checked.add(self._shape_class(batch))

    def __call__(
        self, theta: torch.Tensor, batch: Batch, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(data_loss, ĝ_data)`` for the flat weights ``theta``.

        ``weights`` are the minibatch weights already divided by the number of draws B, so
        ``data_loss = -Σ_s weights_s log p(y_s | θ)`` and ``ĝ_data`` its ``(n_weights,)`` gradient.
        """
        labels = (batch.energy, batch.forces, batch.stress, batch.stress_mask)
        grad, loss = self._fn(theta, batch.inputs, batch.structure_index, labels,
                              weights.to(theta.dtype))
        return loss.detach(), grad.detach()


def _build(
    model: BayesianModel,
    names: list[str],
    shapes: list[torch.Size],
    energy_sigma_eV: float,
    stress_sigma_eV_per_A3: float,
    compute_stress: bool,
    backend: str,
) -> Callable:
    """Return the compiled ``(theta, inputs, structure_index, labels, weights) -> (ĝ, loss)``."""
    use_persistent_cache()
    forward, head = model.core.functional_forward(), model.head
    sizes = [math.prod(s) for s in shapes]
    core_names = [n.removeprefix("core.") if n.startswith("core.") else None for n in names]
    head_names = [n.removeprefix("head.") if n.startswith("head.") else None for n in names]

    def data_loss(theta: torch.Tensor, inputs: Any, structure_index: torch.Tensor,
                  labels: tuple, weights: torch.Tensor) -> torch.Tensor:
        views = [v.view(s) for v, s in zip(torch.split(theta, sizes), shapes, strict=True)]
        core_params = {n: v for n, v in zip(core_names, views, strict=True) if n is not None}
        head_params = {n: v for n, v in zip(head_names, views, strict=True) if n is not None}
        pred = forward(core_params, inputs, compute_stress)
        sigma = torch.func.functional_call(head, head_params, (pred.features,))
        energy, forces, stress, stress_mask = labels
        batch = Batch(inputs=inputs, structure_index=structure_index, n_structures=0,
                      energy=energy, forces=forces, stress=stress, stress_mask=stress_mask)
        ll = log_likelihood(replace(pred, force_sigma=sigma), batch, energy_sigma_eV,
                            stress_sigma_eV_per_A3)
        return -(weights * ll).sum()

    return torch.compile(torch.func.grad_and_value(data_loss), dynamic=True, fullgraph=True,
                         backend=backend)


def gradient_mismatch(compiled: torch.Tensor, reference: torch.Tensor) -> float:
    """Return ``||compiled - reference|| / ||reference||`` (0 when both are zero)."""
    norm = float(torch.linalg.vector_norm(reference))
    diff = float(torch.linalg.vector_norm(compiled - reference))
    return diff / norm if norm > 0.0 else diff


def disable_compiled(reason: str) -> None:
    """Switch compiled gradients off in this process (logged once); autograd from then on."""
    _FALLBACK.disable(reason)


def compiled_disabled_reason() -> str | None:
    """Why compiled gradients are off in this process, or None."""
    return _FALLBACK.reason


def reset_fallback() -> None:
    """Allow compiled gradients again in this process (tests)."""
    with _FALLBACK.lock:
        _FALLBACK.reason = None
