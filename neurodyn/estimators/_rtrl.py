"""Real-time recurrent learning: forward sensitivities `p = dr/dw` stepped with the state."""

import functools as ft
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._dynamics import time_grid
from .._iterate import AbstractIterativeSolver, iterate
from .._misc import all_finite, rms_norm
from .._objectives import SteadyState, Trajectory
from .._outcome import RESULTS
from ..rtrl import (
    AbstractSensitivity,
    AbstractStochasticSensitivity,
    contract,
    Exact,
    integrate_interval_joint,
    joint_step,
    report,
    sensitivity_aux,
    zero_sensitivities,
)
from ._base import AbstractGradientResidualEstimator, tree_weighted_sum, weighted_sum


def tree_rms(tree):
    """The RMS norm over all entries of a pytree (inf if any is not finite)."""
    leaves = jtu.tree_leaves(tree)
    sizes = [leaf.size for leaf in leaves]
    total = sum(sizes)
    sq = sum((s / total) * jnp.square(rms_norm(leaf)) for s, leaf in zip(sizes, leaves))
    return jnp.sqrt(sq)


def _tree_add(a, b):
    return jtu.tree_map(jnp.add, a, b)


# ---------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------


class RTRL(AbstractGradientResidualEstimator):
    r"""Real-time recurrent learning: forward sensitivities `p_t = dr_t/dw` integrated with
    the state by the same diffrax solver and fixed-step grid as `nd.rollout` and
    `nd.BPTT()` (Williams & Zipser 1989):

    `dp/dt = J(r_t) p + dF/dw`,   `dl/dw = sum_k alpha_k (dl_k/dr) p_{t_k} + dl/dw|_readout`

    The solver steps the joint state `(r, p)` with the joint vector field
    `(F(r), J p + dF/dw)`, so for explicit Runge-Kutta solvers `p` is exactly the derivative
    of the discretised trajectory. `J p` is a JVP of `F` vmapped over the parameter columns of
    `p` (XLA runs it as a matrix product), `dF/dw` a VJP batched over the `n` units; nothing
    runs backwards in time, so the gradient is available at every step (`nd.online`).

    The sensitivity strategy owns the layout of `p`: for `Exact`, `SnAp1` and `Diagonal` a
    pytree shaped like the parameters with a leading state axis (leaves `(n, *w.shape)`);
    one entry per parameter for `SparseSnAp1` and `RFLO`; rank-one factors for `UORO`.

    For a `nd.Trajectory` the loss gradient is accumulated while the trajectory runs
    (nothing stored per time). For a `nd.SteadyState` `r` and `p` relax together until
    both step differences fall below `atol + rtol rms(.)` (the integration options);
    then `p* = -J^-1 dF/dw` and the gradient is the implicit one. `info` reports
    `converged`, `steps` (solver steps), `result`, and for steady states `residual`.

    Cost (exact): time O(n^2 m) per step, memory O(nm + n^2), independent of the trajectory length
    (Williams & Zipser 1989), with `m` the number of parameters. Exact (to rounding,
    for the discretised system) with `sensitivity=nd.rtrl.Exact()`.

    **Arguments:**

    - `sensitivity`: `nd.rtrl.Exact()` (default), or an approximation, each documented
      with its cost: `nd.rtrl.SnAp1()` (dense layout, any network), `nd.rtrl.SparseSnAp1()`
      (the same gradient in O(m) memory, one unit per parameter), `nd.rtrl.Diagonal()`,
      `nd.rtrl.RFLO()` (leak-only eligibility traces, O(m)), `nd.rtrl.UORO(key)` (unbiased
      rank-one, trajectories only).

    !!! warning

        `m` is the number of parameters (n^2 + ... for a CTRNN), so exact RTRL costs
        O(n^4) time and O(n^3) memory per step: use it for small networks, online learning,
        or as a forward-mode reference. For offline training BPTT is cheaper.
    """

    sensitivity: AbstractSensitivity = Exact()
    objectives = (SteadyState, Trajectory)

    def __check_init__(self):
        if not isinstance(self.sensitivity, AbstractSensitivity):
            raise ValueError(
                f"RTRL's sensitivity must be nd.rtrl.Exact(), nd.rtrl.SnAp1(), "
                f"nd.rtrl.SparseSnAp1(), nd.rtrl.Diagonal(), nd.rtrl.RFLO() or nd.rtrl.UORO(key), got "
                f"{self.sensitivity!r}."
            )

    def batch_value_and_grad(self, net, xs, ys, weights, objective, options):
        # RTRL's gradient is a contraction of each example's own sensitivities `p_b` (n x m):
        # there is no shared reverse pass to batch, so the per-example gradients are
        # formed and averaged with one GEMV over the batch.
        losses, grads, info = jax.vmap(lambda x, y: self._loss_grads_info(net, x, y, objective, options))(xs, ys)
        return weighted_sum(weights, losses), tree_weighted_sum(weights, grads), dict(info, loss=losses)

    def _loss_grads_info(self, net, x, y, objective, options):
        from ..relaxation import AbstractSteppingRelaxation

        params, static = eqx.partition(net, eqx.is_inexact_array)
        trajectory = isinstance(objective, Trajectory)
        relaxation = getattr(options, "relaxation", None)
        if not trajectory and relaxation is not None and not isinstance(relaxation, AbstractSteppingRelaxation):
            raise ValueError(
                f"nd.RTRL() cannot use relaxation={relaxation!r}: it integrates r and "
                "p = dr/dw jointly with fixed solver steps until both converge. Leave "
                "`relaxation` unset for RTRL, or use nd.RBP() (the same implicit gradient) "
                "with any relaxation."
            )
        if not trajectory and isinstance(self.sensitivity, AbstractStochasticSensitivity):
            raise ValueError(
                f"nd.RTRL({type(self.sensitivity).__name__}(...)) cannot serve a SteadyState "
                "objective: its sensitivities are redrawn at random every step and never "
                "settle. Use it with nd.Trajectory(...) or nd.online.fit_online, or "
                "nd.RTRL(nd.rtrl.Exact()) / nd.RBP() for a steady state."
            )
        r0 = net.init_state(x[0] if trajectory else x)
        n = r0.shape[0]
        sens = self.sensitivity
        aux = sensitivity_aux(sens, params, static, n, net.n_in, r0.dtype)
        init, step = joint_step(options.solver, params, static, sens, aux)
        state0 = (r0, zero_sensitivities(sens, params, n, aux))
        contract_p = ft.partial(contract, sens, aux=aux)
        if trajectory:
            info_of = ft.partial(report, sens, aux=aux)  # what the strategy says of its p (UORO's variance)
            return _trajectory(params, static, x, y, objective, options, step, state0, contract_p, info_of)
        return _steady_state(params, static, x, y, objective, options, init, step, state0, contract_p)


