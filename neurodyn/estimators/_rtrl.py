import abc

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jax.flatten_util import ravel_pytree

from .._dynamics import time_grid
from .._misc import rms_norm
from .._objectives import SteadyState, Trajectory
from .._outcome import RESULTS
from ._base import AbstractEstimator


# ---------------------------------------------------------------------------------------
# Approximations of the sensitivity recursion
# ---------------------------------------------------------------------------------------


class AbstractSensitivity(eqx.Module):
    """How RTRL propagates `P = (dr/dw)^T` (an `m x n` matrix): `dP/dt = P J^T + D`,
    with `D = (dF/dw)^T` the immediate Jacobian."""

    @abc.abstractmethod
    def pattern(self, F_w, w, n) -> jax.Array | None:
        """A boolean `(m, n)` mask of the entries of `P` that are kept, or None for all."""

    @abc.abstractmethod
    def propagate(self, F_r, r, P):
        """`P J^T` (the `J p` term, one row per parameter), possibly approximated."""


class Exact(AbstractSensitivity):
    r"""Exact RTRL: `J p` for all `m` columns through one linearisation of F and a vmapped
    JVP (XLA turns it into an `m x n` by `n x n` matrix product).

    Cost per step O(n^2 m) time, O(n m) memory for `P`, plus the immediate Jacobian `D` by a
    batched VJP over the `n` units (O(n cost(F)) time, `n x m` memory)."""

    def pattern(self, F_w, w, n):
        del F_w, w, n
        return None

    def propagate(self, F_r, r, P):
        _, jvp = jax.linearize(F_r, r)
        return jax.vmap(jvp)(P)


class SnAp1(AbstractSensitivity):
    r"""SnAp-1 (Menick et al. 2021): keep only the sensitivities `dr_i/dw_j` for which `w_j`
    acts on unit `i` immediately (the sparsity pattern of `dF/dw`), and drop the rest at
    every step. Exact when the recurrent matrix is diagonal.

    The pattern is found from the immediate Jacobian at two random states. This
    implementation stores the kept entries inside a dense `(m, n)` array and propagates with
    the exact `J p` product, so it shows SnAp-1's bias, not its savings: time O(n^2 m),
    memory O(nm). (A compressed version holds one entry per parameter for networks whose
    parameters each feed one unit: O(m) memory.)"""

    def pattern(self, F_w, w, n):
        D = jax.jacrev(F_w)(w)  # (n, m) at the state given by F_w's closure
        return (D != 0).T

    def propagate(self, F_r, r, P):
        _, jvp = jax.linearize(F_r, r)
        return jax.vmap(jvp)(P)


class Diagonal(AbstractSensitivity):
    r"""The diagonal (e-prop-like) approximation: `dP/dt = P diag(J) + D`, each unit's
    sensitivities decay with its own leak and self-coupling only (Bellec et al. 2020's
    eligibility traces for rate units).

    Cost per step O(n m) for the update plus `diag(J)` (here by forming J with n JVPs,
    O(n^3) = O(nm)); memory O(nm)."""

    def pattern(self, F_w, w, n):
        del F_w, w, n
        return None

    def propagate(self, F_r, r, P):
        dJ = jnp.diagonal(jax.jacfwd(F_r)(r))
        return P * dJ[None]


# ---------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------


def _joint_field(t, state, args):
    net_static, w_and_x, unravel, approx, mask = args
    w, x = w_and_x
    r, P = state

    def F_r(r):
        return eqx.combine(unravel(w), net_static)(t, r, x)

    def F_w(w):
        return eqx.combine(unravel(w), net_static)(t, r, x)

    dr = F_r(r)
    D = jax.jacrev(F_w)(w).T  # (m, n): dF/dw, one row per parameter
    dP = approx.propagate(F_r, r, P) + D
    if mask is not None:
        dP = jnp.where(mask, dP, 0)
    return dr, dP


_JOINT = diffrax.ODETerm(_joint_field)


def integrate_interval_joint(step, state, xk, t0, dt, n_sub: int):
    """Integrates `(r, P)` over one interval of `n_sub` fixed steps with the input held."""
    state, s = step(state, xk, t0, dt)
    if n_sub == 1:
        return state

    def sub(carry, j):
        state, s = carry
        return step(state, xk, t0 + j * dt, dt, s, False), None

    (state, _), _ = jax.lax.scan(sub, (state, s), jnp.arange(1, n_sub, dtype=dt.dtype))
    return state


def make_joint_step(solver, static, w, unravel, sensitivity, mask):
    """`step(state, x, t0, dt, solver_state=None, made_jump=True) -> (state, solver_state)`
    for the joint system `(r, P)`; `solver_state=None` starts afresh (inputs changed)."""

    def step(state, xk, t0, dt, solver_state=None, made_jump=True):
        args = (static, (w, xk), unravel, sensitivity, mask)
        if solver_state is None:
            solver_state = solver.init(_JOINT, t0, t0 + dt, state, args)
        out, _, _, solver_state, _ = solver.step(_JOINT, t0, t0 + dt, state, args, solver_state, made_jump)
        return out, solver_state

    return step


def sensitivity_mask(sensitivity, static, w, unravel, n, dtype, x):
    """The kept entries of `P` for `sensitivity` (None: all), found at two random states."""
    masks = []
    for k in jr.split(jr.PRNGKey(0), 2):
        r = jr.normal(k, (n,), dtype)

        def F_w(w, r=r):
            return eqx.combine(unravel(w), static)(0.0, r, x)

        masks.append(sensitivity.pattern(F_w, w, n))
    if masks[0] is None:
        return None
    return masks[0] | masks[1]


