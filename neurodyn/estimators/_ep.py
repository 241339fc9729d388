from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float

from .._dynamics import relax_loop
from .._objectives import SteadyState
from .._outcome import flag_failure, RESULTS
from ..networks import AbstractEnergyNetwork
from ._base import AbstractSurrogateEstimator


_VARIANTS = ("centered", "one-sided")


class EP(AbstractSurrogateEstimator):
    r"""Equilibrium propagation: the gradient from how the steady state moves when the
    dynamics are nudged towards the target.

    **Sign convention** (the EP papers': Scellier & Bengio 2017, Laborieux et al. 2021).
    The nudged dynamics are the gradient flow of the total energy `E + beta l`,

    `dr/dt = F(r) - beta (dl/dr)^T`,

    so `beta > 0` pulls the state towards lower loss. DESIGN.md writes the same dynamics
    with the opposite sign of the nudge, `F + b (dl/dr)^T`: its `b` is our `-beta`. Let
    `r^beta` be the nudged equilibrium and `J = dF/dr` at the free one `r^0 = r*`. Then

    `dr^beta/dbeta = J^-1 (dl/dr)^T` (DESIGN's `dr*/db = -J^-1 (dl/dr)^T`),

    while the exact gradient is `dl/dw = -dl/dr J^-1 dF/dw` (plus the readout's direct
    term). When `J` is symmetric, `-dl/dr J^-1 = -(dr^beta/dbeta)^T`, so

    `dl/dw = -(dr^beta/dbeta)^T dF/dw + d l(readout(r*), y)/dw`   (`J = J^T`).

    EP estimates `dr^beta/dbeta` by a finite difference of nudged equilibria, each relaxed
    from the free equilibrium:

    - `variant="centered"`: phases `+beta` and `-beta`, bias O(beta^2) (Laborieux et al. 2021).
    - `variant="one-sided"`: the free phase and `+beta` (classic EP), bias O(beta).

    On an energy network (`nd.networks.AbstractEnergyNetwork`, `F = -dE/dr`) the update is the
    classic one: `dl/dw ~ (dE/dw(r^beta) - dE/dw(r^-beta)) / (2 beta)` (centered) or
    `(dE/dw(r^beta) - dE/dw(r^0)) / beta` (one-sided), which needs no `dF/dw` and no Jacobian.
    On any other network it is the seed formula `-((r^a - r^b)/(a - b))^T dF/dw(r*)` (one VJP
    of F), biased however small beta is when `J` is not symmetric: `info["asymmetry"]` then
    reports `||J - J^T||_F / ||J||_F`, estimated from random probes (one JVP and one VJP of F
    each, no dense `J`). Parameters of the readout get their direct gradient at `r*`.

    Cost: the free relaxation, then one (one-sided) or two (centered, run as one batched
    relaxation) nudged relaxations from `r*`, each usually shorter than the free one; the
    parameter gradient is one reverse pass through `E` (or `F`) and the loss. Memory O(n).

    **Arguments:**

    - `beta`: the nudging strength, `> 0` (an array field: a sweep over beta compiles once).
    - `variant`: `"centered"` (default) or `"one-sided"`.
    - `asymmetry_probes`: random probes for `info["asymmetry"]`. `None` (default): 4 on
      general networks and 1 on energy networks, where `J` is symmetric by construction and
      one probe `u` suffices to confirm it (`(J - J^T) u = 0`; any asymmetry shows with
      probability 1). `0` skips the estimate (`info` then has no `"asymmetry"`).

    **Returns** (from `nd.value_and_grad`): `info` holds the free phase's `converged`,
    `steps`, `residual` and `result`, plus `forward_converged`, `nudged_converged`,
    `nudged_steps` (summed over the nudged phases) and `asymmetry`; `converged` is the AND
    of all phases, and `result` is the first failing phase's outcome.

    !!! warning

        The finite difference divides the relaxation error by beta: keep the relaxation
        tolerance (`rtol`, `atol`) well below beta times the size of `dl/dr`. The float64
        defaults (1e-10, 1e-12) do for beta >= 1e-5; the float32 ones (1e-5, 1e-6) leave an
        error of about `1e-5 / beta` (2e-4 at beta = 0.05), so float32 wants beta >= 0.01.
        On a network with a non-symmetric Jacobian the estimate is biased however small beta
        is (see `info["asymmetry"]`); use `nd.RBP()` there. A large beta may move the
        nudged state to another basin of attraction.
    """

    beta: Float[Array, "*sweep"]
    variant: Literal["centered", "one-sided"] = eqx.field(static=True)
    asymmetry_probes: int | None = eqx.field(static=True)

    def __init__(
        self,
        beta: float | ArrayLike = 0.1,
        variant: Literal["centered", "one-sided"] = "centered",
        asymmetry_probes: int | None = None,
    ):
        self.beta = jnp.asarray(beta, dtype=jnp.result_type(float))
        self.variant = variant
        self.asymmetry_probes = asymmetry_probes

    def __check_init__(self):
        if self.variant not in _VARIANTS:
            raise ValueError(
                f"EP variant must be 'centered' or 'one-sided', got {self.variant!r}. "
                "Use nd.EP(beta, variant='centered') for the O(beta^2) estimate."
            )
        if self.asymmetry_probes is not None and (
            not isinstance(self.asymmetry_probes, int) or self.asymmetry_probes < 0
        ):
            raise ValueError(
                f"EP asymmetry_probes must be None or an integer >= 0, got {self.asymmetry_probes!r}."
            )
        if not isinstance(self.beta, jax.core.Tracer) and not bool(jnp.all(self.beta > 0)):
            raise ValueError(
                f"EP needs beta > 0, got beta={self.beta}. The sign of the nudge is fixed by "
                "the convention (beta > 0 pulls towards the target); the centered variant "
                "already uses -beta as its second phase."
            )

    objectives = (SteadyState,)

    def surrogate(self, net, x, y, objective, residuals):
        states, weights, r_free = residuals
        if isinstance(net, AbstractEnergyNetwork):
            # Classic EP: sum_k weights_k E(r_k); its parameter gradient is the update. An
            # unrolled sum over the two phases, not a vmap: XLA CPU fuses the two outer
            # products of a weight gradient into one loop, where the vmapped form (a K = 2
            # product) ran 5x slower.
            dynamics_term = weights[0] * net.energy(states[0], x) + weights[1] * net.energy(states[1], x)
        else:
            # -delta^T dF/dw at r*, with delta ~ dr^beta/dbeta.
            dynamics_term = -jnp.vdot(weights @ states, net(0.0, r_free, x))
        return objective.value(net, r_free, y) + dynamics_term

    def solve(self, net, x, y, objective, options):
        energy_net = isinstance(net, AbstractEnergyNetwork)
        r_free, info = relax_loop(net, x, net.init_state(x), options)
        beta = self.beta.astype(r_free.dtype)

        def dl_dr(r):
            return jax.grad(lambda r: objective.value(net, r, y))(r)

        def nudged(b):
            # The gradient flow of E + b l: a pull towards lower loss for b > 0.
            return relax_loop(net, x, r_free, options, forcing=lambda r: -b * dl_dr(r))

        # Both centered phases run as one relaxation batched over the phase axis: one loop,
        # and each step's matrix products take two right-hand sides at once.
        if self.variant == "centered":
            phases = jnp.stack([beta, -beta])
            r_nudged, ninfo = jax.vmap(nudged)(phases)
            states, weights = r_nudged, jnp.stack([1 / (2 * beta), -1 / (2 * beta)])
        else:
            r_beta, ninfo = jax.vmap(nudged)(beta[None])
            states = jnp.concatenate([r_beta, r_free[None]])
            weights = jnp.stack([1 / beta, -1 / beta])

        loss = objective.value(net, r_free, y)
        residuals = (states, weights, r_free)

        probes = self.asymmetry_probes
        if probes is None:
            probes = 1 if energy_net else 4
        extra = {}
        if probes > 0:
            extra["asymmetry"] = _asymmetry(lambda r: net(0.0, r, x), r_free, probes)

        forward_ok = info["converged"]
        nudged_ok = jnp.all(ninfo["converged"])
        # The first failing nudged phase's outcome (its results are per phase).
        first_bad = jnp.argmin(ninfo["converged"])
        worst = jax.tree.map(lambda a: a[first_bad], ninfo["result"])
        nudged_result = RESULTS.where(nudged_ok, RESULTS.successful, worst)
        result = RESULTS.where(forward_ok, nudged_result, info["result"])
        info = dict(
            info,
            **extra,
            converged=forward_ok & nudged_ok,
            forward_converged=forward_ok,
            nudged_converged=nudged_ok,
            nudged_steps=jnp.sum(ninfo["steps"]),
            result=result,
        )
        # In a sweep beta is traced and __check_init__ cannot see it: an invalid one is data.
        info = flag_failure(info, (beta > 0) & jnp.isfinite(beta), RESULTS.invalid_parameter, override=True)
        return loss, residuals, info


def _asymmetry(F_r, r, probes):
    """`||J - J^T||_F / ||J||_F` by Hutchinson probes: `E||A u||^2 = ||A||_F^2` for
    `u ~ N(0, I)`; one JVP and one VJP of F per probe, batched over the probes."""
    _, jvp = jax.linearize(F_r, r)
    _, vjp = jax.vjp(F_r, r)
    # A fixed key: the estimate is a diagnostic, and a fixed probe set keeps it deterministic.
    us = jr.normal(jr.PRNGKey(0), (probes,) + r.shape, r.dtype)
    Ju = jax.vmap(jvp)(us)
    JTu = jax.vmap(lambda u: vjp(u)[0])(us)
    num, den = jnp.sum((Ju - JTu) ** 2), jnp.sum(Ju**2)
    # A zero Jacobian (a dead network) is symmetric: report 0, not NaN.
    return jnp.where(den > 0, jnp.sqrt(num / jnp.where(den > 0, den, 1)), 0.0).astype(r.dtype)