def _trajectory(params, static, x, y, objective, options, step, state0, contract, report_p):
    grid = time_grid(objective.ts, options.dt0, options.max_steps, x.dtype)
    y, alphas = objective.example_alphas(y, x.dtype)

    def term(params, r, yk, alpha):
        return alpha * objective.loss(eqx.combine(params, static).readout(r), yk)

    def interval(carry, inp):
        state, loss, grads, finite = carry
        xk, yk, alpha, t0, dt = inp
        state = integrate_interval_joint(step, state, xk, t0, dt, grid.n_sub)
        r, p = state
        lk, (g_direct, g_r) = jax.value_and_grad(term, argnums=(0, 1))(params, r, yk, alpha)
        grads = _tree_add(grads, _tree_add(g_direct, contract(p, g_r)))
        return (state, loss + lk, grads, finite & all_finite(r)), None

    zero_grads = jtu.tree_map(jnp.zeros_like, params)
    carry0 = (state0, jnp.zeros((), x.dtype), zero_grads, jnp.asarray(True))
    ((_, p), loss, grads, finite), _ = jax.lax.scan(interval, carry0, (x, y, alphas, grid.t0s, grid.dts))
    finite = finite & all_finite(grads)
    info = dict(
        result=RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite),
        converged=finite,
        steps=jnp.asarray(grid.n_sub * x.shape[0]),
        **report_p(p),
    )
    return loss, grads, info


class _JointRelaxation(AbstractIterativeSolver):
    # r and p = dr/dw stepped together with fixed solver steps until both step differences
    # (over dt) fall below atol + rtol rms(.). The solver state is carried across steps (as
    # `nd.relax` does): the relaxation is autonomous, so FSAL solvers reuse their last stage.
    init_fn: Callable
    step_fn: Callable
    dt: Any
    rtol: Any
    atol: Any

    def init(self, y0, args):
        return self.init_fn(y0, args, jnp.zeros_like(self.dt), self.dt)

    def step(self, y, state, args, iteration):
        new, state = self.step_fn(y, args, iteration.astype(self.dt.dtype) * self.dt, self.dt, state)
        diff = jtu.tree_map(jnp.subtract, new, y)
        return new, state, jnp.maximum(rms_norm(diff[0]), tree_rms(diff[1])) / self.dt

    def tolerance(self, y, args):
        r, p = y
        return self.atol + self.rtol * jnp.maximum(rms_norm(r), tree_rms(p))


def _steady_state(params, static, x, y, objective, options, init, step, state0, contract):
    from ..relaxation._fixed_step import stopping_rules

    dt = jnp.asarray(options.dt0, state0[0].dtype)
    solver = _JointRelaxation(init, step, dt, options.rtol, options.atol)
    # The joint loop stops on stagnation as the stepping relaxation it reproduces does (its
    # patience, in steps: this loop tests every step).
    patience, margin = stopping_rules(options.relaxation)
    sol = iterate(solver, state0, x, max_iterations=options.max_steps, patience=patience, budget_margin=margin)
    r, p = sol.value

    def value(params, r):
        return objective.value(eqx.combine(params, static), r, y)

    loss, (g_direct, g_r) = jax.value_and_grad(value, argnums=(0, 1))(params, r)
    grads = _tree_add(g_direct, contract(p, g_r))
    residual = rms_norm(eqx.combine(params, static)(0.0, r, x))
    # The state and p come from `iterate`'s finiteness test; the residual at r is checked too.
    result = RESULTS.where(jnp.isfinite(residual) | (sol.result != RESULTS.successful), sol.result, RESULTS.nonfinite)
    converged = result == RESULTS.successful
    return loss, grads, dict(result=result, converged=converged, steps=sol.iterations, residual=residual)
