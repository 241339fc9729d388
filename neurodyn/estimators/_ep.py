from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float

from .._dynamics import relax_loop
from .._objectives import SteadyState
from .._outcome import RESULTS
from ..networks import AbstractEnergyNetwork
from ._base import AbstractEstimator


class EP(AbstractEstimator):
    r"""Equilibrium propagation: the gradient from the response of the steady state to a
    nudge of the dynamics towards lower (or higher) loss.

    Nudged dynamics (DESIGN.md's convention): `dr/dt = F(r) + b (dl/dr)^T`, whose equilibrium
    `r*(b)` satisfies `dr*/db = -J^-1 (dl/dr)^T` at `b = 0`. Then

    `(dr*/db)^T dF/dw = -dl/dr J^-T dF/dw`,

    which is the exact gradient `-dl/dr J^-1 dF/dw` when `J` is symmetric (`F = -dE/dr`).
    EP estimates `dr*/db` by a finite difference of nudged equilibria `r_a`, `r_b`:

    - `variant="centered"`: phases `b = +beta` and `b = -beta`; bias O(beta^2)
      (Laborieux et al. 2021).
    - `variant="one-sided"`: the free phase and `b = -beta` (the nudge towards the target,
      classic EP); bias O(beta).

    The nudged phases start from the free equilibrium. On energy networks the update is the
    classic one, `dl/dw ~ -(dE/dw(r_a) - dE/dw(r_b)) / (a - b)`; on other networks the seed
    formula `((r_a - r_b)/(a - b))^T dF/dw(r*)`, biased when `J` is not symmetric: `info`
    reports the asymmetry `||J - J^T||_F / ||J||_F`, estimated from random probes (one JVP
    and one VJP each, no dense J). The readout's own parameters get their direct gradient.

    Cost: one free and one (one-sided) or two (centered) nudged relaxations; memory O(n).

    **Arguments:**

    - `beta`: the nudging strength (an array field: a sweep over beta compiles once).
    - `variant`: `"centered"` (default) or `"one-sided"`.
    - `asymmetry_probes`: random probes for the asymmetry estimate on non-energy networks
      (0 to skip it); energy networks report 0, their Jacobian being symmetric by construction.

    !!! warning

        The finite difference divides the relaxation error by beta: keep the relaxation
        tolerance well below beta times the size of `dl/dr` (the float64 defaults do for
        beta >= 1e-3). On a network with a non-symmetric Jacobian the estimate is biased
        however small beta is; use `nd.RBP()` there.
    """

    beta: Float[Array, ""]
    variant: Literal["centered", "one-sided"] = eqx.field(static=True)
    asymmetry_probes: int = eqx.field(static=True)

    def __init__(
        self,
        beta: float | ArrayLike = 0.1,
        variant: Literal["centered", "one-sided"] = "centered",
        asymmetry_probes: int = 4,
    ):
        self.beta = jnp.asarray(beta, dtype=jnp.result_type(float))
        self.variant = variant
        self.asymmetry_probes = asymmetry_probes

    def __check_init__(self):
        if self.variant not in ("centered", "one-sided"):
            raise ValueError(f"EP variant must be 'centered' or 'one-sided', got {self.variant!r}.")
        if not isinstance(self.beta, jax.core.Tracer) and not bool(jnp.all(self.beta > 0)):
            raise ValueError(f"EP needs beta > 0, got beta={self.beta}.")

    objectives = (SteadyState,)

    def value_and_grad(self, net, x, y, objective, options):
        frozen = jax.lax.stop_gradient(net)
        r_free, info = relax_loop(frozen, x, frozen.init_state(x), options)
        r_free = jax.lax.stop_gradient(r_free)
        beta = self.beta.astype(r_free.dtype)

        def dl_dr(r):
            return jax.grad(lambda r: objective.value(frozen, r, y))(r)

        def nudged(b):
            return relax_loop(frozen, x, r_free, options, forcing=lambda r: b * dl_dr(r))

        if self.variant == "centered":
            (r_a, info_a), (r_b, info_b) = nudged(beta), nudged(-beta)
            a, b = beta, -beta
            nudged_converged = info_a["converged"] & info_b["converged"]
            nudged_steps = info_a["steps"] + info_b["steps"]
        else:
            (r_b, info_b) = nudged(-beta)
            r_a, a, b = r_free, jnp.zeros_like(beta), -beta
            nudged_converged = info_b["converged"]
            nudged_steps = info_b["steps"]
        r_a, r_b = jax.lax.stop_gradient(r_a), jax.lax.stop_gradient(r_b)

        params, static = eqx.partition(net, eqx.is_inexact_array)
        loss, g_direct = jax.value_and_grad(lambda p: objective.value(eqx.combine(p, static), r_free, y))(params)
        if isinstance(net, AbstractEnergyNetwork):

            def dE_dw(r):
                return jax.grad(lambda p: eqx.combine(p, static).energy(r, x))(params)

            g_dyn = jtu.tree_map(lambda ea, eb: -(ea - eb) / (a - b), dE_dw(r_a), dE_dw(r_b))
        else:
            delta = (r_a - r_b) / (a - b)
            _, vjp_w = jax.vjp(lambda p: eqx.combine(p, static)(0.0, r_free, x), params)
            (g_dyn,) = vjp_w(delta)
        grads = jtu.tree_map(lambda u, v: u + v, g_direct, g_dyn)

        extra = {}
        if isinstance(net, AbstractEnergyNetwork):
            extra["asymmetry"] = jnp.zeros((), r_free.dtype)  # symmetric by construction: no probes
        elif self.asymmetry_probes > 0:
            extra["asymmetry"] = _asymmetry(lambda r: frozen(0.0, r, x), r_free, self.asymmetry_probes)
        forward_ok = info["converged"]
        converged = forward_ok & nudged_converged
        result = RESULTS.where(
            forward_ok,
            RESULTS.where(nudged_converged, RESULTS.successful, RESULTS.max_steps_reached),
            info["result"],
        )
        info = dict(
            info,
            **extra,
            converged=converged,
            forward_converged=forward_ok,
            nudged_converged=nudged_converged,
            nudged_steps=nudged_steps,
            result=result,
        )
        return loss, grads, info


def _asymmetry(F_r, r, probes):
    """`||J - J^T||_F / ||J||_F` by Hutchinson probes: `E||A u||^2 = ||A||_F^2` for
    `u ~ N(0, I)`; one JVP and one VJP of F per probe."""
    _, jvp = jax.linearize(F_r, r)
    _, vjp = jax.vjp(F_r, r)
    us = jr.normal(jr.PRNGKey(0), (probes,) + r.shape, r.dtype)

    def sq(u):
        Ju, JTu = jvp(u), vjp(u)[0]
        return jnp.sum((Ju - JTu) ** 2), jnp.sum(Ju**2)

    num, den = jax.vmap(sq)(us)
    return jnp.sqrt(jnp.sum(num) / jnp.sum(den))
