"""AMSGrad-preconditioned SGHMC, its schedules and the priority minibatch (method.md section 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from otfparsl.errors import ConfigurationError

PRIORITIES = ("unbiased", "original", "uniform")
SAMPLERS = ("flat", "reference")
#: How a chain step computes its gradient (see :class:`SGHMCConfig`).
GRADIENT_MODES = ("autograd", "compiled", "auto")


@dataclass(frozen=True)
class SGHMCConfig:
    """Settings of one chain update (one cosine cycle); defaults are the paper's MACE values.

    Attributes
    ----------
    n_steps
        Steps per update (one cosine cycle).
    batch_size
        Minibatch size B (number of draws).
    step_size
        gamma_0, the peak of the cosine step-size schedule (MACE 1e-3).
    friction
        alpha, the momentum friction.
    beta
        AMSGrad second-moment decay.
    eps
        AMSGrad denominator regulariser.
    noise_off_steps
        Steps at the start of an update without injected noise (tau = 0).
    noise_ramp_steps
        Steps of the linear noise-temperature ramp 0 -> 1 that follow.
    priority
        Minibatch rule: ``"unbiased"`` (default, importance-weighted priority of the newest
        structure), ``"original"`` (the original code's biased rule) or ``"uniform"``.
    sampler
        Implementation of the update: ``"flat"`` (default, :class:`~otfparsl.bayes.flat.FlatSGHMC`:
        one flat weight buffer, analytic prior gradient, one noise vector per step) or
        ``"reference"`` (:class:`AMSGradSGHMC`: one tensor per parameter, prior gradient by
        autograd, one noise draw per parameter tensor; the numerics of chain files written
        before the flat sampler existed). Same equations: at τ = 0 the same trajectory to
        rounding; with noise, other random numbers of the same law.
    gradients
        How ĝ is computed: ``"autograd"`` (default here; a graph per step), ``"compiled"``
        (one ``torch.compile``d ``torch.func`` function per process, checked against autograd at
        the first step of every update, autograd where it is unavailable or fails;
        :mod:`otfparsl.bayes.functional`) or ``"auto"`` (compiled for updates of at least
        :data:`~otfparsl.bayes.functional.AUTO_MIN_STEPS` steps; the run settings' default).
        Same trajectory to rounding.
    """

    n_steps: int = 2000
    batch_size: int = 5
    step_size: float = 1e-3
    friction: float = 0.1
    beta: float = 0.999
    eps: float = 1e-4
    noise_off_steps: int = 398
    noise_ramp_steps: int = 100
    priority: str = "unbiased"
    sampler: str = "flat"
    gradients: str = "autograd"

    def __post_init__(self) -> None:
        if self.priority not in PRIORITIES:
            raise ConfigurationError(
                f"priority must be one of {PRIORITIES}; got {self.priority!r}."
            )
        if self.sampler not in SAMPLERS:
            raise ConfigurationError(f"sampler must be one of {SAMPLERS}; got {self.sampler!r}.")
        if self.gradients not in GRADIENT_MODES:
            raise ConfigurationError(
                f"gradients must be one of {GRADIENT_MODES}; got {self.gradients!r}."
            )
        min_batch = 1 if self.priority == "uniform" else 2
        checks = [
            ("n_steps", self.n_steps >= 1, "an integer >= 1"),
            ("batch_size", self.batch_size >= min_batch, f"an integer >= {min_batch}"),
            ("step_size", 0.0 < self.step_size < math.inf, "a finite number > 0"),
            ("friction", 0.0 < self.friction <= 1.0, "in (0, 1]"),
            ("beta", 0.0 < self.beta < 1.0, "in (0, 1)"),
            ("eps", self.eps > 0.0, "> 0"),
            ("noise_off_steps", self.noise_off_steps >= 0, "an integer >= 0"),
            ("noise_ramp_steps", self.noise_ramp_steps >= 0, "an integer >= 0"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigurationError(
                    f"SGHMCConfig.{name} must be {allowed}; got {getattr(self, name)!r}."
                )


def cosine_step_size(i: int, n_steps: int, gamma0: float) -> float:
    """Return the step size of step ``i`` of a cosine cycle.

    Notes
    -----
    ``γ_i = ½ γ0 (1 + cos(π i / n_steps)) + 1e-8`` (method.md section 3).
    """
    return 0.5 * gamma0 * (1.0 + math.cos(math.pi * i / n_steps)) + 1e-8


def noise_temperature(i: int, cfg: SGHMCConfig) -> float:
    """Return the noise temperature τ of step ``i``: 0, then a linear ramp to 1, then 1.

    With the defaults τ = 0 for i < 398, τ = (i - 398)/100 for 398 <= i < 498, and 1 after
    (the original code's ``burnin_steps=400, preheat=100`` counted from its step counter 2).
    """
    if i < cfg.noise_off_steps:
        return 0.0
    if i < cfg.noise_off_steps + cfg.noise_ramp_steps:
        return (i - cfg.noise_off_steps) / cfg.noise_ramp_steps
    return 1.0


def sample_minibatch(
    n_data: int, batch_size: int, generator: torch.Generator, priority: str = "unbiased"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a minibatch that favours the newest structure (index ``n_data - 1``).

    The estimate of the per-datum mean log-likelihood is
    ``(1/len(indices)) Σ_b weights_b l_{indices_b}``; for ``"unbiased"`` and ``"uniform"`` its
    expectation is exactly ``(1/N) Σ_n l_n``.

    Parameters
    ----------
    n_data
        Data set size N.
    batch_size
        Number of draws B.
    generator
        CPU torch generator (the only source of randomness).
    priority
        ``"unbiased"``: B i.i.d. draws, ``q_new = 1/B``, ``q_old = (1 - 1/B)/(N - 1)``,
        ``w = 1/(N q)``. ``"original"``: the rule of the original code (``DataLoader.py``):
        B draws uniform in ``[0, N + L)``, ``L = ceil(N/(B - 1))``, values ``>= N - 1`` mean
        the newest; duplicates merged with weight ``count · p/q`` using ``q_new = L/(N + L)``
        (the true value is ``(L + 1)/(N + L)``) and the sum later divided by the number of
        *unique* indices: biased (newest over-weighted). ``"uniform"``: B uniform draws, w = 1.

    Returns
    -------
    indices : torch.Tensor
        ``(n_draws,)`` long indices into the data set (duplicates possible, except "original").
    weights : torch.Tensor
        ``(n_draws,)`` float64 importance weights.

    Notes
    -----
    When ``N <= B`` the whole data set is the batch, all weights 1.
    """
    if n_data < 1:
        raise ConfigurationError(f"n_data must be >= 1; got {n_data}. Add a labelled structure.")
    if priority not in PRIORITIES:
        raise ConfigurationError(f"priority must be one of {PRIORITIES}; got {priority!r}.")
    if n_data <= batch_size:
        return torch.arange(n_data), torch.ones(n_data, dtype=torch.float64)
    if priority == "original":
        return _original_minibatch(n_data, batch_size, generator)
    if priority == "uniform":
        idx = torch.randint(0, n_data, (batch_size,), generator=generator)
        return idx, torch.ones(batch_size, dtype=torch.float64)
    q = torch.full((n_data,), (1.0 - 1.0 / batch_size) / (n_data - 1), dtype=torch.float64)
    q[-1] = 1.0 / batch_size
    idx = torch.multinomial(q, batch_size, replacement=True, generator=generator)
    return idx, 1.0 / (n_data * q[idx])


def _original_minibatch(
    n_data: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reproduce ``weighted_dataloader.sample`` of TimRensmeyer/OTFFineTune (biased)."""
    n_extra = math.ceil(n_data / (batch_size - 1))
    draws = torch.randint(0, n_data + n_extra, (batch_size,), generator=generator)
    draws = torch.clamp(draws, max=n_data - 1)
    unique, counts = torch.unique(draws, return_counts=True)
    p = 1.0 / n_data
    q = torch.where(
        unique < n_data - 1,
        torch.tensor(1.0 / (n_data + n_extra), dtype=torch.float64),
        torch.tensor(n_extra / (n_data + n_extra), dtype=torch.float64),
    )
    return unique, counts.to(torch.float64) * (p / q)


class AMSGradSGHMC:
    """SGHMC with an AMSGrad preconditioner, element-wise per parameter (method.md section 3).

    Parameters
    ----------
    params
        The parameters to sample (their ``.grad`` holds ĝ when :meth:`step` is called).
    config
        Friction α, β and ε are read from it.
    generator
        Source of the injected noise; must live on the parameters' device.

    Notes
    -----
    Per step t::

        v_t = β v_{t-1} + (1-β) ĝ²,  m_t = max(m_{t-1}, v_t)  (m_1 = v_1)
        D_t = 1 / (sqrt(m_t / (1-β^t)) + ε)
        r_t = (1-α) r_{t-1} - α ĝ + α ξ_t,  ξ_t ~ N(0, 2 τ_t² / (γ_t D_t N))
        θ_t = θ_{t-1} + γ_t D_t r_t

    i.e. SGHMC with friction α at unit temperature and learning rate α γ D / N.
    """

    def __init__(
        self, params: Sequence[torch.Tensor], config: SGHMCConfig, generator: torch.Generator
    ) -> None:
        self.params = list(params)
        self.config = config
        self.generator = generator
        self.reset()

    def reset(self) -> None:
        """Restart the preconditioner (v, m, t) and set the momentum r to zero."""
        self.t = 0
        self.v = [torch.zeros_like(p) for p in self.params]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.r = [torch.zeros_like(p) for p in self.params]

    def zero_momentum(self) -> None:
        """Set the momentum r to zero (end of an update)."""
        for r in self.r:
            r.zero_()

    @torch.no_grad()
    def step(self, step_size: float, temperature: float, n_data: int) -> None:
        """Apply one update to every parameter with a gradient, then clear the gradients.

        Parameters
        ----------
        step_size
            γ_t of this step.
        temperature
            τ_t of this step (0 disables the noise and draws no random numbers).
        n_data
            Data set size N.
        """
        cfg = self.config
        self.t += 1
        bias = 1.0 - cfg.beta**self.t
        alpha = cfg.friction
        for p, v, m, r in zip(self.params, self.v, self.m, self.r, strict=False):
            g = p.grad
            if g is None:
                continue
            v.mul_(cfg.beta).addcmul_(g, g, value=1.0 - cfg.beta)
            if self.t == 1:
                m.copy_(v)
            else:
                torch.maximum(m, v, out=m)
            d = 1.0 / (torch.sqrt(m / bias) + cfg.eps)
            r.mul_(1.0 - alpha).add_(g, alpha=-alpha)
            if temperature > 0.0:
                xi = torch.randn(p.shape, generator=self.generator, dtype=p.dtype, device=p.device)
                std = temperature * torch.sqrt(2.0 / (step_size * d * n_data))
                r.addcmul_(xi, std, value=alpha)
            p.addcmul_(d, r, value=step_size)
            p.grad = None
