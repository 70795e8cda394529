"""One SGHMC Markov chain: its state, one update per new label, and its file (method.md 3)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from otfparsl.bayes.flat import FlatSGHMC
from otfparsl.bayes.functional import (
    CHECK_TOLERANCE,
    CompiledGradient,
    choose_gradients,
    disable_compiled,
    gradient_mismatch,
)
from otfparsl.bayes.likelihood import log_likelihood
from otfparsl.bayes.model import BayesianModel
from otfparsl.bayes.prior import TransferPrior
from otfparsl.bayes.sghmc import (
    AMSGradSGHMC,
    SGHMCConfig,
    cosine_step_size,
    noise_temperature,
    sample_minibatch,
)
from otfparsl.bayes.types import Batch
from otfparsl.errors import ConfigurationError, OtfparslError, SamplerDiverged
from otfparsl.fileio import atomic_write

logger = logging.getLogger(__name__)

_FORMAT = "otfparsl.chain/1"
_CHECK_EVERY = 100


@dataclasses.dataclass(frozen=True)
class ChainUpdateStats:
    """Summary of one chain update.

    Attributes
    ----------
    n_steps
        SGHMC steps run in the successful attempt.
    final_loss
        Last minibatch estimate of ``U(θ)/N`` (dimensionless, per datum).
    mean_loss_last_100
        Mean of that estimate over the last (up to) 100 steps.
    wall_time_s
        Wall time of the whole update in seconds, retries included.
    n_data
        Data set size N.
    step_size
        gamma_0 of the successful attempt (halved once per retry).
    n_retries
        Number of diverged attempts that were rolled back before success.
    """

    n_steps: int
    final_loss: float
    mean_loss_last_100: float
    wall_time_s: float
    n_data: int
    step_size: float
    n_retries: int


class _Diverged(Exception):
    """Internal: NaN or inf met during one attempt."""


class Chain:
    """One Markov chain over the weights of a :class:`BayesianModel`.

    Parameters
    ----------
    model
        The model; its trainable parameters are the chain's state and are changed in place.
    prior
        Transfer prior built on the pretrained values of the same parameters.
    config
        Sampler settings (one update = one cosine cycle of ``config.n_steps`` steps).
    seed
        Seed of the chain's two random streams (minibatch draws, injected noise).

    Attributes
    ----------
    compile_backend
        ``torch.compile`` backend of compiled gradients (``SGHMCConfig.gradients``):
        ``"inductor"``; tests set ``"eager"`` (traced, not code-generated).
    """

    compile_backend: str = "inductor"

    def __init__(
        self, model: BayesianModel, prior: TransferPrior, config: SGHMCConfig, seed: int
    ) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ConfigurationError("the model has no trainable parameters to sample.")
        if {n for n, _ in named} != set(prior.mean):
            raise ConfigurationError(
                "the prior does not cover exactly the model's trainable parameters; build it "
                "with TransferPrior.from_model(model, sigma_tl) before any update."
            )
        self.model = model
        self.config = config
        self.seed = int(seed)
        self.n_updates = 0
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self.device = self._params[0].device
        self.prior = prior.to(self.device)
        seeds = torch.randint(
            0, 2**62, (2,), generator=torch.Generator().manual_seed(self.seed)
        ).tolist()
        self._data_rng = torch.Generator().manual_seed(seeds[0])
        self._noise_rng = torch.Generator(device=self.device).manual_seed(seeds[1])

    def sample(self) -> dict[str, torch.Tensor]:
        """Return the current Monte Carlo sample (detached CPU clones of the weights)."""
        return self.model.trainable_state()

    def update(
        self,
        dataset: Sequence[Any],
        collate: Callable[[Sequence[Any]], Batch],
        energy_sigma_eV: float,
        stress_sigma_eV_per_A3: float,
        compute_stress: bool,
        max_retries: int = 1,
        callback: Callable[[int], None] | None = None,
    ) -> ChainUpdateStats:
        """Run one cosine cycle of SGHMC on ``dataset``; the final weights are the new sample.

        Parameters
        ----------
        dataset
            Labelled items (opaque here, e.g. PreparedStructure); the last one is the newest.
        collate
            Turns a list of items into a :class:`Batch` on the model's device.
        energy_sigma_eV
            Fixed energy sigma per structure in eV (0.1 K).
        stress_sigma_eV_per_A3
            Fixed stress sigma in eV/Å^3.
        compute_stress
            Evaluate stress (needed when the data carry stress labels).
        max_retries
            On NaN/inf the weights are restored to their values before the update and the
            cycle is rerun with gamma_0 halved, at most this many times.
        callback
            Called as ``callback(i)`` after SGHMC step ``i`` (progress bars, diagnostics that
            read the current weights); it must not change the model.

        Returns
        -------
        ChainUpdateStats

        Raises
        ------
        SamplerDiverged
            If every attempt diverged; the weights are then those from before the update.
        """
        n_data = len(dataset)
        if n_data < 1:
            raise ConfigurationError("Chain.update needs at least one labelled structure.")
        start = time.perf_counter()
        snapshot = [p.detach().clone() for p in self._params]
        gamma0 = self.config.step_size
        args = (dataset, collate, energy_sigma_eV, stress_sigma_eV_per_A3, compute_stress, callback)
        for attempt in range(max_retries + 1):
            try:
                losses = self._cycle(*args, gamma0=gamma0)
            except _Diverged as exc:
                self._restore(snapshot)
                logger.warning(
                    "chain (seed %d) diverged at update %d with step size %.3g (%s); weights "
                    "restored", self.seed, self.n_updates, gamma0, exc,
                )
                gamma0 *= 0.5
                continue
            self.n_updates += 1
            stats = ChainUpdateStats(
                n_steps=len(losses),
                final_loss=losses[-1],
                mean_loss_last_100=math.fsum(losses[-100:]) / len(losses[-100:]),
                wall_time_s=time.perf_counter() - start,
                n_data=n_data,
                step_size=gamma0,
                n_retries=attempt,
            )
            logger.info("chain (seed %d) update %d: %s", self.seed, self.n_updates, stats)
            return stats
        raise SamplerDiverged(
            f"chain with seed {self.seed} produced NaN/inf at update {self.n_updates + 1} "
            f"({max_retries + 1} attempts, last step size {gamma0 * 2:.3g}); its weights were "
            "restored to the previous sample. Lower the step size (gamma_0), check the labels "
            "(energy offset, units) or restart this chain from another chain's sample."
        )

    def _restore(self, snapshot: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, s in zip(self._params, snapshot, strict=False):
                p.copy_(s)
                p.grad = None

    def _cycle(
        self,
        dataset: Sequence[Any],
        collate: Callable[[Sequence[Any]], Batch],
        energy_sigma_eV: float,
        stress_sigma_eV_per_A3: float,
        compute_stress: bool,
        callback: Callable[[int], None] | None,
        gamma0: float,
    ) -> list[float]:
        """Run one cosine cycle; return the per-step losses. Raise _Diverged on NaN/inf."""
        cfg = self.config
        n_data = len(dataset)
        sampler = self._sampler()
        flat = isinstance(sampler, FlatSGHMC)  # adds the prior gradient itself
        losses = torch.empty(cfg.n_steps, dtype=torch.float64, device=self.device)
        full_batch = collate(list(dataset)) if n_data <= cfg.batch_size else None
        likelihood = (energy_sigma_eV, stress_sigma_eV_per_A3, compute_stress)
        compiled = self._compiled_gradient(*likelihood)
        for i in range(cfg.n_steps):
            gamma, tau = cosine_step_size(i, cfg.n_steps, gamma0), noise_temperature(i, cfg)
            if compiled is not None:
                draw = self._minibatch(dataset, collate, full_batch)
                check = i == 0 or not compiled.shape_checked(draw[0])
                step = self._compiled_step(compiled, sampler.theta, draw, n_data, likelihood, check)
                if step is not None:
                    losses[i] = sampler.step_with_gradient(step[1], step[0], gamma, tau, n_data)
                else:  # switched off in this step: autograd on the same minibatch
                    compiled = None
                    loss = minibatch_objective(self.model, None, *draw, n_data, *likelihood)
                    losses[i] = sampler.step(loss, gamma, tau, n_data)
            else:
                loss = self._loss(
                    dataset, collate, full_batch, energy_sigma_eV, stress_sigma_eV_per_A3,
                    compute_stress, None if flat else self.prior,
                )
                if flat:
                    losses[i] = sampler.step(loss, gamma, tau, n_data)
                else:
                    loss.backward()
                    losses[i] = loss.detach()
                    sampler.step(gamma, tau, n_data)
            if callback is not None:
                callback(i)
            if (i + 1) % _CHECK_EVERY == 0 and not bool(torch.isfinite(losses[: i + 1]).all()):
                raise _Diverged(f"non-finite loss before step {i + 1}")
        sampler.zero_momentum()
        if not bool(torch.isfinite(losses).all()):
            raise _Diverged("non-finite loss")
        if not all(bool(torch.isfinite(p).all()) for p in self._params):
            raise _Diverged("non-finite weights")
        self._check_final_sample(dataset[-1], collate, n_data, energy_sigma_eV, stress_sigma_eV_per_A3, compute_stress)
        return losses.tolist()

    def _compiled_gradient(
        self, energy_sigma_eV: float, stress_sigma_eV_per_A3: float, compute_stress: bool
    ) -> CompiledGradient | None:
        """Return this update's compiled gradient, or None for autograd (the choice is logged)."""
        cfg = self.config
        mode, why = choose_gradients(cfg.gradients, self.model, cfg.sampler, cfg.n_steps)
        logger.info("chain (seed %d) update %d gradients: %s (%s)", self.seed,
                    self.n_updates + 1, mode, why)
        if mode != "compiled":
            return None
        try:
            return CompiledGradient(
                self.model, self._names, [p.shape for p in self._params], energy_sigma_eV,
                stress_sigma_eV_per_A3, compute_stress, backend=self.compile_backend,
            )  # fmt: skip
        except OtfparslError as exc:  # e.g. a MACE model that keeps TorchScript modules
            disable_compiled(str(exc))
            return None

    def _compiled_step(
        self,
        compiled: CompiledGradient,
        theta: torch.Tensor,
        draw: tuple[Batch, torch.Tensor, int],
        n_data: int,
        likelihood: tuple[float, float, bool],
        check: bool,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Return ``(data_loss, ĝ_data)`` of the compiled gradient, or None when it is switched off.

        With ``check``, ĝ is compared with the autograd gradient of the same minibatch; a
        relative difference above :data:`~otfparsl.bayes.functional.CHECK_TOLERANCE`, or an error
        while compiling, switches compiled gradients off in this process.
        """
        batch, weights, n_draws = draw
        try:
            loss, grad = compiled(theta, batch, weights / n_draws)
        except OtfparslError:
            raise
        except Exception as exc:  # noqa: BLE001  (torch.compile fails in many ways; autograd stays)
            disable_compiled(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return None
        if not check:
            return loss, grad
        reference = minibatch_objective(self.model, None, *draw, n_data, *likelihood)
        grads = torch.autograd.grad(
            reference, self._params, allow_unused=True, materialize_grads=True
        )
        self.model.zero_grad(set_to_none=True)
        expected = torch.cat([g.reshape(-1) for g in grads])
        if not bool(torch.isfinite(expected).all()):
            return loss, grad  # a diverging chain, not a compiler fault: the update handles it
        mismatch = gradient_mismatch(grad, expected)
        tolerance = CHECK_TOLERANCE.get(grad.dtype, 1e-3)
        if not mismatch <= tolerance:
            disable_compiled(
                f"the compiled gradient differs from autograd's by {mismatch:.2e} (relative, "
                f"tolerance {tolerance:.0e})"
            )
            return None
        compiled.mark_checked(batch)
        logger.info("chain (seed %d): compiled gradient checked against autograd, relative "
                    "difference %.2e", self.seed, mismatch)
        return loss, grad

    def _sampler(self) -> FlatSGHMC | AMSGradSGHMC:
        """Return a fresh sampler of ``config.sampler`` over the chain's parameters."""
        if self.config.sampler == "reference":
            return AMSGradSGHMC(self._params, self.config, self._noise_rng)
        means = [self.prior.mean[n] for n in self._names]
        return FlatSGHMC(self._params, means, self.prior.sigma_tl, self.config, self._noise_rng)

    def _check_final_sample(self, newest, collate, n_data, energy_sigma_eV, stress_sigma_eV_per_A3, compute_stress) -> None:
        """The losses above were evaluated before each step: evaluate the final weights too.

        A last step can leave finite weights whose predictions (e.g. an overflowing sigma)
        are not; such a sample is a divergence. No random number is drawn here.
        """
        one = torch.ones(1, dtype=torch.float64)
        loss = minibatch_objective(
            self.model, self.prior, collate([newest]), one, 1, n_data,
            energy_sigma_eV, stress_sigma_eV_per_A3, compute_stress,
        )  # fmt: skip
        self.model.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(loss.detach())):
            raise _Diverged("non-finite predictions of the final sample")

    def _minibatch(
        self,
        dataset: Sequence[Any],
        collate: Callable[[Sequence[Any]], Batch],
        full_batch: Batch | None,
    ) -> tuple[Batch, torch.Tensor, int]:
        """Draw a minibatch: its distinct structures, their summed weights ``(S,)`` and B."""
        cfg = self.config
        n_data = len(dataset)
        idx, w = sample_minibatch(n_data, cfg.batch_size, self._data_rng, cfg.priority)
        unique, inverse = torch.unique(idx, return_inverse=True)
        weights = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, w)
        batch = full_batch if full_batch is not None else collate(
            [dataset[k] for k in unique.tolist()]
        )
        return batch, weights, len(idx)

    def _loss(
        self,
        dataset: Sequence[Any],
        collate: Callable[[Sequence[Any]], Batch],
        full_batch: Batch | None,
        energy_sigma_eV: float,
        stress_sigma_eV_per_A3: float,
        compute_stress: bool,
        prior: TransferPrior | None,
    ) -> torch.Tensor:
        """Draw a minibatch and return its objective (see :func:`minibatch_objective`)."""
        return minibatch_objective(
            self.model, prior, *self._minibatch(dataset, collate, full_batch), len(dataset),
            energy_sigma_eV, stress_sigma_eV_per_A3, compute_stress,
        )  # fmt: skip

    def save(self, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> None:
        """Write the chain (weights, prior mean, config, RNG states, counters) atomically.

        The file is written to a temporary file in the same folder, fsync'ed and renamed over
        ``path``, so a crash never leaves a half-written chain file. All tensors are on CPU.
        ``meta`` (plain numbers and strings) is stored alongside, e.g. what the last update saw.
        """
        state = {
            "meta": dict(meta or {}),
            "format": _FORMAT,
            "weights": self.model.trainable_state(),
            "prior_mean": {n: m.detach().cpu().clone() for n, m in self.prior.mean.items()},
            "sigma_tl": self.prior.sigma_tl,
            "config": dataclasses.asdict(self.config),
            "seed": self.seed,
            "n_updates": self.n_updates,
            "data_rng_state": self._data_rng.get_state(),
            "noise_rng_state": self._noise_rng.get_state().cpu(),
            "noise_rng_device": self.device.type,
        }
        _atomic_torch_save(state, Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: BayesianModel) -> Chain:
        """Restore a chain written by :meth:`save` into ``model`` (same architecture).

        A loaded chain continues exactly as the uninterrupted one would have (bit-identical on
        the same device type; on another device type the noise stream is reseeded, except for a
        chain never updated, whose stream starts as if it had been created on this device).
        """
        state = _read_chain_file(Path(path))
        model.load_trainable_state(state["weights"])
        prior = TransferPrior(state["prior_mean"], float(state["sigma_tl"]))
        # files written before SGHMCConfig.sampler existed continue with their own numerics
        config = SGHMCConfig(**{"sampler": "reference", **state["config"]})
        chain = cls(model, prior, config, int(state["seed"]))
        chain.n_updates = int(state["n_updates"])
        chain._data_rng.set_state(state["data_rng_state"])
        if state["noise_rng_device"] == chain.device.type:
            chain._noise_rng.set_state(state["noise_rng_state"])
        elif chain.n_updates == 0:
            pass  # never updated: the constructor seeded the stream on this device, as if made here
        else:
            logger.warning(
                "chain file %s was written on %s, loaded on %s: the noise stream is reseeded, "
                "so the continuation is not bit-identical", path, state["noise_rng_device"],
                chain.device.type,
            )
            chain._noise_rng.manual_seed(chain.seed * 1_000_003 + chain.n_updates)
        return chain


def minibatch_objective(
    model: BayesianModel,
    prior: TransferPrior | None,
    batch: Batch,
    weights: torch.Tensor,
    n_draws: int,
    n_data: int,
    energy_sigma_eV: float,
    stress_sigma_eV_per_A3: float,
    compute_stress: bool,
) -> torch.Tensor:
    """Return the per-datum SGHMC objective of one minibatch (differentiable, scalar).

    Parameters
    ----------
    model, prior
        The Bayesian model and the transfer prior over its trainable parameters; ``prior``
        None leaves the prior term out (for a sampler that adds its gradient analytically).
    batch
        The distinct structures of the minibatch.
    weights
        ``(S,)`` summed importance weights of the batch's structures (a structure drawn twice
        carries the sum of its two weights).
    n_draws
        Number of draws B of the minibatch (the divisor).
    n_data
        Data set size N.
    energy_sigma_eV, stress_sigma_eV_per_A3, compute_stress
        As in :func:`~otfparsl.bayes.likelihood.log_likelihood` and the model call.

    Notes
    -----
    ``-(1/N) log p(θ) - (1/B) Σ_b w_b log p(y_b | θ)``, an estimate of ``U(θ)/N`` (method.md
    section 3) whose gradient is ĝ.
    """
    pred = model(batch, compute_stress, True)
    ll = log_likelihood(pred, batch, energy_sigma_eV, stress_sigma_eV_per_A3)
    data_term = (weights.to(ll) * ll).sum() / n_draws
    if prior is None:
        return -data_term
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    return -prior.log_prob(named) / n_data - data_term


def read_chain_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return ``n_updates``, ``seed`` and ``meta`` of a chain file (without building a model)."""
    state = _read_chain_file(Path(path))
    return {"n_updates": int(state["n_updates"]), "seed": int(state["seed"]), "meta": dict(state.get("meta", {}))}


def load_sample(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Return only the weights (name -> CPU tensor) stored in a chain file."""
    return dict(_read_chain_file(Path(path))["weights"])


def _read_chain_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigurationError(f"chain file {path} does not exist; run a chain update first.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ConfigurationError(
            f"{path} is not an otfparsl chain file (format {_FORMAT!r}); it may be corrupt or "
            "from another program. Delete it and restart the chain from the pretrained weights."
        )
    return state


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))