class RTRL(AbstractEstimator):
    r"""Real-time recurrent learning: forward sensitivities `p_t = dr_t/dw` integrated with
    the state by the same diffrax solver and fixed-step grid (seed 000):

    `dp/dt = J(r_t) p + dF/dw`, and `dl/dw = sum_k alpha_k (dl_k/dr) p_{t_k}`

    plus the readout's direct term. Everything is forward mode (`jax.jvp`/`linearize`, and a
    batched VJP for the immediate Jacobian `dF/dw`): no backward pass through time, so it
    serves online learning (`nd.online`). For a steady-state objective `r` and `p` are
    relaxed together until both converge, `p* = -J^-1 dF/dw`.

    Cost: time O(n^2 m) per step, memory O(nm + n^2), independent of the trajectory length.
    Exact (to rounding, for the discretised system) with `sensitivity=Exact()`.

    **Arguments:**

    - `sensitivity`: `nd.rtrl.Exact()` (default), `nd.rtrl.SnAp1()` or `nd.rtrl.Diagonal()`.

    !!! warning

        `m` is the number of parameters (n^2 + ... for a CTRNN), so exact RTRL costs
        O(n^4) per step: use it for small networks, online learning, or as a reference.
    """

    sensitivity: AbstractSensitivity = Exact()
    objectives = (SteadyState, Trajectory)

    def value_and_grad(self, net, x, y, objective, options):
        params, static = eqx.partition(net, eqx.is_inexact_array)
        w, unravel = ravel_pytree(params)
        solver = options.solver
        if isinstance(objective, Trajectory):
            r0 = net.init_state(x[0])
        else:
            r0 = net.init_state(x)
        n, m = r0.shape[0], w.shape[0]
        x0 = x if isinstance(objective, SteadyState) else x[0]
        mask = sensitivity_mask(self.sensitivity, static, w, unravel, n, r0.dtype, x0)
        P0 = jnp.zeros((m, n), r0.dtype)
        step = make_joint_step(solver, static, w, unravel, self.sensitivity, mask)

        if isinstance(objective, Trajectory):
            return self._trajectory(net, x, y, objective, options, step, r0, P0, unravel, params)
        return self._steady(net, x, y, objective, options, step, r0, P0, unravel, params)

    def _readout_terms(self, params, static, objective, rs, P_at, y):
        """Loss, its gradient: direct (readout parameters) + `sum_k g_k^T p_k`."""

        def loss_of(p, rs):
            return objective.value(eqx.combine(p, static), rs, y)

        loss, (g_direct, g_r) = jax.value_and_grad(loss_of, argnums=(0, 1))(params, rs)
        return loss, g_direct, g_r

    def _trajectory(self, net, x, y, objective, options, step, r0, P0, unravel, params):
        static = eqx.partition(net, eqx.is_inexact_array)[1]
        grid = time_grid(objective.ts, options.dt0, options.max_steps, x.dtype)

        def interval(state, inp):
            xk, t0, dt = inp
            state = integrate_interval_joint(step, state, xk, t0, dt, grid.n_sub)
            return state, state

        _, (rs, Ps) = jax.lax.scan(interval, (r0, P0), (x, grid.t0s, grid.dts))
        loss, g_direct, g_r = self._readout_terms(params, static, objective, rs, Ps, y)
        g_w = jnp.einsum("kmn,kn->m", Ps, g_r)
        grads = jtu.tree_map(lambda a, b: a + b, g_direct, unravel(g_w))
        finite = jnp.all(jnp.isfinite(rs)) & jnp.all(jnp.isfinite(g_w))
        info = dict(
            result=RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite),
            converged=finite,
            steps=jnp.asarray(grid.n_sub * x.shape[0]),
        )
        return loss, grads, info

    def _steady(self, net, x, y, objective, options, step, r0, P0, unravel, params):
        static = eqx.partition(net, eqx.is_inexact_array)[1]
        dt = options.dt0
        big = jnp.asarray(jnp.finfo(r0.dtype).max, r0.dtype)

        def tol(r, P):
            return options.atol + options.rtol * jnp.maximum(rms_norm(r), rms_norm(P))

        def cond(c):
            (r, P), k, res = c
            return (k < options.max_steps) & ~(res < tol(r, P)) & jnp.isfinite(res)

        def body(c):
            (r, P), k, _ = c
            t = k.astype(r.dtype) * dt
            # A fresh solver state each step: the relaxation is autonomous, and FSAL
            # solvers then never reuse a stale first stage.
            (r1, P1), _ = step((r, P), x, t, dt)
            res = jnp.maximum(rms_norm(r1 - r), rms_norm(P1 - P)) / dt
            return (r1, P1), k + 1, res

        (r, P), steps, res = eqxi.while_loop(
            cond, body, ((r0, P0), jnp.asarray(0), big), max_steps=options.max_steps, kind="lax"
        )
        loss, g_direct, g_r = self._readout_terms(params, static, objective, r, P, y)
        grads = jtu.tree_map(lambda a, b: a + b, g_direct, unravel(P @ g_r))
        finite = jnp.all(jnp.isfinite(r)) & jnp.all(jnp.isfinite(P))
        converged = finite & (res < tol(r, P))
        result = RESULTS.where(
            converged, RESULTS.successful, RESULTS.where(finite, RESULTS.max_steps_reached, RESULTS.nonfinite)
        )
        residual = rms_norm(net(0.0, r, x))
        return loss, grads, dict(result=result, converged=converged, steps=steps, residual=residual)
