"""The lean AMSGrad-SGHMC sampler: one flat weight buffer, analytic prior gradient (method.md 3).

It runs the same update equations as :class:`~otfparsl.bayes.sghmc.AMSGradSGHMC` on one flat
tensor instead of one small tensor per parameter, and adds the transfer prior's gradient
``(θ - θ_pre) / (N σ_TL²)`` analytically instead of differentiating the prior through autograd.
Without injected noise (τ = 0) both samplers follow the same trajectory to rounding
(tests/unit/bayes/test_flat.py); with noise the flat sampler draws one standard normal vector
of all weights per step instead of one per parameter tensor, so its noise stream (not its law)
differs from the reference sampler's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from otfparsl.bayes.sghmc import SGHMCConfig
from otfparsl.errors import ConfigurationError


def flatten_parameters(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Move ``params`` into one contiguous 1-D tensor and make each parameter a view of it.

    Parameters
    ----------
    params
        Parameters of one dtype and device (their values are kept).

    Returns
    -------
    torch.Tensor
        ``(n_weights,)`` the flat buffer; writing into it changes the parameters in place.

    Raises
    ------
    ConfigurationError
        If the parameters do not share one dtype and one device.
    """
    params = list(params)
    kinds = {(p.dtype, p.device) for p in params}
    if len(kinds) != 1:
        raise ConfigurationError(
            f"the flat sampler needs parameters of one dtype and device; got {sorted(map(str, kinds))}. "
            "Cast the model (and its sigma head) to one dtype, or use SGHMCConfig(sampler='reference')."
        )
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset : offset + n].view_as(p)
        offset += n
    return flat


class FlatSGHMC:
    """AMSGrad-preconditioned SGHMC on one flat weight buffer, prior gradient in closed form.

    Parameters
    ----------
    params
        The trainable parameters, in a fixed order; they become views of one flat buffer.
    prior_mean
        ``θ_pre`` of each parameter, same order and shapes.
    sigma_tl
        Transfer-prior standard deviation σ_TL (weight units).
    config
        Friction α, β and ε are read from it.
    generator
        Source of the injected noise; must live on the parameters' device.

    Notes
    -----
    Per step t, with ĝ = ∇θ[-(1/B) Σ_b w_b log p(y_b | θ)] + (θ - θ_pre) / (N σ_TL²)::

        v_t = β v_{t-1} + (1-β) ĝ²,  m_t = max(m_{t-1}, v_t)  (m_1 = v_1)
        D_t = 1 / (sqrt(m_t / (1-β^t)) + ε)
        r_t = (1-α) r_{t-1} - α ĝ + α ξ_t,  ξ_t ~ N(0, 2 τ_t² / (γ_t D_t N))
        θ_t = θ_{t-1} + γ_t D_t r_t

    (method.md section 3; the prior term is the gradient of ``-(1/N) log p(θ)`` of section 2).
    The element-wise operations are those of the reference sampler, in the same order, so the
    two agree to rounding at τ = 0.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        prior_mean: Sequence[torch.Tensor],
        sigma_tl: float,
        config: SGHMCConfig,
        generator: torch.Generator,
    ) -> None:
        self.params = list(params)
        if len(prior_mean) != len(self.params) or any(
            m.shape != p.shape for m, p in zip(prior_mean, self.params, strict=True)
        ):
            raise ConfigurationError(
                "the prior mean must give one tensor of the parameter's shape per parameter; "
                "build the prior with TransferPrior.from_model(model, sigma_tl)."
            )
        self.theta = flatten_parameters(self.params)
        self.theta0 = torch.cat([m.reshape(-1) for m in prior_mean]).to(self.theta)
        self.sigma_tl = float(sigma_tl)
        self.config = config
        self.generator = generator
        self._n_weights = self.theta.numel()
        self._log_norm = self._n_weights * 0.5 * math.log(2.0 * math.pi * self.sigma_tl**2)
        self._diff = torch.empty_like(self.theta)
        self._d = torch.empty_like(self.theta)
        self._xi = torch.empty_like(self.theta)
        self.reset()

    def reset(self) -> None:
        """Restart the preconditioner (v, m, t) and set the momentum r to zero."""
        self.t = 0
        self.v = torch.zeros_like(self.theta)
        self.m = torch.zeros_like(self.theta)
        self.r = torch.zeros_like(self.theta)

    def zero_momentum(self) -> None:
        """Set the momentum r to zero (end of an update)."""
        self.r.zero_()

    def step(
        self, data_loss: torch.Tensor, step_size: float, temperature: float, n_data: int
    ) -> torch.Tensor:
        """Differentiate the data term, add the prior gradient, and apply one update.

        Parameters
        ----------
        data_loss
            Scalar ``-(1/B) Σ_b w_b log p(y_b | θ)`` of this step's minibatch (differentiable).
        step_size
            γ_t of this step.
        temperature
            τ_t of this step (0 disables the noise and draws no random numbers).
        n_data
            Data set size N.

        Returns
        -------
        torch.Tensor
            The detached scalar objective ``-(1/N) log p(θ) + data_loss`` before the update
            (the reference sampler's loss, an estimate of ``U(θ)/N``).
        """
        grads = torch.autograd.grad(
            data_loss, self.params, allow_unused=True, materialize_grads=True
        )
        with torch.no_grad():
            g = torch.cat([x.reshape(-1) for x in grads])
        return self.step_with_gradient(g, data_loss.detach(), step_size, temperature, n_data)

    def step_with_gradient(
        self, g: torch.Tensor, data_loss: torch.Tensor, step_size: float, temperature: float,
        n_data: int,
    ) -> torch.Tensor:
        """:meth:`step` with the data term's flat gradient ``g`` already computed (compiled).

        ``g`` (``(n_weights,)``, the order of the flat buffer) is changed in place; ``data_loss``
        is the detached scalar data term. Returns what :meth:`step` returns.
        """
        with torch.no_grad():
            torch.sub(self.theta, self.theta0, out=self._diff)
            inv_var = 1.0 / (self.sigma_tl * self.sigma_tl)
            prior_term = (0.5 * inv_var * torch.dot(self._diff, self._diff) + self._log_norm) / n_data
            g.add_(self._diff, alpha=inv_var / n_data)
            self._update(g, step_size, temperature, n_data)
        return data_loss + prior_term

    def _update(self, g: torch.Tensor, step_size: float, temperature: float, n_data: int) -> None:
        """Apply the AMSGrad-SGHMC equations to the flat buffer with gradient ``g``."""
        cfg = self.config
        self.t += 1
        bias = 1.0 - cfg.beta**self.t
        alpha = cfg.friction
        self.v.mul_(cfg.beta).addcmul_(g, g, value=1.0 - cfg.beta)
        if self.t == 1:
            self.m.copy_(self.v)
        else:
            torch.maximum(self.m, self.v, out=self.m)
        d = torch.div(self.m, bias, out=self._d).sqrt_().add_(cfg.eps).reciprocal_()
        self.r.mul_(1.0 - alpha).add_(g, alpha=-alpha)
        if temperature > 0.0:
            xi = self._xi.normal_(generator=self.generator)
            # α ξ with ξ ~ N(0, 2τ²/(γ D N)) = α τ sqrt(2/(γ N)) · z / sqrt(D), z ~ N(0, 1)
            xi.mul_(torch.rsqrt(d, out=self._diff))  # _diff is free once g is complete
            self.r.add_(xi, alpha=alpha * temperature * math.sqrt(2.0 / (step_size * n_data)))
        self.theta.addcmul_(d, self.r, value=step_size)
